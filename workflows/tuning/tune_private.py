"""Every private Ray Tune API and Tune setting the tuning stage relies on, in one place, checked on Ray 2.60.0.

Ray is pinned to 2.60.0 in pyproject.toml; each entry names the test that fails when the behaviour changes. The
training stage's private Ray APIs (Train V2, Ray's KV store) live in ``workflows/training/ray_private.py``.

- :data:`TUNE_ENV`: environment settings read by Tune (``TUNE_FORCE_TRIAL_CLEANUP_S`` by ``TuneController``,
  ``RAY_AIR_NEW_OUTPUT`` by ``ray.tune.experimental.output.get_air_verbosity``); pinned by
  ``tests/workflows/tuning/test_tune_private.py`` and, for Tune's quiet console, ``tests/workflows/test_tune_job.py``.
- :class:`RecoveringPBT`, PBT's rescue rule, subclasses ``PopulationBasedTraining``: it overrides
  ``_checkpoint_or_exploit``, calls ``_exploit`` and reads and writes ``_trial_state`` entries (``last_score``,
  ``last_result``, ``last_checkpoint``, ``last_perturbation_time``, ``last_train_time``); it reads PBT's settings
  ``_metric``, ``_metric_op``, ``_time_attr`` and ``_perturbation_interval``. Ray's side is pinned by
  ``tests/workflows/tuning/test_tune_private.py``, the rule by ``tests/workflows/tuning/test_pbt.py`` and end to end by
  ``tests/workflows/test_tune.py``.
- :class:`PopulationSearch` reads ``BasicVariantGenerator._live_trials`` and relies on Tune caching a paused
  member's actor only while the search is not finished (``TuneController._maybe_cache_trial_actor``); pinned by
  ``tests/workflows/tuning/test_tune_private.py`` and ``tests/workflows/test_tune.py`` (members keep their Train run
  across exploits).
- :func:`quiet_tune_timing_notes` names Tune's loggers by module path (``ray.tune.utils.util``,
  ``ray.tune.logger.logger``); ``tests/workflows/test_tune_job.py`` fails when their notes come back.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.tune.search import BasicVariantGenerator

# Ray Tune settings, read by the driver.
TUNE_ENV = {
    # Seconds Tune waits for a stopped member's process to end before it kills it (600 s by default).
    "TUNE_FORCE_TRIAL_CLEANUP_S": "60",
    # Tune's newer console output prints its boxed experiment table even at verbose=0; the older one is silent there.
    "RAY_AIR_NEW_OUTPUT": "0",
}
# Tune's timing notes ("… may be a performance bottleneck") come from this module's warn_if_slow.
TUNE_TIMING_LOGGER = "ray.tune.utils.util"
TIMING_NOTE = "may be a performance bottleneck"
# Tune's CSV logger warns that a member's progress.csv is not on storage when the member is replaced at its very
# first report (it has a donor's checkpoint but has not written the file yet); it then starts the file, as it should.
TUNE_LOGGER_LOGGER = "ray.tune.logger.logger"
NO_PROGRESS_YET = "Remote file not found"


def apply_tune_settings() -> None:
    """Set :data:`TUNE_ENV` in this process (a value the user set wins)."""
    for key, value in TUNE_ENV.items():
        os.environ.setdefault(key, value)


class _DropTimingNotes(logging.Filter):
    """Drops Tune's timing notes.

    On a laptop the members share the CPUs with the driver: a result that waits half a second to be processed is
    expected there, not a problem to act on.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return TIMING_NOTE not in record.getMessage()


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


class RecoveringPBT(PopulationBasedTraining):
    """Stock asynchronous PBT with four changes for long-lived members that each run a ``TorchTrainer``.

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
