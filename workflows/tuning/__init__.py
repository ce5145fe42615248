"""The tuning stage: population-based training over long-lived Train runs.

``pbt`` (the Tune member and the scheduler's settings), ``progress`` (the jobs' lines and TensorBoard curves) and
``report`` (``pbt.json``'s plots and summary). The experiment that uses them is ``workflows.jobs.experiment``.
"""
