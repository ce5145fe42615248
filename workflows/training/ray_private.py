"""Every private Ray API and Ray Train setting the training stage relies on, in one place, checked on Ray 2.60.0.

Ray is pinned to 2.60.0 in pyproject.toml; each entry names the test that fails when the behaviour changes. The
tuning stage's private Ray APIs (Tune's scheduler and search) live in ``workflows/tuning/tune_private.py``.

- :data:`TRAIN_ENV`: environment settings read by Train V2's internals (``ray.train.v2._internal.constants``, read by
  ``TrainController`` and ``WorkerGroup`` and passed on to them through ``ENV_VARS_TO_PROPAGATE``); pinned by
  ``tests/workflows/training/test_ray_private.py``.
- :class:`TorchTrainerWithoutCleaner` overrides Train V2's ``_create_default_callbacks`` and drops
  ``ray.train.v2._internal.callbacks.placement_group_callback.PlacementGroupCleanerCallback`` (why:
  ``workflows/training/placement.py``); pinned by ``tests/workflows/training/test_ray_private.py`` and
  ``tests/workflows/test_train.py``.
- :func:`kv_put` / :func:`kv_get` / :func:`kv_del` wrap ``ray.experimental.internal_kv`` (Ray's cluster-wide KV
  store) and :func:`placement_group_from_hex` builds a handle from ``ray._raylet.PlacementGroupID``, for the
  placement-group records of ``workflows/training/placement.py``; pinned by ``tests/workflows/training/test_launch.py``.
- The log quieting below names Ray loggers by module path (``ray.data._internal.progress``,
  ``ray.train.v2._internal.execution.context``); ``tests/workflows/test_tune_job.py`` fails when Ray Data's per-pass
  lines come back. The rest of the job's quiet comes from public settings: ``ray.LoggingConfig(log_level="WARNING")``
  (``workflows/training/cluster.py``) and Tune's ``verbose=0`` (``workflows/jobs/experiment.py``).
- :func:`hide_user_code_error_notes` names the loggers of Ray Data's streaming executor state and of
  ``ray.data.exceptions`` (the two ERROR notes logged when a UDF raises);
  ``tests/workflows/serving/predict/test_batch_predict.py`` fails when a bad row's one-line error gains lines again.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from ray._raylet import PlacementGroupID
from ray.experimental import internal_kv
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.util.placement_group import PlacementGroup

# Ray Train settings, read from the environment of the process that calls fit() and passed on to the controller.
TRAIN_ENV = {
    # The controller collects reports when it polls the workers, and a worker's report waits for that: with Ray's
    # 2 s default, no epoch of a small model is shorter than 2 s.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # A worker group may wait for CPUs a replaced PBT member is still giving back; 60 s each try by default.
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "120",
    # One actor process less per run: the watcher reports node drains (spot preemption), which a laptop never has.
    # Set it to 1 on clusters of preemptible nodes.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


def apply_train_settings() -> None:
    """Set :data:`TRAIN_ENV` in this process (a value the user set wins)."""
    for key, value in TRAIN_ENV.items():
        os.environ.setdefault(key, value)


# Ray Data warns once per process that the progress bars are off, which is our own setting
# (workflows/training/cluster.py).
RAY_DATA_PROGRESS_LOGGER = "ray.data._internal.progress"


def quiet_ray_data_logs() -> None:
    """Ray Data's INFO lines ("Dataset … execution finished in …", one per pass) stay in its own log file.

    Its warnings still reach the job log, except the one that says the progress bars we turned off are off.
    """
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger(RAY_DATA_PROGRESS_LOGGER).setLevel(logging.ERROR)


# The loggers of the two notes Ray Data logs at ERROR when a UDF raises ("An exception was raised from a task of
# operator ...", "Exception occurred in user code ..."), by module path.
RAY_DATA_UDF_ERROR_LOGGERS = ("ray.data._internal.execution.streaming_executor_state", "ray.data.exceptions")
RAY_DATA_UDF_ERROR_NOTES = ("An exception was raised from a task of operator", "Exception occurred in user code")


class _DropUdfErrorNotes(logging.Filter):
    """Drops Ray Data's notes about a UDF that raised (the exception itself still reaches the caller)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(RAY_DATA_UDF_ERROR_NOTES)


def hide_user_code_error_notes() -> None:
    """Keep Ray Data's notes about a failed UDF off the console, for callers that report the exception themselves.

    A logger's filter drops the notes for all its handlers, the log file's too: the exception raised in the driver
    carries the message and the worker's traceback.
    """
    for name in RAY_DATA_UDF_ERROR_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropUdfErrorNotes) for f in logger.filters):
            logger.addFilter(_DropUdfErrorNotes())


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


class TorchTrainerWithoutCleaner(TorchTrainer):
    """``TorchTrainer`` without Train's detached placement-group cleaner (why: ``placement.py``'s docstring)."""

    def _create_default_callbacks(self) -> list[Any]:
        callbacks = super()._create_default_callbacks()
        return [callback for callback in callbacks if not isinstance(callback, PlacementGroupCleanerCallback)]


def kv_put(key: str, value: str) -> None:
    """Store ``value`` under ``key`` in Ray's cluster-wide KV store (any process of the cluster reads it)."""
    internal_kv._internal_kv_put(key.encode(), value.encode(), overwrite=True)


def kv_get(key: str) -> str | None:
    """The value stored under ``key``, or None."""
    value = internal_kv._internal_kv_get(key.encode())
    return value.decode() if value else None


def kv_del(key: str) -> None:
    """Drop ``key`` from Ray's KV store (nothing happens when it is not there)."""
    internal_kv._internal_kv_del(key.encode())


def placement_group_from_hex(group_hex: str) -> PlacementGroup:
    """A handle on the placement group whose id is ``group_hex`` (Ray has no public constructor from an id)."""
    return PlacementGroup(PlacementGroupID.from_hex(group_hex))
