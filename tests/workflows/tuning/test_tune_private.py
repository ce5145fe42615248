"""Pins for workflows/tuning/tune_private.py: Ray 2.60's Tune still reads what we set and has what we override or read.

Each test checks the Ray code we rely on (a signature, an attribute Ray itself creates, the code that reads a
setting), so it fails when that code changes. None starts a cluster.
"""

import inspect
import os

from ray import tune
from ray.tune.execution.tune_controller import TuneController
from ray.tune.experiment import Experiment
from ray.tune.experimental.output import get_air_verbosity
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.schedulers.pbt import _PBTTrialState
from ray.tune.search import BasicVariantGenerator

from workflows.tuning.tune_private import TUNE_ENV, PopulationSearch, RecoveringPBT, apply_tune_settings


def test_tunes_controller_reads_the_cleanup_timeout_when_built():
    constants = TuneController.__init__.__code__.co_consts
    assert "TUNE_FORCE_TRIAL_CLEANUP_S" in constants


def test_the_old_console_output_is_what_turns_tunes_boxes_off(monkeypatch):
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", TUNE_ENV["RAY_AIR_NEW_OUTPUT"])
    assert get_air_verbosity(0) is None
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")
    assert get_air_verbosity(0) is not None, "Ray changed how it picks its console output"


def test_a_value_the_user_set_wins(monkeypatch):
    monkeypatch.setenv("TUNE_FORCE_TRIAL_CLEANUP_S", "5")
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    apply_tune_settings()
    assert os.environ["TUNE_FORCE_TRIAL_CLEANUP_S"] == "5"
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == TUNE_ENV["RAY_AIR_NEW_OUTPUT"]


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_pbt_still_has_the_methods_we_override_and_call_with_their_signatures():
    assert _parameters(PopulationBasedTraining._checkpoint_or_exploit) == [
        "self", "trial", "tune_controller", "upper_quantile", "lower_quantile",
    ]  # fmt: skip
    assert _parameters(RecoveringPBT._checkpoint_or_exploit) == _parameters(
        PopulationBasedTraining._checkpoint_or_exploit
    )
    assert _parameters(PopulationBasedTraining._exploit) == ["self", "tune_controller", "trial", "trial_to_clone"]
    assert _parameters(PopulationBasedTraining.on_trial_result) == ["self", "tune_controller", "trial", "result"]


def test_pbt_keeps_the_settings_and_trial_state_we_read():
    scheduler = PopulationBasedTraining(
        time_attr="epoch", metric="val_acc", mode="max", perturbation_interval=3, hyperparam_mutations={"lr": [0.1]}
    )
    assert (scheduler._metric, scheduler._metric_op, scheduler._time_attr) == ("val_acc", 1.0, "epoch")
    assert scheduler._perturbation_interval == 3
    assert scheduler._trial_state == {}

    class Trial:
        experiment_tag = "0"

    state = _PBTTrialState(Trial())
    for name in ("last_score", "last_result", "last_checkpoint", "last_perturbation_time", "last_train_time"):
        assert hasattr(state, name), f"PBT's trial state has no {name} any more"


def _handed_out(search: BasicVariantGenerator, members: int) -> list:
    """Every trial of a grid of ``members``, handed out by Ray's own generator (which records them as live)."""

    class Member(tune.Trainable):
        def step(self):
            return {}

    search.add_configurations(
        [Experiment("pin", run=Member, config={"member": tune.grid_search(list(range(members)))})]
    )
    trials = []
    while (trial := search.next_trial()) is not None:
        trials.append(trial)
    return trials


def test_ray_records_the_trials_it_handed_out_as_live():
    search = BasicVariantGenerator()
    trials = _handed_out(search, 2)
    assert search._live_trials == {trial.trial_id for trial in trials}
    assert search.is_finished(), "the stock generator is finished once the grid is handed out"
    search.on_trial_complete(trials[0].trial_id)
    assert search._live_trials == {trials[1].trial_id}


def test_the_population_search_stays_open_until_every_member_ended():
    search = PopulationSearch()
    trials = _handed_out(search, 2)
    assert len(trials) == 2
    assert not search.is_finished(), "a finished search makes Tune stop keeping paused members' processes"
    search.on_trial_complete(trials[0].trial_id)
    assert not search.is_finished()
    search.on_trial_complete(trials[1].trial_id, error=True)
    assert search.is_finished()


def test_tune_caches_a_paused_members_actor_only_while_the_search_is_open():
    source = inspect.getsource(TuneController._maybe_cache_trial_actor)
    assert "self._search_alg.is_finished()" in source
