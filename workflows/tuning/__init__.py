"""The tuning stage: population-based training over long-lived Train runs.

``pbt`` (the Tune member and the scheduler's settings), ``tune_private`` (the rescue rule ``RecoveringPBT``, the
population search and Tune's settings: every private Ray Tune API the product relies on, each pinned by a test),
``progress`` (the jobs' lines and TensorBoard curves) and ``report`` (``pbt.json``'s plots and summary). The
experiment that uses them is ``workflows.jobs.experiment``.
"""
