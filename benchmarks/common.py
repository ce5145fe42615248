"""Plain-PyTorch training, evaluation and batch prediction, and predict.py as a subprocess, shared by the benchmarks.

The fixed ResNet is trained here the way a Ray Train worker trains it, minus Ray: band statistics from the training
split, normalised pixels, a random D4 element per patch (:class:`data.pipeline.D4Collate`), the optimizer from
:func:`workflows.training.loop.build_optimizer` and the health-guarded step of
:func:`workflows.training.loop.train_epoch` (skip
non-finite steps, clip to ``grad_clip``). The original model of the seed story goes through an unguarded loop, as
its user ran it. Plain batched prediction (:func:`plain_predict`) is what ``workflows/predict.py`` is compared with;
:func:`predict_command` and :func:`predict_summary` run that script and read its figures.
"""

from __future__ import annotations

import copy
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from data.format import PIXELS, PatchDataset, PatchSplit
from data.pipeline import LABEL_COLUMN, MIN_STD, PIXELS_COLUMN, BandStats, D4Collate, normalise
from data.reading import check_rows, read_file_info
from data.splitting import stratified_split
from workflows.serving.bundle import load_bundle
from workflows.serving.evaluate import classification_metrics
from workflows.training.config import TrainConfig
from workflows.training.loop import EVAL_BATCH_SIZE, build_model, build_optimizer, train_epoch

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]
PREDICT_SCRIPT = ROOT / "workflows" / "predict.py"
# predict.py's summary line: "... (Ray start-up 3.2 s, inference 12.5 s, ...".
PREDICT_SUMMARY = re.compile(r"Ray start-up ([\d.]+) s, inference ([\d.]+) s")


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
        guarded: Use the project's health-guarded step (:func:`workflows.training.loop.train_epoch`); false runs
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
        stats = band_stats(dataset.train.pixels)
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
        test: :func:`workflows.serving.evaluate.classification_metrics` on the test split.
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


def median_after_warmup(seconds: Sequence[float]) -> float:
    """Median of the epoch times without the first (warm-up) epoch; the only one when there is just one."""
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def plain_predict(
    data_file: Path,
    bundle_dir: Path,
    repeats: int = 1,
    chunk_rows: int | None = None,
    tta: bool | None = None,
) -> tuple[float, float]:
    """Seconds of plain in-process inference over a Parquet file of patches, without and with reading it.

    The bundle's own batched forward (normalise, then batches of ``workflows.serving.evaluate.PREDICT_BATCH_SIZE``) on
    the
    torch threads this process has, no Ray. The file is read and checked (:func:`data.format.check_rows`, as
    predict.py checks its blocks) ``chunk_rows`` rows at a time, so memory stays bounded at any size; each chunk's
    inference counts its best of ``repeats`` runs (on a shared machine other processes only ever slow a run down).

    Args:
        data_file: The Parquet file.
        bundle_dir: The model bundle.
        repeats: Inference runs per chunk.
        chunk_rows: Rows read at a time (None: the whole file at once).
        tta: Average over the bundle's test-time augmentation views (None: the bundle's mode).

    Returns:
        Inference seconds, and inference plus reading and checking seconds.
    """
    bundle = load_bundle(bundle_dir)
    info = read_file_info(data_file, require_labels=False)
    rows = chunk_rows or info.num_rows
    inference = reading = 0.0
    started = time.perf_counter()
    for batch in pq.ParquetFile(data_file).iter_batches(batch_size=rows, columns=[PIXELS]):
        pixels, _ = check_rows(pa.Table.from_batches([batch]), data_file, info.metadata)  # (B, C, H, W)
        reading += time.perf_counter() - started
        best = math.inf
        for _ in range(repeats):
            started = time.perf_counter()
            bundle.predict_probabilities(pixels, tta=tta)
            best = min(best, time.perf_counter() - started)
        inference += best
        started = time.perf_counter()
    return inference, inference + reading


def predict_command(data_file: Path, bundle_dir: Path, output: Path, *extra: str) -> list[str]:
    """The command line of ``workflows/predict.py`` on its own private local Ray cluster (``--address local``)."""
    args = ["--model", bundle_dir, "--input", data_file, "--output", output, "--address", "local", *extra]
    return [sys.executable, str(PREDICT_SCRIPT), *map(str, args)]


def predict_summary(stdout: str) -> tuple[float, float]:
    """Ray start-up and inference seconds from predict.py's summary line.

    Raises:
        RuntimeError: The output has no summary line.
    """
    found = PREDICT_SUMMARY.search(stdout)
    if found is None:
        raise RuntimeError(f"predict.py printed no summary line:\n{stdout[-2000:]}")
    return float(found.group(1)), float(found.group(2))


def run_predict(data_file: Path, bundle_dir: Path, output: Path, *extra: str) -> tuple[float, float, float]:
    """predict.py as a subprocess with its own local Ray: (whole run, Ray start-up, inference) seconds.

    The subprocess imports this checkout's packages (its root first on ``PYTHONPATH``).

    Raises:
        RuntimeError: predict.py failed or printed no summary.
    """
    started = time.perf_counter()
    result = subprocess.run(
        predict_command(data_file, bundle_dir, output, *extra),
        cwd=ROOT,
        env=checkout_env(),
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"predict.py failed:\n{result.stderr[-3000:]}")
    return (elapsed, *predict_summary(result.stdout))


def checkout_env() -> dict[str, str]:
    """This process's environment with the checkout's root first on ``PYTHONPATH``.

    A subprocess (and the Ray workers it starts) then runs this checkout's code, not another copy of the project
    installed in the environment.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def band_stats(pixels: np.ndarray) -> BandStats:
    """Per-band statistics of pixels (N, C, H, W) held in memory: what the jobs stream, for the plain PyTorch side."""
    values = np.asarray(pixels, dtype=np.float64)
    return BandStats(mean=values.mean(axis=(0, 2, 3)), std=np.maximum(values.std(axis=(0, 2, 3)), MIN_STD))


def in_memory_inputs(dataset: PatchDataset) -> Any:
    """The jobs' inputs built from arrays in this process: the scale benchmark's reference for the streaming path.

    Every split's pixels in this process, statistics from them, Ray datasets made from the normalised arrays
    (materialised in blocks, the training split in a shuffled block order, as the streaming path keeps a split that
    fits the object store), the test split and the baselines in memory.
    """
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    from data.streaming import DEFAULT_BLOCKS
    from workflows.jobs.inputs import JobInputs
    from workflows.serving.baselines import BaselineData
    from workflows.serving.evaluate import labelled_batches

    stats = band_stats(dataset.train.pixels)
    rows = {name: len(split) for name, split in dataset.splits.items()}
    datasets = {}
    for name in ("train", "val"):
        split = dataset.splits[name]
        table = pa.table(
            {
                PIXELS_COLUMN: ArrowTensorArray.from_numpy(normalise(split.pixels, stats)),
                LABEL_COLUMN: pa.array(split.labels, type=pa.int64()),
            }
        )
        ds = ray.data.from_arrow(table).repartition(min(DEFAULT_BLOCKS, len(split))).materialize()
        datasets[name] = ds.randomize_block_order() if name == "train" else ds
    test = labelled_batches(dataset.test)
    return JobInputs(dataset.metadata, rows, stats, datasets, test, BaselineData.from_dataset(dataset))
