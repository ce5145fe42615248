"""Test-split evaluation of checkpoints alone, as an ensemble and with test-time augmentation; lines and JSON output.

An ensemble averages its members' softmax probabilities; test-time augmentation (TTA) averages them over the views of
the augmentation group the members were trained with (``train_config["augment"]``; D4, all 8 flips/rotations, when
a checkpoint does not say). :func:`evaluate_members` streams the test rows through Ray Data model actors
(:func:`workflows.inference.score_members`) and computes every metric from summed confusion counts, so the driver
holds no test pixels.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.data

from data.atomic import write_file_atomic
from data.format import PatchMetadata, PatchSplit, to_table
from data.pipeline import DEFAULT_AUGMENTATION, BandStats
from workflows.cluster import cluster_cpus, cluster_gpus, connect
from workflows.inference import (
    DEFAULT_RESOURCES,
    NO_TTA,
    PREDICT_BATCH_SIZE,
    ActorResources,
    Variant,
    model_from_state,
    predict_probabilities,
    score_members,
    tta_views,
)
from workflows.loop import load_checkpoint
from workflows.patch_stream import BlockCheck, input_error
from workflows.predictions import confusion_counts

TEST_METRICS_FILE = "test_metrics.json"
# What messages about the rows of an in-memory test split (or a Ray dataset of it) call it.
TEST_SPLIT = "test split"
# How a trained population predicts: its best member alone or all its members, each without or with TTA.
SINGLE, ENSEMBLE, TTA_SUFFIX = "single", "ensemble", "+tta"
# The figures kept of each variant beside the shipped one's full metrics.
VARIANT_METRICS = ("accuracy", "macro_f1", "kappa")
# Checkpoint keys that every member of an ensemble must share: one network shape, one input scaling, one meaning.
SHARED_KEYS = ("model_config", "band_stats", "metadata")


def variant_name(ensemble: bool, tta: bool) -> str:
    """The key of a prediction variant: ``single``, ``ensemble``, ``single+tta`` or ``ensemble+tta``."""
    return (ENSEMBLE if ensemble else SINGLE) + (TTA_SUFFIX if tta else "")


def shown_variant(name: str) -> str:
    """A variant's key as the summaries print it (``ensemble+TTA``)."""
    return name.replace(TTA_SUFFIX, TTA_SUFFIX.upper())


