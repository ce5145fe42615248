"""Pins for workflows/ray_private.py that need no cluster: the Ray settings it sets are still read by Ray 2.60."""

from pathlib import Path

import pytest
import ray

from workflows.ray_private import TRAIN_ENV, TUNE_ENV, PopulationSearch

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
    assert _ray_reads(name), f"Ray {ray.__version__} no longer reads {name}; see workflows/ray_private.py"


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
    from workflows.pbt import make_scheduler

    scheduler = make_scheduler(perturbation_interval=5, seed=0, num_classes=7)
    assert scheduler._in_trouble({"epoch": 1, "val_acc": 0.9, "diverged": True})
    assert not scheduler._in_trouble({"epoch": 4, "val_acc": 0.15, "diverged": False}), "too early to call it stuck"
    assert scheduler._in_trouble({"epoch": 5, "val_acc": 0.15, "diverged": False})
    assert not scheduler._in_trouble({"epoch": 5, "val_acc": 0.6, "diverged": False})
