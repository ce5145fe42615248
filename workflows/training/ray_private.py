"""Every private Ray API and Ray environment setting the project relies on, in one place, checked on Ray 2.60.0.

Ray is pinned to 2.60.0 in pyproject.toml; each entry names the test that fails when the behaviour changes.

- :data:`TRAIN_ENV` and :data:`TUNE_ENV`: environment settings read by Ray's internals; pinned by
  ``tests/workflows/training/test_ray_private.py`` (Ray still reads each name) and, for Tune's quiet console,
  ``tests/workflows/test_tune_job.py``.

- :class:`TorchTrainerWithoutCleaner` overrides Train V2's ``_create_default_callbacks`` to drop the detached
  placement-group cleaner (why: ``workflows/training/launch.py``); pinned by ``tests/workflows/test_train.py``.
- :func:`record_placement_group` / :func:`release_placement_group` keep a member's placement group in Ray's
  internal KV store (``ray.experimental.internal_kv``, ``ray._raylet.PlacementGroupID``); pinned by
  ``tests/workflows/training/test_launch.py``.
- :class:`RecoveringPBT` overrides PBT's ``_checkpoint_or_exploit``, calls its ``_exploit`` and reads and writes
  its ``_trial_state`` (``last_score``, ``last_result``, ``last_checkpoint``, ``last_perturbation_time``); pinned by
  ``tests/workflows/test_tune.py``.
- :class:`PopulationSearch` reads ``BasicVariantGenerator._live_trials`` and relies on Tune caching a paused
  member's actor only while the search is not finished (``TuneController._maybe_cache_trial_actor``); pinned by
  ``tests/workflows/training/test_ray_private.py`` and ``tests/workflows/test_tune.py`` (members keep their Train run
  across exploits).
- The log quieting below names Ray loggers by module path (``ray.data._internal.progress``,
  ``ray.train.v2._internal.execution.context``); ``tests/workflows/test_tune_job.py`` fails when Tune's boxes or
  Ray Data's per-pass lines come back. The rest of the job's quiet comes from public settings:
  ``ray.LoggingConfig(log_level="WARNING")`` (``workflows/training/cluster.py``) and Tune's ``verbose=0``
  (``workflows/jobs/experiment.py``).
- :func:`hide_user_code_error_notes` names the loggers of Ray Data's streaming executor state and of
  ``ray.data.exceptions`` (the two ERROR notes logged when a UDF raises);
  ``tests/workflows/serving/predict/test_batch_predict.py`` fails
  when a bad row's one-line error gains lines again.
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
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.tune.search import BasicVariantGenerator
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

log = logging.getLogger(__name__)

_KV_PREFIX = "satresnet:placement-group:"

# Ray Train settings, read from the environment of the process that calls fit() and passed on to the controller.
TRAIN_ENV = {
    # The controller collects reports when it polls the workers, and a worker's report waits for that: Ray's 2 s
    # default made every epoch of a small model last 2 s (measured: 0.5 s of work, reports exactly 2.0 s apart).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # A worker group may wait for CPUs a replaced PBT member is still giving back; 60 s each try by default.
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "120",
    # One actor process less per run: the watcher reports node drains (spot preemption), which a laptop never has.
    # Set it to 1 on clusters of preemptible nodes.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}
# Ray Tune settings, read by the driver.
TUNE_ENV = {
    # Seconds Tune waits for a stopped member's process to end before it kills it (600 s by default).
    "TUNE_FORCE_TRIAL_CLEANUP_S": "60",
    # Tune's newer console output prints its boxed experiment table even at verbose=0; the older one is silent there.
    "RAY_AIR_NEW_OUTPUT": "0",
}


def apply_train_settings() -> None:
    """Set :data:`TRAIN_ENV` in this process (a value the user set wins)."""
    for key, value in TRAIN_ENV.items():
        os.environ.setdefault(key, value)


def apply_tune_settings() -> None:
    """Set :data:`TUNE_ENV` in this process (a value the user set wins)."""
    for key, value in TUNE_ENV.items():
        os.environ.setdefault(key, value)


# Ray Data warns once per process that the progress bars are off, which is our own setting
# (workflows/training/cluster.py).
RAY_DATA_PROGRESS_LOGGER = "ray.data._internal.progress"
# Tune's timing notes ("… may be a performance bottleneck") come from this module's warn_if_slow.
TUNE_TIMING_LOGGER = "ray.tune.utils.util"
TIMING_NOTE = "may be a performance bottleneck"
# Tune's CSV logger warns that a member's progress.csv is not on storage when the member is replaced at its very
# first report (it has a donor's checkpoint but has not written the file yet); it then starts the file, as it should.
TUNE_LOGGER_LOGGER = "ray.tune.logger.logger"
NO_PROGRESS_YET = "Remote file not found"


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


class _DropNoProgressYet(logging.Filter):
    """Drops the CSV logger's note about a member that has no progress file yet (see ``NO_PROGRESS_YET``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return NO_PROGRESS_YET not in record.getMessage()


