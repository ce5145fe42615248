"""Plain-PyTorch training and evaluation over in-memory numpy arrays, shared by the benchmark scripts (no Ray).

The fixed ResNet is trained here the way a Ray Train worker trains it, minus Ray: band statistics from the training
split, normalised pixels, a random D4 element per patch (:class:`data.pipeline.D4Collate`), the optimizer from
:func:`training.loop.build_optimizer` and the health-guarded step of :func:`training.loop.train_epoch` (skip
non-finite steps, clip to ``grad_clip``). The original model of the seed story goes through an unguarded loop, as
its user ran it.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from data.format import PatchDataset, PatchSplit, stratified_split
from data.pipeline import LABEL_COLUMN, PIXELS_COLUMN, BandStats, D4Collate, compute_band_stats, normalise
from serving.evaluate import classification_metrics
from training.config import TrainConfig
from training.loop import EVAL_BATCH_SIZE, build_model, build_optimizer, train_epoch

CPU = torch.device("cpu")


class AccuracyTracker(nn.Module):
    """Wraps a loss function and counts, on the way, how many of the model's outputs pick the right class.

    Passed as ``loss_fn`` to a training loop, it sees every batch's outputs and targets, so the loop itself needs
    no change to report training accuracy (on the augmented batches, in train mode, before each step).

    Args:
        loss_fn: The loss actually optimised.
    """

    def __init__(self, loss_fn: nn.Module) -> None:
        super().__init__()
        self.loss_fn = loss_fn
        self.correct = 0
        self.seen = 0

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Count correct predictions in ``outputs`` (N, K) against ``targets`` (N,) and return the wrapped loss."""
        self.correct += int((outputs.detach().argmax(dim=1) == targets).sum())
        self.seen += len(targets)
        return self.loss_fn(outputs, targets)

    @property
    def accuracy(self) -> float:
        """Share of correct predictions counted so far (NaN before any)."""
        return self.correct / self.seen if self.seen else math.nan


def iterate_batches(
    pixels: np.ndarray, labels: np.ndarray, batch_size: int, rng: np.random.Generator, augment: bool
) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled training batches in the loop's format, each patch moved by a random D4 element when ``augment``.

    Args:
        pixels: Patches, shape (N, C, H, W).
        labels: Class indices, shape (N,).
        batch_size: Patches per batch (the last batch may be smaller).
        rng: Source of the shuffle and of the augmentation's seed.
        augment: Apply D4 augmentation (:class:`data.pipeline.D4Collate`).

    Yields:
        Dicts with ``pixels`` (B, C, H, W) float32 and ``label`` (B,) int64 tensors.
    """
    order = rng.permutation(len(pixels))
    collate = D4Collate(seed=int(rng.integers(2**31))) if augment else None
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = {PIXELS_COLUMN: pixels[rows], LABEL_COLUMN: labels[rows]}
        if collate is not None:
            yield collate(batch)
        else:
            yield {
                PIXELS_COLUMN: torch.from_numpy(np.ascontiguousarray(batch[PIXELS_COLUMN], dtype=np.float32)),
                LABEL_COLUMN: torch.from_numpy(batch[LABEL_COLUMN].astype(np.int64)),
            }


def unguarded_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module, batches: Iterator[dict[str, torch.Tensor]]
) -> dict[str, float]:
    """One plain training pass (zero_grad, forward, loss, backward, step) with no clipping and no skipped steps.

    Returns:
        ``loss_sum`` and ``samples`` over all steps (a non-finite loss makes the sum non-finite, as the user saw),
        ``steps`` and ``skipped`` (always 0).
    """
    model.train()
    sums = {"loss_sum": 0.0, "samples": 0.0, "steps": 0.0, "skipped": 0.0}
    for batch in batches:
        x, y = batch[PIXELS_COLUMN], batch[LABEL_COLUMN]  # (B, C, H, W), (B,)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        sums["loss_sum"] += float(loss.detach()) * len(y)
        sums["samples"] += len(y)
        sums["steps"] += 1
    return sums


def fit_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    clip_norm: float | None,
    guarded: bool = True,
) -> dict[str, float]:
    """One training pass, returning the mean training loss and the training accuracy seen along the way.

    Args:
        model: The network, trained in place.
        optimizer: Its optimizer.
        loss_fn: The loss to optimise.
        batches: Training batches from :func:`iterate_batches`.
        clip_norm: Gradient-norm clip (guarded pass only); None disables it.
        guarded: Use the project's health-guarded step (:func:`training.loop.train_epoch`); false runs
            :func:`unguarded_epoch`.

    Returns:
        ``train_loss`` (mean over the applied steps; NaN if none), ``train_acc``, ``steps`` and ``skipped``.
    """
    tracker = AccuracyTracker(loss_fn)
    if guarded:
        sums = train_epoch(model, optimizer, tracker, batches, clip_norm, CPU)
    else:
        sums = unguarded_epoch(model, optimizer, tracker, batches)
    return {
        "train_loss": sums["loss_sum"] / sums["samples"] if sums["samples"] else math.nan,
        "train_acc": tracker.accuracy,
        "steps": int(sums["steps"]),
        "skipped": int(sums["skipped"]),
    }


@torch.no_grad()
def predict(model: nn.Module, pixels: np.ndarray, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """Predicted class indices, shape (N,), for (already normalised, if the model needs it) pixels (N, C, H, W)."""
    model.eval()
    out = [
        model(torch.from_numpy(np.array(pixels[start : start + batch_size], dtype=np.float32)))  # a writable copy
        .argmax(dim=1)
        .numpy()
        for start in range(0, len(pixels), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def accuracy(model: nn.Module, pixels: np.ndarray, labels: np.ndarray) -> float:
    """Eval-mode accuracy of ``model`` on a labelled array of patches."""
    return float(np.mean(predict(model, pixels) == labels))


@dataclass
class NormalisedData:
    """A dataset's splits normalised with its training split's band statistics, as arrays.

    Attributes:
        stats: Band statistics of the training split.
        pixels: Normalised pixels by split name, each (N, C, H, W) float32.
        labels: Class indices by split name, each (N,).
    """

    stats: BandStats
    pixels: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]

    @classmethod
    def from_dataset(cls, dataset: PatchDataset) -> NormalisedData:
        """Compute the training statistics and normalise every labelled split with them."""
        stats = compute_band_stats(dataset.train.pixels)
        splits: dict[str, PatchSplit] = {k: s for k, s in dataset.splits.items() if s.labels is not None}
        return cls(
            stats=stats,
            pixels={name: normalise(split.pixels, stats) for name, split in splits.items()},
            labels={name: np.asarray(split.labels, dtype=np.int64) for name, split in splits.items()},
        )


@dataclass
class TrainResult:
    """What :func:`train_resnet` measured.

    Attributes:
        history: One dict per epoch run (fewer than asked when a time budget stopped the run): ``epoch``,
            ``train_loss``, ``train_acc``, ``val_acc`` (NaN when validation is off), ``skipped``, ``seconds``
            (training pass only).
        best_epoch: Epoch whose weights were evaluated on test (the best by validation accuracy, or the last).
        test: :func:`serving.evaluate.classification_metrics` on the test split.
        parameters: Trainable parameter count.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    test: dict[str, Any] = field(default_factory=dict)
    parameters: int = 0


