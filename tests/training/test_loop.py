"""Pieces of the per-worker loop that need no Ray: the macro-F1 and the divergence flag every epoch reports."""

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import f1_score

from training.config import TrainConfig
from training.loop import SENTINEL, epoch_metrics, macro_f1_from_confusion


def sklearn_macro_f1(confusion: np.ndarray) -> float:
    classes = np.arange(len(confusion))
    truth = np.repeat(classes, confusion.sum(axis=1))
    predicted = np.concatenate([np.repeat(classes, row) for row in confusion])
    return float(f1_score(truth, predicted, labels=classes, average="macro", zero_division=0))


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 8).flatmap(lambda k: arrays(np.int64, (k, k), elements=st.integers(0, 30))))
def test_macro_f1_equals_scikit_learn(confusion):
    assume(confusion.sum() > 0)  # scikit-learn refuses an empty input
    assert np.isclose(macro_f1_from_confusion(confusion), sklearn_macro_f1(confusion))


def test_macro_f1_edge_cases():
    assert macro_f1_from_confusion(np.diag([5, 3, 2])) == 1.0
    assert macro_f1_from_confusion(np.zeros((3, 3))) == 0.0
    # Everything predicted as class 0: only class 0 scores, 2*2/(2*2+2) = 2/3, averaged over 3 classes.
    assert np.isclose(macro_f1_from_confusion(np.array([[2, 0, 0], [1, 0, 0], [1, 0, 0]])), (2 / 3) / 3)


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
