"""Pieces of the per-worker loop that need no Ray: the divergence flag every epoch reports."""

import numpy as np

from workflows.training.config import TrainConfig
from workflows.training.loop import SENTINEL, epoch_metrics


def _train_sums(loss_sum: float, samples: float = 100.0, steps: float = 4.0, skipped: float = 0.0) -> dict:
    return {"loss_sum": loss_sum, "samples": samples, "steps": steps, "skipped": skipped}


def _flag(train: dict, val_loss: float = 1.9) -> dict:
    train = {"norm_sum": 4.0, "norm_count": 4.0, "norm_max": 2.0, **train}
    confusion = np.full((7, 7), 2.0)  # near chance
    return epoch_metrics(1, train, val_loss * 98.0, 98.0, confusion, TrainConfig())


def test_healthy_epoch_is_not_diverged():
    assert not _flag(_train_sums(190.0))["diverged"]


def test_huge_but_finite_training_loss_is_diverged_even_when_validation_looks_normal():
    # A step whose loss was 1e9 was applied (finite loss and norm), and validation is back near a uniform guess.
    metrics = _flag(_train_sums(1e9 * 25 + 190.0))
    assert metrics["diverged"]
    assert metrics["train_loss"] == SENTINEL


def test_an_epoch_without_training_steps_is_judged_by_its_validation_alone():
    assert not _flag(_train_sums(0.0, samples=0.0, steps=0.0))["diverged"]


def test_skipped_steps_or_exploded_validation_are_diverged():
    assert _flag(_train_sums(0.0, samples=0.0, skipped=4.0))["diverged"]
    assert _flag(_train_sums(190.0), val_loss=float("inf"))["diverged"]
    assert _flag(_train_sums(190.0), val_loss=25.0)["diverged"]
    assert all(np.isfinite(v) for v in _flag(_train_sums(190.0), val_loss=float("nan")).values())
