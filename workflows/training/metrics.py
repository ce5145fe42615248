"""Classification figures from a confusion matrix (rows: true class, columns: predicted), without scikit-learn.

Counts add up batch by batch and across workers, so the Train workers' validation and the streamed prediction both
count a matrix and compute their figures here; scikit-learn's import would cost every Train worker 0.7 s of start-up.
"""

from __future__ import annotations

import numpy as np


def accuracy_from_confusion(confusion: np.ndarray) -> float:
    """The share of counted rows on the diagonal; 0 for an empty matrix."""
    counts = np.asarray(confusion, dtype=np.float64)
    return float(np.trace(counts) / max(counts.sum(), 1.0))


def macro_f1_from_confusion(confusion: np.ndarray) -> float:
    """Macro-F1 over every class of a confusion matrix.

    Per class 2·TP / (2·TP + FP + FN), 0 for a class never seen nor predicted, then the unweighted mean: scikit-learn's
    ``f1_score(average="macro", labels=all classes, zero_division=0)`` (a test holds the two equal).
    """
    counts = np.asarray(confusion, dtype=np.float64)
    true_positives = np.diag(counts)
    denominator = counts.sum(axis=0) + counts.sum(axis=1)  # = 2·TP + FP + FN
    f1 = np.divide(2 * true_positives, denominator, out=np.zeros_like(true_positives), where=denominator > 0)
    return float(f1.mean())