def quiet_tune_timing_notes() -> None:
    """Keep Tune's timing notes and the no-progress-file-yet note out of the driver's log (its other warnings stay)."""
    logging.getLogger(TUNE_TIMING_LOGGER).addFilter(_DropTimingNotes())
    logging.getLogger(TUNE_LOGGER_LOGGER).addFilter(_DropNoProgressYet())


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
    """``TorchTrainer`` without Train's detached placement-group cleaner (why: ``launch.py``'s docstring)."""

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
    """Stock asynchronous PBT with three changes for long-lived members that each run a ``TorchTrainer``.

    1. **Every report ranks.** Stock PBT records a member's score only at its own perturbation points, so the first
       member to reach one (a diverging member skips its steps and gets there first) finds nobody to compare with.
       Here each report updates the member's score (``_trial_state[...].last_score`` and ``last_result``).
    2. **A member in trouble is replaced at once.** A report that says ``diverged``, or a score at or below
       ``stuck_below`` after the first interval, exploits the best healthy member (by latest score) at that report,
       without waiting for the member's perturbation point. The donor's checkpoint is its latest one (members hand
       Tune a checkpoint every epoch). A member that diverged before any other had reported (no donor yet) stays
       in trouble while its score is at or below ``stuck_below``, even inside the first interval: its weights are
       the diverged ones, and the next report with a donor replaces them.
    3. **No pause for others.** A perturbation point never *pauses* a member just because others are pending
       (stock behaviour); the member continues.
    4. **A donor hands over its latest checkpoint**, never one PBT recorded at the donor's own last perturbation
       point (epochs older than the score it was ranked by), and never none.

    Args:
        stuck_below: Score (in the metric's own units, mode ``max`` only) at or below which a member counts as stuck
            once it has trained one perturbation interval; None turns this test off.
        **kwargs: As for ``PopulationBasedTraining``.
    """

    def __init__(self, *, stuck_below: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stuck_below = stuck_below
        self.rescues = 0
        # Members that reported diverged and have not been replaced or climbed above stuck_below since.
        self._recovering: set[Any] = set()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """Record the score, rescue a member in trouble, else PBT's decision with PAUSE turned into CONTINUE."""
        if self._metric in result and self._time_attr in result:
            state = self._trial_state[trial]
            state.last_score = self._metric_op * result[self._metric]
            state.last_result = result
            if result.get("diverged"):
                self._recovering.add(trial)
            elif not self._at_chance(result):
                self._recovering.discard(trial)
            if self._in_trouble(result, trial in self._recovering):
                donor = self._best_healthy(trial)
                if donor is not None:
                    self._trial_state[donor].last_checkpoint = donor.checkpoint
                    state.last_perturbation_time = result[self._time_attr]
                    state.last_train_time = result[self._time_attr]
                    self.rescues += 1
                    self._recovering.discard(trial)
                    self._exploit(tune_controller, trial, donor)
                    return TrialScheduler.NOOP
        decision = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if decision == TrialScheduler.PAUSE else decision

    def _at_chance(self, result: dict) -> bool:
        return self._stuck_below is not None and result[self._metric] <= self._stuck_below

    def _in_trouble(self, result: dict, recovering: bool = False) -> bool:
        """Diverged; or at chance after the first interval, or at any time while ``recovering`` from a divergence."""
        if result.get("diverged"):
            return True
        return self._at_chance(result) and (recovering or result[self._time_attr] >= self._perturbation_interval)

    def _best_healthy(self, trial: Any) -> Any | None:
        """The other member with the best latest score that is healthy and has a checkpoint, or None."""
        candidates = [
            (state.last_score, other)
            for other, state in self._trial_state.items()
            if other is not trial
            and state.last_score is not None
            and state.last_result is not None
            and not self._in_trouble(state.last_result, other in self._recovering)
            and other.checkpoint is not None
            and other.status != "ERROR"
        ]
        if not candidates:
            return None
        return max(candidates, key=lambda pair: pair[0])[1]

    def _checkpoint_or_exploit(self, trial: Any, tune_controller: Any, upper_quantile: list, lower_quantile: list):
        # Other members' latest checkpoints (a checkpoint every epoch): stock PBT would hand over the one it saved at
        # the donor's own last perturbation point, or one a rescue recorded, epochs older than the donor's score.
        for donor in upper_quantile:
            if donor is not trial and donor.checkpoint is not None:
                self._trial_state[donor].last_checkpoint = donor.checkpoint
        return super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile, lower_quantile)


class PopulationSearch(BasicVariantGenerator):
    """Tune's grid of members, reported finished only once every member has ended (not when all are handed out).

    Tune caches a paused member's actor for reuse only while the search is not finished (Ray 2.60,
    ``TuneController._maybe_cache_trial_actor``). With the stock generator, the search is finished as soon as the
    population has started, and every exploit then kills the member's process and its ``TorchTrainer``. PBT accepts
    only this generator (it refuses ``Searcher``-based ones), hence a subclass.
    """

    def __init__(self, max_concurrent: int = 0) -> None:
        super().__init__(max_concurrent=max_concurrent)
        self._handed_out_all = False

    def set_finished(self) -> None:
        """Called when every trial has been handed out: finished only when none is still live."""
        self._handed_out_all = True
        if not self._live_trials:
            super().set_finished()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """A member ended; the search is finished with the last one."""
        super().on_trial_complete(trial_id, result=result, error=error)
        if self._handed_out_all and not self._live_trials:
            super().set_finished()
