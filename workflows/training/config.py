"""Training configuration: one frozen dataclass whose defaults the entry scripts' flags read."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.atomic import check_creatable
from data.pipeline import AUGMENTATIONS, DEFAULT_AUGMENTATION
from data.storage import Location, check_apart, check_reachable, is_uri, locate

# The hyperparameters population-based training mutates, named once. After a checkpoint is loaded, the worker
# re-applies these from its own config so that an exploited trial trains with its mutated values.
LR = "lr"
GRAD_CLIP = "grad_clip"

OPTIMIZERS = ("adamw", "sgd")
# The reported metrics a run's checkpoints (and PBT's members) can be ranked by, and whether each is maximised.
RANKABLE_METRICS = {"val_acc": "max", "val_macro_f1": "max", "val_loss": "min", "train_loss": "min"}
# Validation accuracy: what a user of the classifier cares about, and the ranking the product always used.
DEFAULT_METRIC = "val_acc"


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs besides the data.

    Attributes:
        optimizer: ``adamw`` (robust default for a small dataset) or ``sgd`` (with momentum).
        lr: Learning rate; PBT mutates it.
        grad_clip: Maximum global gradient norm; None (or 0) disables clipping; PBT mutates it.
        momentum: SGD momentum (ignored by AdamW).
        weight_decay: Decoupled weight decay; 588 patches overfit quickly without it.
        label_smoothing: Softens one-hot targets, which helps on overlapping classes.
        epochs: Passes over the training split.
        batch_size: Global batch size, split evenly across workers.
        seed: Seeds model initialisation and anything else random in the worker.
        num_workers: Ray Train workers (data-parallel replicas).
        gpu: Put each worker on a GPU.
        cpus_per_worker: CPUs reserved by each worker; also its torch thread count.
        channels: Width of the ResNet (stem channels).
        dropout: Dropout at the end of each residual block (the head has its own, ``ResNetConfig.head_dropout``).
        checkpoint_every: Report a checkpoint every this many epochs (PBT aligns its perturbation interval).
        keep_checkpoints: How many checkpoints Ray keeps (the best by ``metric``).
        metric: The reported metric checkpoints are ranked by (which Ray keeps, which is best), one of
            ``RANKABLE_METRICS``; PBT ranks its members by the same one.
        mode: ``max`` or ``min``: whether a higher ``metric`` is better; None (the default) takes the metric's own
            direction from ``RANKABLE_METRICS``.
        augment: Training augmentation group, one of ``AUGMENTATIONS``: ``d4`` (all 8 flips and rotations; the
            default, as overhead land cover has no up), ``flips`` (the 4 that keep the axes, for data whose class
            changes under a quarter turn) or ``none``.
    """

    optimizer: str = "adamw"
    lr: float = 2e-3
    grad_clip: float | None = 5.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    epochs: int = 40
    batch_size: int = 64
    seed: int = 0
    num_workers: int = 2
    gpu: bool = False
    cpus_per_worker: float = 1.0
    channels: int = 64
    dropout: float = 0.1
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    augment: str = DEFAULT_AUGMENTATION
    metric: str = DEFAULT_METRIC
    mode: str | None = None  # None: the metric's own direction (RANKABLE_METRICS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", resolved_mode(self.metric, self.mode))  # frozen: resolved once, here
        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.metric not in RANKABLE_METRICS:
            problems.append(f"metric must be one of {', '.join(RANKABLE_METRICS)}, got {self.metric!r}")
        if self.mode not in ("max", "min"):
            problems.append(f"mode must be max or min, got {self.mode!r}")
        if self.augment not in AUGMENTATIONS:
            problems.append(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be a finite number > 0, got {self.lr}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            problems.append(f"grad_clip must be a finite number >= 0 (0 or None: no clipping), got {self.grad_clip}")
        for name in ("epochs", "batch_size", "num_workers", "channels", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size < self.num_workers:
            problems.append(f"batch_size ({self.batch_size}) must be at least num_workers ({self.num_workers})")
        if not 0 <= self.dropout < 1 or not 0 <= self.label_smoothing < 1:
            problems.append("dropout and label_smoothing must lie in [0, 1)")
        for name in ("momentum", "weight_decay", "cpus_per_worker"):
            if not math.isfinite(getattr(self, name)):
                problems.append(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.weight_decay < 0 or self.cpus_per_worker <= 0:
            problems.append("weight_decay must be >= 0 and cpus_per_worker > 0")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the Ray boundary."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed; a new ``metric`` without a ``mode`` takes its own direction."""
        if "metric" in changes:
            changes.setdefault("mode", None)
        return dataclasses.replace(self, **changes)

    @property
    def clip_norm(self) -> float | None:
        """The clipping norm, or None when clipping is off."""
        return self.grad_clip if self.grad_clip else None


def resolved_mode(metric: str, mode: str | None) -> str:
    """``mode`` as given, or for None the metric's own direction (``max`` for a metric this version does not know)."""
    return mode if mode is not None else RANKABLE_METRICS.get(metric, "max")


def ranking_score(metrics: Mapping[str, Any], metric: str, mode: str) -> float:
    """How good ``metrics`` are by ``metric``, higher being better in either mode; missing or non-finite is -inf.

    Args:
        metrics: One report.
        metric: The ranking metric (a key of ``RANKABLE_METRICS``).
        mode: ``max`` or ``min``.
    """
    value = metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return -math.inf
    return float(value) if mode == "max" else -float(value)


def results_location(results: str | None, prefix: str, data: str | os.PathLike) -> Location:
    """The ``--results`` folder (default ``results/<prefix>-<time>``), refused before any work starts.

    A local folder must be creatable; an object-store URI's bucket must exist and let us in; the folder must neither
    be nor lie inside the ``--data`` folder, nor hold it.

    Raises:
        OutputLocationError: A part of the local folder's path is a file, or it cannot be written.
        StorageError: The object store's bucket does not exist or refuses access, or the folder and ``--data``
            overlap.
    """
    if is_uri(results):
        location = locate(results, "--results")
        check_reachable(location, "--results")
    else:
        folder = Path(results) if results else Path("results") / time.strftime(f"{prefix}-%Y%m%d-%H%M%S")
        check_creatable(folder.resolve(), "--results", folder=True)
        location = locate(folder)
    check_apart(location, "--results", locate(data, "--data"), "--data")
    return location
