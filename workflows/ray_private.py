"""Every private Ray API the project relies on, in one place, checked on Ray 2.60.0 (pinned in pyproject.toml).

- :class:`TorchTrainerWithoutCleaner` overrides Train V2's ``_create_default_callbacks`` to drop the detached
  placement-group cleaner (why: ``workflows/launch.py``); pinned by ``tests/workflows/test_train.py``.
- :func:`record_placement_group` / :func:`release_placement_group` keep a member's placement group in Ray's
  internal KV store (``ray.experimental.internal_kv``, ``ray._raylet.PlacementGroupID``); pinned by
  ``tests/workflows/test_launch.py``.
- :class:`RecoveringPBT` overrides PBT's ``_checkpoint_or_exploit`` and reads its ``_trial_state``; pinned by
  ``tests/workflows/test_tune.py``.
- The log quieting below names Ray loggers by module path (``ray.data._internal.progress``,
  ``ray.train.v2._internal.execution.context``); ``tests/workflows/test_tune_job.py`` fails when Tune's boxes or
  Ray Data's per-pass lines come back. The rest of the job's quiet comes from public settings:
  ``ray.LoggingConfig(log_level="WARNING")`` (``workflows/cluster.py``) and Tune's ``verbose=0``
  (``workflows/tune.py``).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from ray._raylet import PlacementGroupID
from ray.experimental import internal_kv
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

log = logging.getLogger(__name__)

_KV_PREFIX = "satresnet:placement-group:"

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


class TorchTrainerWithoutCleaner(TorchTrainer):
    """``TorchTrainer`` without Train's detached placement-group cleaner (why: ``workflows/launch.py``'s docstring)."""

    def _create_default_callbacks(self) -> list[Any]:
        callbacks = super()._create_default_callbacks()
        return [callback for callback in callbacks if not isinstance(callback, PlacementGroupCleanerCallback)]


def _kv_key(owner: str) -> bytes:
    return (_KV_PREFIX + owner).encode()


def forget_placement_group(owner: str) -> None:
    """Drop the owner's record (its run ended and Train removed the group)."""
    internal_kv._internal_kv_del(_kv_key(owner))


def record_placement_group(owner: str, group_hex: str) -> None:
    """Remember ``group_hex`` as the placement group of the owner's current run (cluster-wide, in Ray's KV store)."""
    internal_kv._internal_kv_put(_kv_key(owner), group_hex.encode(), overwrite=True)


def release_placement_group(owner: str) -> bool:
    """Remove the placement group the owner's last run recorded, if it still exists.

    Args:
        owner: The ``owner`` the run was started with.

    Returns:
        Whether a placement group was removed.
    """
    recorded = internal_kv._internal_kv_get(_kv_key(owner))
    if not recorded:
        return False
    group = PlacementGroup(PlacementGroupID.from_hex(recorded.decode()))
    removed = False
    try:
        if placement_group_table(group).get("state") not in (None, "REMOVED"):
            remove_placement_group(group)
            removed = True
            log.warning("removed placement group %s left behind by %s's previous run", recorded.decode(), owner)
    except Exception as err:  # noqa: BLE001 - best effort: Ray removes it when the job ends at the latest
        log.warning("could not remove placement group %s of %s: %s", recorded.decode(), owner, err)
    forget_placement_group(owner)
    return removed


class RecoveringPBT(PopulationBasedTraining):
    """Stock asynchronous PBT with two changes that matter for members that each run a ``TorchTrainer``.

    1. A perturbation point never *pauses* a member just because others are pending: every pause would tear down
       and restart a whole Train run (tens of seconds here). The member continues; concurrency is sized so that
       members do not wait for CPUs.
    2. A donor always has a checkpoint. Stock PBT remembers a checkpoint only for members that were in the upper
       quantile at their *own* last perturbation point, so an exploit could find none and be skipped ("no
       checkpoint ... Skip exploit"), leaving a diverged member running. Here a donor without one falls back to
       its latest reported checkpoint.
    """

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """PBT's decision, with PAUSE turned into CONTINUE."""
        decision = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if decision == TrialScheduler.PAUSE else decision

    def _checkpoint_or_exploit(self, trial: Any, tune_controller: Any, upper_quantile: list, lower_quantile: list):
        for donor in upper_quantile:
            state = self._trial_state[donor]
            if state.last_checkpoint is None and donor.checkpoint is not None:
                state.last_checkpoint = donor.checkpoint
        return super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile, lower_quantile)
