"""The tuning stage: population-based training over long-lived Train runs.

``pbt`` (the Tune member and the scheduler's settings), ``ray_private`` (every private Ray API and setting the
product relies on, each pinned by a test), ``progress`` (the job's lines and TensorBoard curves) and ``report``
(``pbt.json``'s plots and summary).
"""
