"""Ray Train runs of the ResNet: learning, checkpoints, resuming, divergence guards and global metrics."""

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from builders import ray_inputs

from data import DEFAULT_DATASET_DIR
from data.folder import read_dataset
from workflows.training.checkpoint import load_checkpoint
from workflows.training.config import TrainConfig
from workflows.training.launch import run_training, unique_run_name

REPO = Path(__file__).resolve().parents[2]
FAST = {"channels": 32, "num_workers": 2, "batch_size": 64, "seed": 0}


@pytest.fixture(scope="module")
def default_data(ray_cluster):
    dataset = read_dataset(DEFAULT_DATASET_DIR)
    stats, datasets = ray_inputs(DEFAULT_DATASET_DIR)
    return dataset, stats, datasets


@pytest.fixture(scope="module")
def trained(default_data, tmp_path_factory):
    dataset, stats, datasets = default_data
    cfg = TrainConfig(epochs=5, **FAST)
    storage = tmp_path_factory.mktemp("train")
    return cfg, run_training(cfg, dataset.metadata, stats, datasets, storage, unique_run_name("t"))


def all_finite(metrics):
    return all(math.isfinite(float(v)) for v in metrics.values())


def test_two_workers_learn_well_above_chance(trained, default_data):
    cfg, outcome = trained
    chance = 1 / default_data[0].metadata.num_classes
    assert [m["epoch"] for m in outcome.history] == list(range(1, cfg.epochs + 1))
    assert max(m["val_acc"] for m in outcome.history) > 3 * chance
    assert outcome.history[-1]["train_loss"] < outcome.history[0]["train_loss"]
    assert not any(m["diverged"] for m in outcome.history)


def test_workers_report_identical_global_metrics(trained):
    _, outcome = trained
    for per_worker in outcome.worker_metrics:
        assert len(per_worker) == 2
        a, b = ({k: v for k, v in m.items() if k != "epoch_seconds"} for m in per_worker)
        assert a == b


def test_checkpoint_holds_model_optimizer_epoch_stats_and_config(trained, default_data):
    cfg, outcome = trained
    dataset, stats, _ = default_data
    state = load_checkpoint(outcome.best_checkpoint)
    assert state["epoch"] == outcome.best_metrics["epoch"]
    assert state["model_config"]["in_channels"] == dataset.metadata.num_bands
    assert state["model_config"]["channels"] == cfg.channels
    assert state["train_config"]["lr"] == cfg.lr
    assert state["band_stats"] == stats.to_dict()
    assert state["optimizer"]["state"], "optimizer state (AdamW moments) must be saved"
    assert set(state["model"]) >= {"stem.0.weight", "layer3.downsample.0.weight"} or len(state["model"]) > 30


def test_resume_continues_epoch_count_with_new_lr(trained, default_data, tmp_path):
    cfg, outcome = trained
    dataset, stats, datasets = default_data
    start = load_checkpoint(outcome.best_checkpoint)["epoch"]
    resumed_cfg = cfg.replace(epochs=start + 2, lr=cfg.lr / 4)
    resumed = run_training(
        resumed_cfg,
        dataset.metadata,
        stats,
        datasets,
        tmp_path,
        unique_run_name("r"),
        resume_from=outcome.best_checkpoint,
    )
    assert [m["epoch"] for m in resumed.history] == [start + 1, start + 2]
    assert resumed.history[0]["lr"] == cfg.lr / 4
    # Continues the donor's progress rather than starting from chance.
    assert resumed.history[0]["val_acc"] > 0.5 * outcome.best_metrics["val_acc"]


def test_diverging_configuration_reports_finite_values_and_the_flag(default_data, tmp_path):
    dataset, stats, datasets = default_data
    cfg = TrainConfig(epochs=3, optimizer="sgd", lr=5.0, grad_clip=None, momentum=0.9, weight_decay=0.0, **FAST)
    outcome = run_training(cfg, dataset.metadata, stats, datasets, tmp_path, unique_run_name("d"))
    assert len(outcome.history) == 3
    assert all(all_finite(m) for m in outcome.history)
    assert any(m["diverged"] for m in outcome.history), outcome.history
    assert outcome.history[-1]["grad_clip"] == 0.0


