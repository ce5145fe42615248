"""Figures from a confusion matrix: macro-F1 as scikit-learn computes it, edge cases included."""

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import f1_score

from workflows.training.metrics import macro_f1_from_confusion


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
