"""Which of Ray's log lines reach the job log: every Ray logger and warning we quiet, in one place.

Checked on Ray 2.60.0. The names below are Ray's module paths (one of them private), so a Ray upgrade may move
them; ``tests/workflows/test_tune_job.py`` fails when Tune's boxes or Ray Data's per-pass lines come back. The
rest of the job's quiet comes from public settings: ``ray.LoggingConfig(log_level="WARNING")`` for every process
of the job (``workflows/cluster.py``) and Tune's ``verbose=0`` (``workflows/tune.py``).
"""

from __future__ import annotations

import logging
import warnings

# Ray Data warns once per process that the progress bars are off, which is our own setting (workflows/cluster.py).
RAY_DATA_PROGRESS_LOGGER = "ray.data._internal.progress"
# Tune's timing notes ("… may be a performance bottleneck") come from this module's warn_if_slow.
TUNE_TIMING_LOGGER = "ray.tune.utils.util"
TIMING_NOTE = "may be a performance bottleneck"


class _DropTimingNotes(logging.Filter):
    """Drops Tune's timing notes.

    On a laptop the members share the CPUs with the driver: a result that waits half a second to be processed is
    expected there, not a problem to act on.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return TIMING_NOTE not in record.getMessage()


def quiet_ray_data_logs() -> None:
    """Ray Data's INFO lines ("Dataset … execution finished in …", one per pass) stay in its own log file.

    Its warnings still reach the job log, except the one that says the progress bars we turned off are off.
    """
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger(RAY_DATA_PROGRESS_LOGGER).setLevel(logging.ERROR)


def quiet_tune_timing_notes() -> None:
    """Keep Tune's timing notes out of the driver's log (its other warnings stay)."""
    logging.getLogger(TUNE_TIMING_LOGGER).addFilter(_DropTimingNotes())


def quiet_member_logs() -> None:
    """Keep Tune's per-checkpoint INFO lines ("Checkpoint successfully created", "Restored on …") out of the job log."""
    for name in ("ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)


def quiet_worker_logs() -> None:
    """Keep each Train worker's per-epoch chatter out of the job log; warnings and errors still reach it.

    Train logs every report at INFO on a logger named after its file ("Reporting training result N"), outside the
    ``ray.train`` loggers that LoggingConfig quiets; Ray Data logs every epoch's pass; the preflight logs its success.
    """
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    quiet_ray_data_logs()
    logging.getLogger("resnet.preflight").setLevel(logging.WARNING)
    # Ray Data hands the batches over as read-only views of Arrow buffers; nothing here writes to them.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
