"""Classic baselines fitted and scored on the ResNet's splits: a random forest on pixels, logistic regression on means.

The random forest sees all raw pixels, the logistic regression the per-band patch means; each is skipped, with a
one-line note, where its training split is too large to fit in about a minute. The main job and ``train.py`` report
them beside the ResNet's test metrics, so every run says how far the network beats what a classic model gets from
the same data; ``benchmarks/baselines.py`` reuses the features and models.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from data.format import PatchDataset, PatchMetadata, PatchSplit
from workflows.serving.evaluate import (
    VARIANT_METRICS,
    LabelledBatches,
    classification_metrics,
    format_metrics_table,
    format_variants,
    labelled_batches,
    shown_variant,
)

log = logging.getLogger(__name__)

FOREST_TREES = 500
FOREST_SEED = 0
LOGISTIC_MAX_ITER = 5000
# Training-split size, in patches x features, above which a baseline is skipped so that it ends in about a minute
# on 2 cores (fit and test prediction; the timings behind these limits are in docs/BENCHMARKS.md). More cores only
# make the forest faster.
FOREST_MAX_CELLS = 3_500_000
LOGISTIC_MAX_CELLS = 8_000_000

Features = Callable[[np.ndarray], np.ndarray]


def band_means(pixels: np.ndarray) -> np.ndarray:
    """Per-band patch means, shape (N, C), from pixels (N, C, H, W)."""
    return pixels.mean(axis=(2, 3))


def flat_pixels(pixels: np.ndarray) -> np.ndarray:
    """All pixel values of each patch in one row, shape (N, C*H*W)."""
    return pixels.reshape(len(pixels), -1)


def random_forest(trees: int = FOREST_TREES, seed: int = FOREST_SEED) -> RandomForestClassifier:
    """A random forest with a fixed seed, on every core the machine gives this process."""
    return RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=-1)


def logistic_regression() -> Any:
    """Logistic regression on standardised features."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=LOGISTIC_MAX_ITER))


@dataclass(frozen=True)
class Baseline:
    """One classic model of the comparison.

    Attributes:
        key: Its key in ``test_metrics.json`` and the report.
        name: How summaries name it.
        features: The features it is fitted on, from raw pixels (N, C, H, W).
        build: Makes the unfitted scikit-learn estimator.
        max_cells: Largest training split, in patches x features, it is fitted on (see ``FOREST_MAX_CELLS``).
    """

    key: str
    name: str
    features: Features
    build: Callable[[], Any]
    max_cells: int


BASELINES = (
    Baseline("random_forest", "random forest", flat_pixels, random_forest, FOREST_MAX_CELLS),
    Baseline("logistic_regression", "logistic regression", band_means, logistic_regression, LOGISTIC_MAX_CELLS),
)


@dataclass(frozen=True)
class BaselineData:
    """What the baselines are fitted and scored on: the training split as batches, read again for each baseline.

    Attributes:
        metadata: The dataset's metadata.
        train_rows: Patches in the training split.
        train_batches: Makes one pass of the training split's raw pixels (B, C, H, W) and labels (B,).
        test: The test split, in memory or as batches.
    """

    metadata: PatchMetadata
    train_rows: int
    train_batches: LabelledBatches
    test: PatchSplit | LabelledBatches

    @classmethod
    def from_dataset(cls, dataset: PatchDataset) -> BaselineData:
        """The data of a dataset in memory."""
        train = dataset.train
        return cls(dataset.metadata, len(train), lambda: [(train.pixels, train.labels)], dataset.test)


def score(data: BaselineData, model: Any, features: Features) -> dict[str, Any]:
    """Fit a scikit-learn model on the training split's features and return its test metrics.

    The features are computed batch by batch, so only they, never all the training pixels, are held at once; the
    test split is predicted batch by batch.
    """
    parts = [(features(pixels), labels) for pixels, labels in data.train_batches()]
    model.fit(np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]))
    scored = [(labels, model.predict(features(pixels))) for pixels, labels in labelled_batches(data.test)()]
    truth, predicted = (np.concatenate(column) for column in zip(*scored, strict=True))
    return classification_metrics(truth, predicted, list(data.metadata.classes))


def run_baselines(
    data: BaselineData | PatchDataset, baselines: tuple[Baseline, ...] = BASELINES
) -> dict[str, dict[str, Any]]:
    """Fit every baseline on the training split and score it on the test split, or skip it when the split is too large.

    Returns:
        By baseline key: ``name`` and either ``accuracy``, ``macro_f1``, ``kappa`` and ``seconds``, or ``skipped``
        (a one-line note saying why).
    """
    if isinstance(data, PatchDataset):
        data = BaselineData.from_dataset(data)
    meta = data.metadata
    results = {}
    for baseline in baselines:
        patches = data.train_rows
        features = baseline.features(np.zeros((1, meta.num_bands, meta.height, meta.width), np.float32)).shape[1]
        if patches * features > baseline.max_cells:
            note = (
                f"{baseline.name} skipped: the training split has {patches:,} patches x {features:,} features, "
                f"above {baseline.max_cells:,}, too large to fit in about a minute"
            )
            log.info(note)
            results[baseline.key] = {"name": baseline.name, "skipped": note}
            continue
        started = time.perf_counter()
        metrics = score(data, baseline.build(), baseline.features)
        results[baseline.key] = {
            "name": baseline.name,
            **{key: metrics[key] for key in VARIANT_METRICS},
            "seconds": time.perf_counter() - started,
        }
    return results


def skip_notes(metrics: dict[str, Any]) -> list[str]:
    """The notes of the baselines that ``metrics["baselines"]`` skipped."""
    return [body["skipped"] for body in metrics.get("baselines", {}).values() if "skipped" in body]


def format_comparison(metrics: dict[str, Any]) -> str:
    """One line: the ResNet's shipped variant beside each baseline's test accuracy (skipped ones say so)."""
    parts = [f"ResNet {shown_variant(metrics['variant'])} {metrics['accuracy']:.3f}"]
    for body in metrics.get("baselines", {}).values():
        parts.append(f"{body['name']} skipped" if "skipped" in body else f"{body['name']} {body['accuracy']:.3f}")
    return " · ".join(parts)


def format_test_summary(metrics: dict[str, Any]) -> str:
    """The test summary the scripts print: variants, per-class table, skipped baselines, comparison line.

    One line per prediction variant (the shipped one marked ``*``), the shipped one's per-class table, the notes of
    skipped baselines, and one line comparing the shipped ResNet with the baselines.
    """
    views, seconds = metrics["tta_views"], metrics["evaluation_seconds"]
    lines = [
        f"test: {views['views']} {views['augment']} view(s) for TTA, evaluated in {seconds:.1f} s; * shipped",
        format_variants(metrics),
        format_metrics_table(metrics),
        *skip_notes(metrics),
        format_comparison(metrics),
    ]
    return "\n".join(lines)