@pytest.mark.slow
def test_killed_worker_resumes_from_the_last_checkpoint(default_data, tmp_path, alive_actors):
    """A worker process killed after epoch 2 is replaced; the run resumes from its checkpoint and completes."""
    dataset, stats, datasets = default_data
    cfg = TrainConfig(epochs=4, **FAST)
    killed = []

    def kill_a_worker(metrics, checkpoint):
        if metrics["epoch"] == 2 and not killed:
            pid = alive_actors("RayTrainWorker")[0]["Pid"]
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    outcome = run_training(
        cfg, dataset.metadata, stats, datasets, tmp_path, unique_run_name("f"), max_failures=1, on_report=kill_a_worker
    )
    assert killed, "no worker was killed"
    epochs = [m["epoch"] for m in outcome.history]
    assert epochs[-1] == cfg.epochs
    assert sorted(set(epochs)) == list(range(1, cfg.epochs + 1))
    # Resumed from epoch 2's checkpoint: the epoch after the restart is 3, not 1.
    restart = next(i for i in range(1, len(epochs)) if epochs[i] <= epochs[i - 1]) if len(epochs) > 4 else None
    if restart is not None:
        assert epochs[restart] == 3
    assert load_checkpoint(outcome.best_checkpoint)["epoch"] >= 2


@pytest.mark.slow
def test_train_cli_writes_test_metrics(tmp_path):
    results = tmp_path / "run"
    command = [sys.executable, "workflows/train.py", "--epochs", "2", "--channels", "16", "--results", str(results)]
    command += ["--address", "local", "--num-cpus", "2"]  # a private cluster, whatever else runs
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "epoch   2/2" in done.stdout
    import json

    metrics = json.loads((results / "test_metrics.json").read_text())
    assert set(metrics) >= {"accuracy", "macro_f1", "kappa", "per_class", "confusion_matrix", "class_names"}
    assert len(metrics["confusion_matrix"]) == len(metrics["class_names"])
    assert (results / "bundle" / "weights.pt").is_file() and (results / "bundle" / "bundle.json").is_file()
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "already holds" in again.stderr


def test_train_cli_rejects_a_bad_dataset_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "workflows/train.py", "--data", str(tmp_path / "missing")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "missing" in done.stderr


class _Stop(Exception):
    """What a caller raises to stop a run (Tune raises SystemExit in a replaced PBT member)."""


def test_a_run_stopped_by_its_caller_ends_by_itself_and_leaves_nothing(default_data, tmp_path, caplog):
    """The workers read the stop file after the report that raised, end their loop, and Train ends the run: no
    killed workers (failed tasks on the dashboard), no placement group left, no control folder left."""
    import logging

    from ray.util.placement_group import placement_group_table

    caplog.set_level(logging.DEBUG, logger="workflows.training.launch")
    dataset, stats, datasets = default_data
    # Far more epochs than fit in the grace period: a run that ignored the stop would be cut off and say so.
    cfg = TrainConfig(epochs=500, **FAST)
    seen = []

    def stop_after_two(metrics, checkpoint):
        seen.append(metrics["epoch"])
        if metrics["epoch"] == 2:
            raise _Stop

    with pytest.raises(_Stop):
        run_training(
            cfg, dataset.metadata, stats, datasets, tmp_path / "runs", unique_run_name("stop"),
            on_report=stop_after_two, owner="test/stopped-member",
        )  # fmt: skip
    assert seen == [1, 2]
    assert "ended by itself" in caplog.text and "removing its workers" not in caplog.text
    assert {group["state"] for group in placement_group_table().values()} <= {"REMOVED"}
    assert not any((tmp_path / ".control").iterdir())