def rank_members(final: Mapping[str, Mapping[str, Any]], metric: str, mode: str) -> list[str]:
    """The members an ensemble is made of, best first: those not diverged at their last report, else the best one.

    Args:
        final: Each member's last report (with ``diverged`` and ``metric``), by trial id.
        metric: The ranking metric; a missing or non-finite value ranks last.
        mode: ``max`` or ``min``.

    Returns:
        Trial ids, best first; ties keep the order of ``final``.
    """

    def rank(trial_id: str) -> float:
        value = final[trial_id].get(metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return math.inf
        return -value if mode == "max" else value

    ranked = sorted(final, key=rank)
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


def _check_split(split: PatchSplit, metadata: PatchMetadata) -> None:
    """Refuse a split without labels or of another patch shape than the checkpoints'."""
    if split.labels is None:
        raise ValueError("the test split has no labels to evaluate against")
    if split.pixels.shape[1:] != (metadata.num_bands, metadata.height, metadata.width):
        raise ValueError(
            f"test pixels have shape {split.pixels.shape[1:]}, the checkpoint expects "
            f"{(metadata.num_bands, metadata.height, metadata.width)}"
        )


def classification_metrics(truth: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, Cohen's kappa, per-class precision/recall/F1 and the confusion matrix."""
    return metrics_from_confusion(confusion_counts(truth, predicted, len(class_names)), class_names)


def metrics_from_confusion(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """:func:`classification_metrics` of the rows a confusion matrix counts, from the counts alone.

    scikit-learn computes them on the K x K (truth, prediction) pairs weighted by their counts, which gives the same
    figures as on the rows themselves: every sum it forms is of whole numbers, exact in floating point.

    Args:
        confusion: Counts (K, K), rows the true class, columns the predicted one.
        class_names: The K class names, in index order.
    """
    # Imported here: scikit-learn is needed only once the counts are in.
    from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, precision_recall_fscore_support

    counts = np.asarray(confusion, dtype=np.int64)
    labels = np.arange(len(class_names))
    truth, predicted = np.repeat(labels, len(labels)), np.tile(labels, len(labels))
    weights = counts.reshape(-1).astype(np.float64)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, sample_weight=weights, zero_division=0
    )
    macro_f1 = f1_score(truth, predicted, labels=labels, average="macro", sample_weight=weights, zero_division=0)
    return {
        "accuracy": float(accuracy_score(truth, predicted, sample_weight=weights)),
        "macro_f1": float(macro_f1),
        "kappa": float(cohen_kappa_score(truth, predicted, labels=labels, sample_weight=weights)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": counts.tolist(),
        "class_names": list(class_names),
    }


def prediction_variants(members: int, views: int, elements: int) -> list[Variant]:
    """How a population of ``members`` predicts, each variant a mean over members and views, the shipped one last.

    ``single`` is the first member on the identity view (view 0), ``ensemble`` all members on it (only with two or
    more), and ``ensemble+tta`` (``single+tta`` with one member) all members on the last ``views`` of ``elements``
    views (the TTA group, which holds the identity).
    """
    plain, tta = slice(0, 1), slice(elements - views, elements)
    ensemble = members > 1
    variants = [Variant(variant_name(False, False), slice(0, 1), plain)]
    if ensemble:
        variants.append(Variant(variant_name(True, False), slice(0, members), plain))
    variants.append(Variant(variant_name(ensemble, True), slice(0, members), tta))
    return variants


def evaluate_checkpoint(checkpoint_dir: str | os.PathLike, split: PatchSplit) -> dict[str, Any]:
    """Evaluate one training checkpoint on a labelled split, without TTA, in this process (no Ray needed).

    Raises:
        ValueError: The checkpoint is unreadable or the split does not match it.
    """
    state = load_checkpoint(checkpoint_dir)
    metadata = PatchMetadata.from_json(state["metadata"])
    _check_split(split, metadata)
    stats = BandStats.from_dict(state["band_stats"])
    probabilities = predict_probabilities(model_from_state(state), split.pixels, stats)
    metrics = classification_metrics(split.labels, probabilities.argmax(axis=1), list(metadata.classes))
    metrics["checkpoint_epoch"] = int(state["epoch"])
    return metrics


def evaluate_members(
    checkpoint_dirs: Sequence[str | os.PathLike],
    split: PatchSplit | ray.data.Dataset,
    *,
    concurrency: int | None = None,
    resources: ActorResources = DEFAULT_RESOURCES,
) -> dict[str, Any]:
    """Evaluate an ensemble's checkpoints (the best member first) on a labelled split, streamed through Ray Data.

    Every member predicts every TTA view once; the variants are averages of those probabilities: ``single`` (the
    first member, identity view), ``ensemble`` (all members, identity view; only with two or more) and
    ``ensemble+tta`` (all members, all views; ``single+tta`` with one member). The top-level metrics are those of
    the last, the shipped default; ``variants`` holds accuracy, macro-F1 and kappa of each. Model actors compute
    each batch's confusion counts; the driver sums them and holds no pixels.

    Args:
        checkpoint_dirs: The members' checkpoint folders, best first.
        split: A Ray dataset of raw format rows (``patch_id``, ``pixels`` as the flat band-major float32 list the
            Parquet files store, ``label`` class names), or an in-memory split (sent to Ray as such a dataset).
        concurrency: Model actors (default: as many as the cluster holds at once, at most one per batch).
        resources: What each actor holds.

    Raises:
        ValueError: A checkpoint is unreadable, the members disagree, or the split does not match them (a
            :class:`data.format.PatchFormatError` naming the row's patch id, for a dataset).
    """
    started = time.perf_counter()
    states = read_members(checkpoint_dirs)
    metadata = PatchMetadata.from_json(states[0]["metadata"])
    augment, views = tta_views(states[0].get("train_config"), metadata)
    # The identity view leads; it is computed once when the group holds it (every group here does).
    elements = views if views[0] == NO_TTA[0] else np.concatenate([NO_TTA, views])
    if not ray.is_initialized():
        connect()
    rows, limit = split, math.inf
    if isinstance(split, PatchSplit):
        _check_split(split, metadata)
        table = to_table(split, metadata)
        # Blocks cut where in-process batches were cut (PREDICT_BATCH_SIZE): the same forward passes, the same figures.
        blocks = [table.slice(start, PREDICT_BATCH_SIZE) for start in range(0, len(table), PREDICT_BATCH_SIZE)]
        rows, limit = ray.data.from_arrow(blocks), len(blocks)
    pool = concurrency or min(resources.pool_size(cluster_cpus(), cluster_gpus()), limit)
    check = BlockCheck(TEST_SPLIT, metadata, labelled=True)
    variants = prediction_variants(len(states), len(views), len(elements))
    try:
        counts = score_members(rows, check, states, elements, variants, concurrency=pool, resources=resources)
    except Exception as err:  # noqa: BLE001 - only the rows' own problems are turned into one line
        raise input_error(err, TEST_SPLIT) from None
    classes = list(metadata.classes)
    scored = {v.name: metrics_from_confusion(c, classes) for v, c in zip(variants, counts, strict=True)}
    default = variants[-1].name
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


def write_json_atomic(path: str | os.PathLike, body: Any) -> Path:
    """Write JSON to a temporary file in the same folder and rename it over ``path`` (mode as the umask gives)."""
    text = json.dumps(body, indent=2, sort_keys=False) + "\n"
    return write_file_atomic(path, lambda handle: handle.write(text.encode()))
