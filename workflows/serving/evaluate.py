"""Test-split evaluation of checkpoints alone, as an ensemble and with test-time augmentation; lines and JSON output.

An ensemble averages its members' softmax probabilities; test-time augmentation (TTA) averages them over the views of
the augmentation group the members were trained with (``train_config["augment"]``; D4, all 8 flips/rotations, when
a checkpoint does not say).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from data.format import PatchMetadata, PatchSplit
from data.pipeline import DEFAULT_AUGMENTATION, BandStats, augmentation_elements, d4_transform, normalise
from resnet import ResNet
from workflows.training.checkpoint import load_checkpoint, model_from_state
from workflows.training.config import ranking_score
from workflows.training.metrics import accuracy_from_confusion, macro_f1_from_confusion

TEST_METRICS_FILE = "test_metrics.json"
PREDICT_BATCH_SIZE = 1024
# The identity element of d4_transform alone: prediction without test-time augmentation.
NO_TTA = np.zeros(1, dtype=np.int64)
# How a trained population predicts: its best member alone or all its members, each without or with TTA.
SINGLE, ENSEMBLE, TTA_SUFFIX = "single", "ensemble", "+tta"
# The figures kept of each variant beside the shipped one's full metrics.
VARIANT_METRICS = ("accuracy", "macro_f1", "kappa")
# A labelled split as passes of batches, raw pixels (B, C, H, W) and labels (B,); each call makes a new pass.
LabelledBatches = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
# Checkpoint keys that every member of an ensemble must share: one network shape, one input scaling, one meaning.
SHARED_KEYS = ("model_config", "band_stats", "metadata")


def variant_name(ensemble: bool, tta: bool) -> str:
    """The key of a prediction variant: ``single``, ``ensemble``, ``single+tta`` or ``ensemble+tta``."""
    return (ENSEMBLE if ensemble else SINGLE) + (TTA_SUFFIX if tta else "")


def shown_variant(name: str) -> str:
    """A variant's key as the summaries print it (``ensemble+TTA``)."""
    return name.replace(TTA_SUFFIX, TTA_SUFFIX.upper())


def tta_views(train_config: Mapping[str, Any] | None, metadata: PatchMetadata) -> tuple[str, np.ndarray]:
    """The augmentation group a model was trained with and its elements, the views test-time augmentation averages.

    Raises:
        ValueError: The training config names an unknown group.
    """
    name = (train_config or {}).get("augment", DEFAULT_AUGMENTATION)
    return name, augmentation_elements(name, square=metadata.height == metadata.width)


def _normalised_batches(pixels: np.ndarray, stats: BandStats) -> Iterator[np.ndarray]:
    """Normalised batches of at most ``PREDICT_BATCH_SIZE`` patches, (B, C, H, W) each."""
    for start in range(0, len(pixels), PREDICT_BATCH_SIZE):
        yield normalise(pixels[start : start + PREDICT_BATCH_SIZE], stats)


@torch.no_grad()
def _batch_views(models: Sequence[ResNet], batch: np.ndarray, views: np.ndarray) -> np.ndarray:
    """Probabilities of every model on every view of one normalised batch, shape (M, V, B, K)."""
    out = np.empty((len(models), len(views), len(batch), models[0].config.num_classes), dtype=np.float32)
    for model in models:
        model.eval()
    for v, element in enumerate(views):
        # Normalisation is per band, so moving the normalised patches equals normalising the moved ones.
        moved = torch.from_numpy(np.ascontiguousarray(d4_transform(batch, np.full(len(batch), element))))
        for m, model in enumerate(models):
            out[m, v] = torch.softmax(model(moved), dim=1).numpy()
    return out


def member_view_probabilities(
    models: Sequence[ResNet], pixels: np.ndarray, stats: BandStats, views: np.ndarray
) -> np.ndarray:
    """Class probabilities of each model on each view, shape (M, V, N, K), for raw pixels (N, C, H, W).

    View ``v`` applies the D4 element ``views[v]`` (see :func:`data.pipeline.d4_transform`) to every patch.
    """
    parts = [_batch_views(models, batch, views) for batch in _normalised_batches(pixels, stats)]
    empty = (len(models), len(views), 0, models[0].config.num_classes)
    return np.concatenate(parts, axis=2) if parts else np.zeros(empty, dtype=np.float32)


