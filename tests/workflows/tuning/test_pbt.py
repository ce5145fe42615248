"""The PBT scheduler the members run under (workflows.tuning.pbt.make_scheduler), with Tune's trials faked: who is
replaced, by whom, and when. No cluster."""

import pytest
from ray.tune.schedulers.pbt import _PBTTrialState

from workflows.tuning.pbt import STUCK_CHANCE_FACTOR, TIME_ATTR, make_scheduler

CLASSES = 7
INTERVAL = 4
CHANCE = 1 / CLASSES
HEALTHY, BETTER, BEST = 0.55, 0.65, 0.75


class _Member:
    """What PBT reads of a Tune trial."""

    def __init__(self, name: str) -> None:
        self.trial_id = name
        self.experiment_tag = name
        self.checkpoint = f"{name}-latest"
        self.status = "RUNNING"

    def is_finished(self) -> bool:
        return self.status in ("TERMINATED", "ERROR")

    def __repr__(self) -> str:
        return self.trial_id


class _Controller:
    """What PBT asks of Tune's controller: the trials, and a save of a top member's checkpoint."""

    def __init__(self, members: list[_Member]) -> None:
        self.members = members

    def get_trials(self) -> list[_Member]:
        return self.members

    def _schedule_trial_save(self, trial: _Member, result: dict | None = None) -> str:
        return trial.checkpoint


def _population(monkeypatch, names: str = "abcd"):
    """A scheduler for 7 classes whose exploits are recorded (donor -> member), its members and a controller."""
    scheduler = make_scheduler(
        perturbation_interval=INTERVAL, seed=0, num_classes=CLASSES, metric="val_acc", mode="max"
    )
    exploits = []

    def exploit(controller, trial, donor):
        assert scheduler._trial_state[donor].last_checkpoint == donor.checkpoint, "not the donor's latest checkpoint"
        exploits.append((trial.trial_id, donor.trial_id))

    monkeypatch.setattr(scheduler, "_exploit", exploit)
    members = [_Member(name) for name in names]
    controller = _Controller(members)
    for member in members:  # as on_trial_add records them (it also fills in configs, which these fakes lack)
        scheduler._trial_state[member] = _PBTTrialState(member)
    return scheduler, exploits, members, controller


def _report(epoch: int, val_acc: float, diverged: bool = False) -> dict:
    return {TIME_ATTR: epoch, "training_iteration": epoch, "val_acc": val_acc, "diverged": diverged}


def test_a_diverged_member_is_replaced_at_once_by_the_best_healthy_member(monkeypatch):
    scheduler, exploits, (a, b, c, d), controller = _population(monkeypatch)
    for member, score in ((b, HEALTHY), (c, BEST), (d, BETTER)):
        scheduler.on_trial_result(controller, member, _report(1, score))
    decision = scheduler.on_trial_result(controller, a, _report(1, 0.9, diverged=True))
    assert exploits == [("a", "c")], "epoch 1 is far from the perturbation point: only a rescue exploits"
    assert decision == "NOOP"
    assert scheduler.rescues == 1


def test_a_diverged_donor_is_never_chosen(monkeypatch):
    scheduler, exploits, (a, b, c, _), controller = _population(monkeypatch)
    scheduler.on_trial_result(controller, b, _report(1, HEALTHY))
    scheduler.on_trial_result(controller, c, _report(1, BEST, diverged=True))  # the best score, but diverged
    exploits.clear()
    scheduler.on_trial_result(controller, a, _report(1, CHANCE, diverged=True))
    assert exploits == [("a", "b")]


def test_a_member_near_chance_is_replaced_only_after_its_first_interval(monkeypatch):
    scheduler, exploits, (a, b, _, _), controller = _population(monkeypatch)
    stuck = STUCK_CHANCE_FACTOR * CHANCE
    scheduler.on_trial_result(controller, b, _report(1, BEST))
    scheduler.on_trial_result(controller, a, _report(INTERVAL - 1, stuck))
    assert exploits == [], "inside the first interval a low score alone is not trouble"
    scheduler.on_trial_result(controller, b, _report(INTERVAL - 1, BEST))
    scheduler.on_trial_result(controller, a, _report(INTERVAL, stuck))
    assert exploits == [("a", "b")]


def test_a_member_that_diverged_before_any_donor_is_replaced_at_its_next_report_while_at_chance(monkeypatch):
    scheduler, exploits, (a, b, _, _), controller = _population(monkeypatch)
    scheduler.on_trial_result(controller, a, _report(1, CHANCE, diverged=True))  # nobody has reported: no donor
    assert exploits == []
    scheduler.on_trial_result(controller, b, _report(1, BEST))
    # Epoch 2 is finite again but still at chance, inside the first interval: still the diverged weights.
    assert scheduler.on_trial_result(controller, a, _report(2, CHANCE)) == "NOOP"
    assert exploits == [("a", "b")]
    # Replaced: an early low score is no longer trouble before the first interval ends.
    scheduler.on_trial_result(controller, a, _report(3, CHANCE))
    assert len(exploits) == 1


def test_a_member_that_climbed_above_chance_after_diverging_is_left_alone(monkeypatch):
    scheduler, exploits, (a, b, _, _), controller = _population(monkeypatch)
    scheduler.on_trial_result(controller, a, _report(1, CHANCE, diverged=True))
    scheduler.on_trial_result(controller, a, _report(2, HEALTHY))  # recovered by itself
    scheduler.on_trial_result(controller, b, _report(1, BEST))
    scheduler.on_trial_result(controller, a, _report(3, CHANCE))
    assert exploits == [], "inside the first interval a low score alone is not trouble"


def test_every_interval_the_bottom_half_copies_the_top_half(monkeypatch):
    scheduler, exploits, members, controller = _population(monkeypatch)
    scores = dict(zip("abcd", (0.30, 0.40, BETTER, BEST), strict=True))
    for epoch in range(1, INTERVAL):
        for member in members:
            scheduler.on_trial_result(controller, member, _report(epoch, scores[member.trial_id]))
    assert exploits == [], "no healthy member is exploited between perturbation points"
    for member in members:
        decision = scheduler.on_trial_result(controller, member, _report(INTERVAL, scores[member.trial_id]))
        assert decision == "CONTINUE"
    assert sorted(trial for trial, _ in exploits) == ["a", "b"]
    assert {donor for _, donor in exploits} <= {"c", "d"}
    assert scheduler.rescues == 0


def test_a_member_at_its_perturbation_point_is_not_paused_for_pending_ones(monkeypatch):
    scheduler, exploits, (a, b, c, d), controller = _population(monkeypatch)
    d.status = "PENDING"  # stock PBT pauses a member while any other is pending
    for epoch in range(1, INTERVAL + 1):
        for member, score in ((a, HEALTHY), (b, BETTER), (c, BEST)):
            assert scheduler.on_trial_result(controller, member, _report(epoch, score)) == "CONTINUE"


@pytest.mark.parametrize(("metric", "mode"), [("val_loss", "min"), ("val_macro_f1", "max")])
def test_only_accuracy_has_a_chance_level(monkeypatch, metric, mode):
    scheduler = make_scheduler(perturbation_interval=INTERVAL, seed=0, num_classes=CLASSES, metric=metric, mode=mode)
    assert scheduler._stuck_below is None
    accuracy = make_scheduler(perturbation_interval=INTERVAL, seed=0, num_classes=CLASSES, metric="val_acc", mode="max")
    assert accuracy._stuck_below == pytest.approx(STUCK_CHANCE_FACTOR * CHANCE)