def train_resnet(
    dataset: PatchDataset,
    data: NormalisedData,
    cfg: TrainConfig,
    *,
    upsample_to: int | None = None,
    select_best: bool = True,
    on_epoch: Callable[[dict[str, float], nn.Module], None] | None = None,
    budget_s: float | None = None,
) -> TrainResult:
    """Train the fixed ResNet in this process for ``cfg.epochs`` epochs with ``cfg.seed`` and evaluate it on test.

    Args:
        dataset: The dataset (its metadata gives the model's shape and class names).
        data: Its normalised arrays.
        cfg: Optimizer, batch size, epochs, seed, clipping, label smoothing, width and dropout.
        upsample_to: Build the model with this ``ResNetConfig.upsample_to`` (None: native resolution).
        select_best: Evaluate validation accuracy after every epoch and test the best epoch's weights; false skips
            validation and tests the last epoch's weights.
        on_epoch: Called after every epoch with that epoch's record and the model (for progress output or extra
            evaluations; the model is in train mode when it returns).
        budget_s: Stop before ``cfg.epochs`` when one more epoch, at the median epoch time so far, would take the
            training passes past this many seconds (None: no limit). At least one epoch always runs.

    Returns:
        The per-epoch history, the tested epoch, test metrics and the parameter count.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model, _ = build_model(dataset.metadata, cfg, upsample_to)  # as the Train workers build it
    optimizer = build_optimizer(model, cfg)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    result = TrainResult(parameters=sum(p.numel() for p in model.parameters() if p.requires_grad))
    best_acc, best_state = -1.0, None
    train_x, train_y = data.pixels["train"], data.labels["train"]
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        batches = iterate_batches(train_x, train_y, cfg.batch_size, rng, augment=True)
        record: dict[str, float] = {"epoch": epoch, **fit_epoch(model, optimizer, loss_fn, batches, cfg.clip_norm)}
        record["seconds"] = time.perf_counter() - started
        record["val_acc"] = accuracy(model, data.pixels["val"], data.labels["val"]) if select_best else math.nan
        if select_best and record["val_acc"] > best_acc:
            best_acc, best_state, result.best_epoch = record["val_acc"], copy.deepcopy(model.state_dict()), epoch
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(record, model)
        spent = [r["seconds"] for r in result.history]
        if budget_s is not None and sum(spent) + statistics.median(spent) > budget_s:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        result.best_epoch = len(result.history)
    predicted = predict(model, data.pixels["test"])
    result.test = classification_metrics(data.labels["test"], predicted, list(dataset.metadata.classes))
    return result


def subset(dataset: PatchDataset, sizes: dict[str, int], seed: int = 0) -> PatchDataset:
    """A copy of ``dataset`` whose named splits keep only about ``sizes[name]`` patches, stratified by class.

    Quick modes use it to stay within their time budget; splits not named (or already small enough) are kept whole.
    """
    splits = {}
    for name, split in dataset.splits.items():
        size = sizes.get(name)
        if size is None or size >= len(split) or split.labels is None:
            splits[name] = split
            continue
        keep, _ = stratified_split(split.labels, (size / len(split), 1 - size / len(split)), seed)
        splits[name] = split.take(keep)
    return PatchDataset(metadata=dataset.metadata, splits=splits)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], left: Sequence[int] = (0,)) -> str:
    """A plain-text table with column widths fitted to the cells.

    Args:
        headers: Column titles.
        rows: Cells, one sequence per row (any values; they are printed with ``str``).
        left: Indices of the columns aligned left (negative counts from the end); the others align right.
    """
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lefts = {i % len(headers) for i in left}
    lines = []
    for index, row in enumerate(cells):
        parts = [
            cell.ljust(w) if i in lefts else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)