def ensemble_probabilities(
    models: Sequence[ResNet], pixels: np.ndarray, stats: BandStats, views: np.ndarray = NO_TTA
) -> np.ndarray:
    """Class probabilities, shape (N, K), for raw pixels (N, C, H, W): the mean over the models and the views."""
    parts = [_batch_views(models, batch, views).mean(axis=(0, 1)) for batch in _normalised_batches(pixels, stats)]
    return np.concatenate(parts) if parts else np.zeros((0, models[0].config.num_classes), dtype=np.float32)


def predict_probabilities(model: ResNet, pixels: np.ndarray, stats: BandStats) -> np.ndarray:
    """Class probabilities, shape (N, K), of one model for raw pixels (N, C, H, W), normalised with ``stats``."""
    return ensemble_probabilities([model], pixels, stats)


def rank_members(final: Mapping[str, Mapping[str, Any]], metric: str, mode: str) -> list[str]:
    """The members an ensemble is made of, best first: those not diverged at their last report, else the best one.

    Args:
        final: Each member's last report (with ``diverged`` and ``metric``), by trial id.
        metric: The ranking metric; a missing or non-finite value ranks last.
        mode: ``max`` or ``min``.

    Returns:
        Trial ids, best first; ties keep the order of ``final``.
    """
    ranked = sorted(final, key=lambda trial_id: -ranking_score(final[trial_id], metric, mode))
    healthy = [trial_id for trial_id in ranked if not final[trial_id].get("diverged")]
    return healthy or ranked[:1]


