"""Test-split evaluation of a checkpoint with scikit-learn's metrics, its printed table, and atomic JSON output."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.atomic import write_file_atomic
from data.format import PatchMetadata, PatchSplit
from data.pipeline import BandStats, normalise
from resnet import ResNet, ResNetConfig
from workflows.loop import load_checkpoint

TEST_METRICS_FILE = "test_metrics.json"
PREDICT_BATCH_SIZE = 1024


def model_from_state(state: dict[str, Any]) -> ResNet:
    """Rebuild the network of a checkpoint or bundle state, in eval mode."""
    model = ResNet(ResNetConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    return model.eval()


@torch.no_grad()
def predict_probabilities(model: ResNet, pixels: np.ndarray, stats: BandStats) -> np.ndarray:
    """Class probabilities, shape (N, K), for raw pixels (N, C, H, W), normalised with ``stats``."""
    model.eval()
    out = []
    for start in range(0, len(pixels), PREDICT_BATCH_SIZE):
        x = torch.from_numpy(normalise(pixels[start : start + PREDICT_BATCH_SIZE], stats))
        out.append(torch.softmax(model(x), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.num_classes), dtype=np.float32)


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


def evaluate_checkpoint(checkpoint_dir: str | os.PathLike, split: PatchSplit) -> dict[str, Any]:
    """Evaluate a training checkpoint on a labelled split, in this process (no Ray needed).

    Raises:
        ValueError: The checkpoint is unreadable or the split does not match it.
    """
    state = load_checkpoint(checkpoint_dir)
    metadata = PatchMetadata.from_json(state["metadata"])
    if split.labels is None:
        raise ValueError("the test split has no labels to evaluate against")
    if split.pixels.shape[1:] != (metadata.num_bands, metadata.height, metadata.width):
        raise ValueError(
            f"test pixels have shape {split.pixels.shape[1:]}, the checkpoint expects "
            f"{(metadata.num_bands, metadata.height, metadata.width)}"
        )
    model = model_from_state(state)
    probabilities = predict_probabilities(model, split.pixels, BandStats.from_dict(state["band_stats"]))
    metrics = classification_metrics(split.labels, probabilities.argmax(axis=1), list(metadata.classes))
    metrics["checkpoint_epoch"] = int(state["epoch"])
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


def write_json_atomic(path: str | os.PathLike, body: Any) -> Path:
    """Write JSON to a temporary file in the same folder and rename it over ``path`` (mode as the umask gives)."""
    text = json.dumps(body, indent=2, sort_keys=False) + "\n"
    return write_file_atomic(path, lambda handle: handle.write(text.encode()))
