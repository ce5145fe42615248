"""Tests of the PBT report: the JSON summary, the PNG plots, the text table and the atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from workflows.tuning.report import (
    CONFUSION_PLOT,
    HYPERPARAMETER_PLOT,
    SUMMARY_FILE,
    VAL_ACC_PLOT,
    format_summary,
    write_report,
)

EXPECTED_FILES = {SUMMARY_FILE, VAL_ACC_PLOT, HYPERPARAMETER_PLOT, CONFUSION_PLOT}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPOCHS = 30
INTERVAL = 5


def _entry(epoch: int, lr: float, clip: float, val_acc: float, diverged: bool = False, donor: str = "") -> dict:
    return {
        "epoch": epoch,
        "lr": lr,
        "grad_clip": clip,
        "val_acc": float("nan") if diverged else val_acc,
        "val_loss": float("nan") if diverged else 2.0 - val_acc,
        "train_loss": float("nan") if diverged else 2.2 - val_acc,
        "diverged": diverged,
        "exploited_from": donor,
        "restored_epoch": 0,
        "skipped_steps": 3 if diverged else 0,
    }


def _steady_trial(rng: np.random.Generator, lr: float, clip: float, start: float) -> dict:
    accuracy = np.clip(start + np.cumsum(rng.uniform(0.0, 0.03, EPOCHS)), 0, 0.95)
    history = [_entry(epoch + 1, lr, clip, float(acc)) for epoch, acc in enumerate(accuracy)]
    return {
        "initial_config": {"lr": lr, "grad_clip": clip},
        "final_config": {"lr": lr, "grad_clip": clip},
        "history": history,
        "exploits": [],
        "final": {"epoch": EPOCHS, "val_acc": history[-1]["val_acc"], "val_loss": 0.6, "diverged": False},
    }


def _pbt() -> dict:
    """Four members: two steady, one that diverges at epoch 3 and exploits the best at report 5, one left diverged."""
    rng = np.random.default_rng(0)
    best = _steady_trial(rng, 0.0021, 1.0, 0.35)
    steady = _steady_trial(rng, 0.0003, 0.5, 0.25)
    # Diverges from its third epoch (lr 0.3, no clipping); PBT replaces it with the best member's epoch-5 checkpoint.
    rescued_history = [_entry(1, 0.3, 0.0, 0.2), _entry(2, 0.3, 0.0, 0.18)]
    rescued_history += [_entry(epoch, 0.3, 0.0, 0.0, diverged=True) for epoch in (3, 4, 5)]
    rescued_history += [
        _entry(epoch, 0.0025, 2.0, best["history"][epoch - 1]["val_acc"] - 0.02, donor="abc_00001")
        for epoch in range(6, EPOCHS + 1)
    ]
    rescued = {
        "initial_config": {"lr": 0.3, "grad_clip": 0.0},
        "final_config": {"lr": 0.0025, "grad_clip": 2.0},
        "history": rescued_history,
        "exploits": [{"report_index": 5, "donor": "abc_00001", "donor_epoch": 5, "lr": 0.0025, "grad_clip": 2.0}],
        "final": {"epoch": EPOCHS, "val_acc": rescued_history[-1]["val_acc"], "val_loss": 0.7, "diverged": False},
    }
    lost_history = [_entry(1, 3.0, 0.0, 0.15)] + [_entry(epoch, 3.0, 0.0, 0.0, diverged=True) for epoch in (2, 3, 4)]
    lost = {
        "initial_config": {"lr": 3.0, "grad_clip": 0.0},
        "final_config": {"lr": 3.0, "grad_clip": 0.0},
        "history": lost_history,
        "exploits": [],
        "final": {"epoch": 4, "val_acc": float("nan"), "val_loss": float("nan"), "diverged": True},
    }
    return {
        "metric": "val_acc",
        "mode": "max",
        "population": 4,
        "epochs": EPOCHS,
        "perturbation_interval": INTERVAL,
        "best_trial": "abc_00001",
        "trials": {"abc_00000": steady, "abc_00001": best, "abc_00002": rescued, "abc_00003": lost},
    }


def _test_metrics(classes: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    matrix = rng.integers(0, 6, (classes, classes)) + np.diag(rng.integers(30, 60, classes))
    accuracy = float(np.trace(matrix) / matrix.sum())
    return {
        "accuracy": accuracy,
        "macro_f1": accuracy - 0.01,
        "kappa": accuracy - 0.05,
        "confusion_matrix": matrix.tolist(),
        "class_names": [f"class_{i}" for i in range(classes)],
    }


def _ensemble_metrics(classes: int) -> dict:
    """Test metrics as the main job writes them: the shipped ensemble+TTA, its variants and the baselines."""
    metrics = _test_metrics(classes)
    shipped = {name: metrics[name] for name in ("accuracy", "macro_f1", "kappa")}
    metrics.update(
        variant="ensemble+tta",
        variants={
            "single": {"accuracy": 0.8705, "macro_f1": 0.86, "kappa": 0.84},
            "ensemble": {"accuracy": 0.885, "macro_f1": float("nan"), "kappa": 0.86},
            "ensemble+tta": shipped,
        },
        baselines={
            "random_forest": {"name": "random forest", "accuracy": 0.831, "macro_f1": 0.82, "kappa": 0.8, "seconds": 5},
            "logistic_regression": {"name": "logistic regression", "skipped": "logistic regression skipped: too large"},
        },
    )
    return metrics


def _assert_png(path: Path) -> None:
    body = path.read_bytes()
    assert body.startswith(PNG_MAGIC), path
    assert len(body) > 1024, path


def test_write_report_files_and_summary(tmp_path: Path) -> None:
    pbt, metrics = _pbt(), _test_metrics(7)
    out = tmp_path / "report"  # does not exist yet
    written = write_report(pbt, metrics, out)

    assert set(written) == EXPECTED_FILES
    assert {path.name for path in out.iterdir()} == EXPECTED_FILES  # no temporary files left behind
    for name, path in written.items():
        assert path == out / name
        if name.endswith(".png"):
            _assert_png(path)

    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["best_trial"] == "abc_00001"
    assert summary["best_config"] == {"lr": 0.0021, "grad_clip": 1.0}
    assert summary["test"] == {name: pytest.approx(metrics[name]) for name in ("accuracy", "macro_f1", "kappa")}
    assert summary["diverged_at_end"] == 1
    assert {trial_id: trial["exploits"] for trial_id, trial in summary["trials"].items()} == {
        "abc_00000": 0,
        "abc_00001": 0,
        "abc_00002": 1,
        "abc_00003": 0,
    }
    assert summary["trials"]["abc_00002"]["diverged"] is False
    assert summary["trials"]["abc_00002"]["diverged_reports"] == 3
    assert summary["trials"]["abc_00003"]["diverged"] is True
    assert summary["trials"]["abc_00003"]["final_val_acc"] is None  # NaN is not JSON
    assert summary["trials"]["abc_00001"]["final_val_acc"] == pytest.approx(
        pbt["trials"]["abc_00001"]["final"]["val_acc"]
    )
    assert sorted(summary["plots"]) == sorted(EXPECTED_FILES - {SUMMARY_FILE})


def test_report_holds_the_variants_and_the_baselines(tmp_path: Path) -> None:
    metrics = _ensemble_metrics(7)
    test = json.loads(write_report(_pbt(), metrics, tmp_path)[SUMMARY_FILE].read_text())["test"]
    assert test["variant"] == "ensemble+tta" and test["accuracy"] == pytest.approx(metrics["accuracy"])
    assert list(test["variants"]) == ["single", "ensemble", "ensemble+tta"]
    assert test["variants"]["single"] == {"accuracy": 0.8705, "macro_f1": 0.86, "kappa": 0.84}
    assert test["variants"]["ensemble"]["macro_f1"] is None  # NaN is not JSON
    assert test["variants"]["ensemble+tta"] == pytest.approx({k: metrics[k] for k in ("accuracy", "macro_f1", "kappa")})
    assert test["baselines"]["random_forest"] == {
        "name": "random forest",
        "accuracy": 0.831,
        "macro_f1": 0.82,
        "kappa": 0.8,
    }
    assert test["baselines"]["logistic_regression"] == {
        "name": "logistic regression",
        "skipped": "logistic regression skipped: too large",
    }


def test_write_report_replaces_existing_files(tmp_path: Path) -> None:
    write_report(_pbt(), _test_metrics(7), tmp_path)
    (tmp_path / "unrelated.txt").write_text("kept")
    write_report(_pbt(), _test_metrics(3, seed=1), tmp_path)
    assert {path.name for path in tmp_path.iterdir()} == EXPECTED_FILES | {"unrelated.txt"}
    _assert_png(tmp_path / CONFUSION_PLOT)


def test_format_summary_lists_every_trial_and_marks_the_best() -> None:
    pbt = _pbt()
    table = format_summary(pbt)
    for trial_id in pbt["trials"]:
        assert trial_id in table
    best_rows = [line for line in table.splitlines() if line.startswith("*") and "abc_" in line]
    assert len(best_rows) == 1 and "abc_00001" in best_rows[0]
    assert len(table.splitlines()) == len(pbt["trials"]) + 2  # header, one row per trial, footnote
    rescued = next(line for line in table.splitlines() if "abc_00002" in line)
    assert "off" in rescued and rescued.rstrip().endswith("no")  # started without clipping, recovered
    lost = next(line for line in table.splitlines() if "abc_00003" in line)
    assert lost.rstrip().endswith("yes")


def test_single_report_trial_and_two_classes(tmp_path: Path) -> None:
    pbt = {
        "metric": "val_acc",
        "mode": "max",
        "best_trial": "solo_00000",
        "trials": {
            "solo_00000": {
                "initial_config": {"lr": 0.001, "grad_clip": 5.0},
                "final_config": {"lr": 0.001, "grad_clip": 5.0},
                "history": [_entry(1, 0.001, 5.0, 0.6)],
                "exploits": [],
                "final": {"epoch": 1, "val_acc": 0.6, "val_loss": 1.4, "diverged": False},
            }
        },
    }
    written = write_report(pbt, _test_metrics(2), tmp_path)
    assert {path.name for path in tmp_path.iterdir()} == EXPECTED_FILES
    for name in EXPECTED_FILES - {SUMMARY_FILE}:
        _assert_png(written[name])
    summary = json.loads(written[SUMMARY_FILE].read_text())
    assert summary["best_trial"] == "solo_00000"
    assert summary["diverged_at_end"] == 0
    assert summary["trials"]["solo_00000"]["exploits"] == 0
    assert "* solo_00000" in format_summary(pbt)


def test_inconsistent_input_is_a_one_line_error_and_writes_nothing(tmp_path: Path) -> None:
    pbt = _pbt()
    pbt["best_trial"] = "abc_00099"
    with pytest.raises(ValueError, match="best_trial 'abc_00099' is not among its trials"):
        write_report(pbt, _test_metrics(7), tmp_path / "a")
    metrics = _test_metrics(7)
    metrics["class_names"] = metrics["class_names"][:6]
    with pytest.raises(ValueError, match=r"shape \(7, 7\) but there are 6 class names"):
        write_report(_pbt(), metrics, tmp_path / "b")
    assert not list(tmp_path.iterdir())