def read_members(checkpoint_dirs: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Load the checkpoints of an ensemble's members, checking that they share network, statistics and metadata.

    Raises:
        ValueError: There are none, one is unreadable, or one differs from the first in a shared key.
    """
    if not checkpoint_dirs:
        raise ValueError("no member checkpoints given; pass at least one")
    states = [load_checkpoint(directory) for directory in checkpoint_dirs]
    first = states[0]
    for directory, state in zip(checkpoint_dirs[1:], states[1:], strict=True):
        for key in (*SHARED_KEYS, "augment"):
            ours, theirs = _shared(state, key), _shared(first, key)
            if ours != theirs:
                raise ValueError(
                    f"{directory}: its {key} differs from that of {checkpoint_dirs[0]}; the members of an ensemble "
                    "must come from one experiment"
                )
    return states


def _shared(state: dict[str, Any], key: str) -> Any:
    """A key members must agree on; ``augment`` is read from the training config, with its default."""
    if key == "augment":
        return (state.get("train_config") or {}).get("augment", DEFAULT_AUGMENTATION)
    return state[key]


def labelled_batches(split: PatchSplit | LabelledBatches) -> LabelledBatches:
    """A labelled split as passes of batches: a split in memory is one batch; batches are taken as they are.

    Raises:
        ValueError: The split in memory has no labels.
    """
    if not isinstance(split, PatchSplit):
        return split
    if split.labels is None:
        raise ValueError("the test split has no labels to evaluate against")
    return lambda: [(split.pixels, split.labels)]


def _check_split(pixels: np.ndarray, labels: np.ndarray | None, metadata: PatchMetadata) -> None:
    """Refuse a batch without labels or of another patch shape than the checkpoints'."""
    if labels is None:
        raise ValueError("the test split has no labels to evaluate against")
    if pixels.shape[1:] != (metadata.num_bands, metadata.height, metadata.width):
        raise ValueError(
            f"test pixels have shape {pixels.shape[1:]}, the checkpoint expects "
            f"{(metadata.num_bands, metadata.height, metadata.width)}"
        )


def classification_metrics(truth: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, Cohen's kappa, per-class precision/recall/F1 and the confusion matrix."""
    # Imported here: prediction actors load this module for predict_probabilities and need no scikit-learn.
    from sklearn.metrics import (
        accuracy_score,
        cohen_kappa_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    labels = np.arange(len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)),
        "kappa": float(cohen_kappa_score(truth, predicted, labels=labels)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(truth, predicted, labels=labels).tolist(),
        "class_names": list(class_names),
    }


def confusion_metrics(confusion: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 of a confusion matrix (rows: true class, columns: predicted), as scikit-learn gives them.

    A class that is neither present nor predicted has F1 0 (scikit-learn's ``zero_division=0``), so counts
    accumulated batch by batch give the figures :func:`classification_metrics` gives for all the rows at once.
    """
    return {"accuracy": accuracy_from_confusion(confusion), "macro_f1": macro_f1_from_confusion(confusion)}


def evaluate_members(
    checkpoint_dirs: Sequence[str | os.PathLike], split: PatchSplit | LabelledBatches
) -> dict[str, Any]:
    """Evaluate an ensemble's checkpoints (the best member first) on a labelled split, in this process.

    Every member predicts every TTA view once; the variants are averages of those probabilities: ``single`` (the
    first member, identity view), ``ensemble`` (all members, identity view; only with two or more) and
    ``ensemble+tta`` (all members, all views; ``single+tta`` with one member). The top-level metrics are those of
    the last, the shipped default; ``variants`` holds accuracy, macro-F1 and kappa of each. A split given as batches
    is read batch by batch: only the labels and each variant's predicted classes are kept.

    Raises:
        ValueError: A checkpoint is unreadable, the members disagree, or the split does not match them.
    """
    started = time.perf_counter()
    states = read_members(checkpoint_dirs)
    metadata = PatchMetadata.from_json(states[0]["metadata"])
    augment, views = tta_views(states[0].get("train_config"), metadata)
    # The identity view leads; it is computed once when the group holds it (every group here does).
    elements = views if views[0] == NO_TTA[0] else np.concatenate([NO_TTA, views])
    models = [model_from_state(state) for state in states]
    stats = BandStats.from_dict(states[0]["band_stats"])
    ensemble = len(models) > 1
    truth: list[np.ndarray] = []
    predicted: dict[str, list[np.ndarray]] = {}
    for pixels, labels in labelled_batches(split)():
        _check_split(pixels, labels, metadata)
        probabilities = member_view_probabilities(models, pixels, stats, elements)  # (M, V, B, K)
        plain, tta = probabilities[:, 0], probabilities[:, len(elements) - len(views) :]
        candidates = {variant_name(False, False): plain[0]}
        if ensemble:
            candidates[variant_name(True, False)] = plain.mean(axis=0)
        candidates[variant_name(ensemble, True)] = tta.mean(axis=(0, 1))
        for name, p in candidates.items():
            predicted.setdefault(name, []).append(p.argmax(axis=1))
        truth.append(labels)
    if not truth:
        raise ValueError("the test split has no patches to evaluate")
    classes, truth_all = list(metadata.classes), np.concatenate(truth)
    scored = {name: classification_metrics(truth_all, np.concatenate(p), classes) for name, p in predicted.items()}
    default = variant_name(ensemble, True)
    metrics = dict(scored[default])
    metrics.update(
        variant=default,
        variants={name: {key: m[key] for key in VARIANT_METRICS} for name, m in scored.items()},
        tta_views={"augment": augment, "views": len(views)},
        checkpoint_epoch=int(states[0]["epoch"]),
        evaluation_seconds=time.perf_counter() - started,
    )
    return metrics


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """A short plain-text table: overall figures, then precision/recall/F1 per class."""
    lines = [
        f"test accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   kappa {metrics['kappa']:.4f}",
        f"{'class':<16}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
    ]
    for name, row in metrics["per_class"].items():
        lines.append(
            f"{name:<16}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['f1']:>10.3f}{row['support']:>10d}"
        )
    return "\n".join(lines)


def format_variants(metrics: dict[str, Any]) -> str:
    """One line per prediction variant of :func:`evaluate_members`: accuracy and macro-F1, the shipped one marked."""
    width = max(len(shown_variant(name)) for name in metrics["variants"])
    return "\n".join(
        f"{'*' if name == metrics['variant'] else ' '} {shown_variant(name):<{width}}  accuracy {m['accuracy']:.4f}"
        f"   macro-F1 {m['macro_f1']:.4f}"
        for name, m in metrics["variants"].items()
    )
