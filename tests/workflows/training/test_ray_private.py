"""Pins for workflows/training/ray_private.py that need no cluster: the Ray settings it sets are still read by Ray
2.60."""

from pathlib import Path

import pytest
import ray

from workflows.training.ray_private import TRAIN_ENV, TUNE_ENV, PopulationSearch

RAY_SOURCE = Path(ray.__file__).parent


def _ray_reads(name: str) -> bool:
    """Whether some module of the installed Ray names the environment variable (as its constant's value)."""
    quoted = (f'"{name}"', f"'{name}'")
    for path in RAY_SOURCE.rglob("*.py"):
        text = path.read_text(errors="ignore")
        if any(q in text for q in quoted):
            return True
    return False


@pytest.mark.parametrize("name", sorted({**TRAIN_ENV, **TUNE_ENV}))
def test_every_setting_is_still_read_by_ray(name):
    assert _ray_reads(name), f"Ray {ray.__version__} no longer reads {name}; see workflows/training/ray_private.py"


def test_the_population_search_stays_open_until_every_member_ended():
    search = PopulationSearch()
    search._live_trials = {"a", "b"}  # as Ray's generator records the trials it handed out
    search.set_finished()  # Ray calls this when the grid is handed out
    assert not search.is_finished(), "a finished search makes Tune stop keeping paused members' processes"
    search.on_trial_complete("a")
    assert not search.is_finished()
    search.on_trial_complete("b")
    assert search.is_finished()


def test_a_member_in_trouble_is_diverged_or_near_chance_after_its_first_interval():
    from workflows.tuning.pbt import make_scheduler

    scheduler = make_scheduler(perturbation_interval=5, seed=0, num_classes=7, metric="val_acc", mode="max")
    assert scheduler._in_trouble({"epoch": 1, "val_acc": 0.9, "diverged": True})
    assert not scheduler._in_trouble({"epoch": 4, "val_acc": 0.15, "diverged": False}), "too early to call it stuck"
    assert scheduler._in_trouble({"epoch": 5, "val_acc": 0.15, "diverged": False})
    assert not scheduler._in_trouble({"epoch": 5, "val_acc": 0.6, "diverged": False})


class _Member:
    """What RecoveringPBT reads of a Tune trial."""

    def __init__(self, name: str) -> None:
        self.experiment_tag = name
        self.checkpoint = f"{name}-latest"
        self.status = "RUNNING"


def _report(epoch: int, val_acc: float, diverged: bool = False) -> dict:
    return {"epoch": epoch, "training_iteration": epoch, "val_acc": val_acc, "diverged": diverged}


def _rescuer(monkeypatch):
    """A scheduler for 7 classes (interval 5) whose exploits are recorded, and two members it tracks."""
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pbt import _PBTTrialState

    from workflows.tuning.pbt import make_scheduler

    scheduler = make_scheduler(perturbation_interval=5, seed=0, num_classes=7, metric="val_acc", mode="max")
    exploits = []
    monkeypatch.setattr(scheduler, "_exploit", lambda controller, trial, donor: exploits.append((trial, donor)))
    monkeypatch.setattr(PopulationBasedTraining, "on_trial_result", lambda *args: "CONTINUE")
    sick, healthy = _Member("sick"), _Member("healthy")
    for member in (sick, healthy):
        scheduler._trial_state[member] = _PBTTrialState(member)
    return scheduler, exploits, sick, healthy


def test_a_member_that_diverged_before_any_donor_is_replaced_at_its_next_report_while_at_chance(monkeypatch):
    scheduler, exploits, sick, healthy = _rescuer(monkeypatch)
    scheduler.on_trial_result(None, sick, _report(1, 0.14, diverged=True))  # nobody has reported: no donor
    assert exploits == []
    scheduler.on_trial_result(None, healthy, _report(1, 0.70))
    # Epoch 2 is finite again but still at chance, inside the first interval: still the diverged weights.
    assert scheduler.on_trial_result(None, sick, _report(2, 0.15)) == "NOOP"
    assert exploits == [(sick, healthy)]
    # Replaced: an early low score is no longer trouble before the first interval ends.
    scheduler.on_trial_result(None, sick, _report(3, 0.15))
    assert len(exploits) == 1


def test_a_member_that_climbed_above_chance_after_diverging_is_left_alone(monkeypatch):
    scheduler, exploits, sick, healthy = _rescuer(monkeypatch)
    scheduler.on_trial_result(None, sick, _report(1, 0.14, diverged=True))
    scheduler.on_trial_result(None, sick, _report(2, 0.50))  # recovered by itself
    scheduler.on_trial_result(None, healthy, _report(1, 0.70))
    scheduler.on_trial_result(None, sick, _report(3, 0.15))
    assert exploits == [], "inside the first interval a low score alone is not trouble"
