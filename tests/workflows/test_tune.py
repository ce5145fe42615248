"""PBT end to end: a diverging member is replaced by a copy of a healthy one and carries on from its checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from builders import RAY_SHUTDOWN_RACES

from workflows.jobs.experiment import ExperimentConfig, size_members, tune_experiment
from workflows.training.config import GRAD_CLIP, LR
from workflows.training.config_file import parse_args
from workflows.training.hyperparams import CLIP_CHOICES
from workflows.tune import build_parser

REPO = Path(__file__).resolve().parents[2]
DIVERGING_LR = 3.0


def test_members_are_sized_to_the_cluster():
    assert size_members(2, 4, 1, None) == (0.45, 4)
    assert size_members(2, 2, 1, None) == (0.95, 2)
    assert size_members(8, 4, 1, None) == (1, 4)
    share, concurrent = size_members(2, 8, 2, None)
    assert concurrent * 2 * share <= 2


@pytest.fixture(scope="module")
def experiment(ray_cluster, tmp_path_factory):
    results = tmp_path_factory.mktemp("pbt") / "exp"
    args = build_parser().parse_args(
        [
            "--population", "2",
            "--epochs", "6",
            "--perturbation-interval", "2",
            "--channels", "16",
            "--initial-lr-range", "0.002", str(DIVERGING_LR),
            "--results", str(results),
        ]
    )  # fmt: skip
    metrics = tune_experiment(ExperimentConfig.from_mapping(args)).metrics
    return results, metrics, json.loads((results / "pbt.json").read_text())


@pytest.mark.slow
def test_diverging_member_is_exploited_and_continues_from_the_donor(experiment):
    _, _, pbt = experiment
    trials = pbt["trials"]
    assert len(trials) == 2
    (bad_id, bad), (good_id, good) = sorted(trials.items(), key=lambda item: -item[1]["initial_config"][LR])
    assert bad["initial_config"][LR] == pytest.approx(DIVERGING_LR)
    assert any(row["diverged"] for row in bad["history"]), "the unstable member should diverge first"
    assert bad["exploits"], "the diverged member was never exploited"
    exploit = bad["exploits"][0]
    assert exploit["donor"] == good_id
    # Replaced as soon as a healthy member had a checkpoint to give, not at its perturbation point: at most one
    # diverged report (the donor's first checkpoint is saved right after its first report) after the donor's first.
    donor_first = good["history"][0]["reported_at"]
    trigger = exploit["report_index"] - 1
    late = [row for row in bad["history"][: trigger + 1] if row["diverged"] and row["reported_at"] > donor_first]
    assert len(late) <= 2, f"replaced {len(late)} diverged reports after a donor was there"
    assert bad["history"][trigger]["reported_at"] > donor_first
    after = bad["history"][exploit["report_index"]]
    # Continues the donor's epoch count (or, handed the donor's final checkpoint, reports it)...
    assert after["epoch"] == min(exploit["donor_epoch"] + 1, pbt["epochs"])
    # ...and its accuracy, rather than starting from scratch (chance is 1/7).
    donor_row = next(row for row in good["history"] if row["epoch"] == exploit["donor_epoch"])
    assert after["val_acc"] > 0.3
    assert after["val_acc"] > donor_row["val_acc"] - 0.2  # one more epoch may improve on the donor, not lose it
    # With the mutated settings, not the diverging ones.
    assert after[LR] != pytest.approx(DIVERGING_LR) and after[LR] < 0.1
    assert after[GRAD_CLIP] in CLIP_CHOICES
    # And ends healthy.
    assert not bad["final"]["diverged"]
    assert all(not t["final"]["diverged"] for t in trials.values())
    # Each member kept its one Train run (worker group) across the exploit: Ray 2.60's Tune caches the paused
    # member's actor while the search is open (workflows.tuning.tune_private.PopulationSearch), and reset_config keeps
    # it.
    for trial in trials.values():
        assert len({row["train_run"] for row in trial["history"]}) == 1, trial["history"]


@pytest.mark.slow
def test_a_run_with_an_exploit_leaves_no_failed_task(experiment):
    import ray
    from ray.util.state import list_tasks

    # What the dashboard's job page counts: a replaced member's run is asked to stop, not killed, and Ray Data's
    # footer readers are one a read (workflows/training/launch.py, data/streaming.py).
    address = ray.get_runtime_context().gcs_address
    tasks = list_tasks(address=address, limit=10000, timeout=120, raise_on_missing_output=False)
    assert len(tasks) > 10, "the run's tasks were not listed"
    failed = sorted({task.name for task in tasks if task.state == "FAILED"} - RAY_SHUTDOWN_RACES)
    assert failed == [], failed


@pytest.mark.slow
def test_experiment_writes_metrics_bundle_and_report(experiment):
    results, metrics, pbt = experiment
    assert metrics["accuracy"] > 0.3
    saved = json.loads((results / "test_metrics.json").read_text())
    assert set(saved) >= {"accuracy", "macro_f1", "kappa", "per_class", "confusion_matrix", "class_names"}
    assert (results / "bundle" / "weights.pt").is_file()
    assert (results / "report" / "report.json").is_file()
    assert list((results / "report").glob("*.png"))
    assert pbt["best_trial"] in pbt["trials"]
    assert not (results / "train_runs").exists()
    # The experiment as a file another run can take: --config results/config.yaml.
    kept = parse_args(build_parser(), ["--config", str(results / "config.yaml")])
    assert (kept.population, kept.epochs, kept.channels) == (2, 6, 16)


def test_bad_flags_give_one_line_errors(tmp_path):
    done = subprocess.run(
        [sys.executable, "workflows/tune.py", "--population", "1", "--results", str(tmp_path / "x")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "--population" in done.stderr and done.stderr.strip().count("\n") == 0
