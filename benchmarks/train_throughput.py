"""Print seconds per epoch of the Ray training pipeline beside a plain in-memory PyTorch loop, and their ratios.

Both sides train the same ResNet (``TrainConfig`` defaults: width, batch size, AdamW, clipping) on the same
normalised patches with the same D4 augmentation and the same per-step health guards
(``workflows.training.loop.train_epoch``), and both validate after every epoch. The Ray side is the real code:
``workflows.training.launch.run_training`` with the Ray Data feed the jobs build from the dataset folder (the large
size is written to a temporary one first) and Ray Train workers, once with 1 worker x 2 CPUs and once with 2 workers
x 1 CPU; its per-epoch figure is the median of the reported ``epoch_seconds`` without epoch 1 (warm-up). The plain
side runs in this process with ``torch.set_num_threads(2)``. Wall times include Ray start-up of each run (not the
cluster's).

With ``--accuracy`` it instead trains ``workflows/train.py``'s defaults (``TrainConfig()``, 2 workers) for seeds
0, 1 and 2 on the default dataset and prints the test accuracy of each best checkpoint, and their mean and sd.

Example:
    python benchmarks/train_throughput.py              # 588 patches x 5 epochs and 50,000 x 3
    python benchmarks/train_throughput.py --quick      # 588 x 3 and 5,000 x 2
    python benchmarks/train_throughput.py --accuracy   # 3 seeds of the default training run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import band_stats, median_after_warmup  # noqa: E402
from data import DEFAULT_DATASET_DIR  # noqa: E402
from data.folder import read_dataset  # noqa: E402
from data.format import PatchDataset  # noqa: E402
from data.pipeline import LABEL_COLUMN, PIXELS_COLUMN, BandStats, D4Collate, normalise  # noqa: E402
from data.synthetic import generate  # noqa: E402
from data.writing import write_dataset  # noqa: E402
from workflows.jobs.inputs import build_inputs, open_inputs  # noqa: E402
from workflows.serving.evaluate import evaluate_members  # noqa: E402
from workflows.training.cluster import connect  # noqa: E402
from workflows.training.config import TrainConfig  # noqa: E402
from workflows.training.launch import run_training, unique_run_name  # noqa: E402
from workflows.training.loop import (  # noqa: E402
    EVAL_BATCH_SIZE,
    build_model,
    build_optimizer,
    epoch_metrics,
    evaluate_shard,
    train_epoch,
)

CPUS = 2  # the cluster this script starts, and the plain loop's torch threads
LARGE_COUNTS = {"train": 50_000, "val": 2_000, "test": 700}
QUICK_LARGE_COUNTS = {"train": 5_000, "val": 200, "test": 70}
FULL_EPOCHS = {"small": 5, "large": 3}
QUICK_EPOCHS = {"small": 3, "large": 2}
TARGET_RATIO = 1.5  # the target: Ray per-epoch time at most this many times plain, at 50,000 patches
ACCURACY_SEEDS = (0, 1, 2)
QUICK_ACCURACY_EPOCHS = 3
SYNTHETIC_SEED = 0
# (label, workers, CPUs per worker) of the Ray layouts measured.
LAYOUTS = (("Ray 1x2", 1, 2.0), ("Ray 2x1", 2, 1.0))


@dataclass
class Timing:
    """Seconds per epoch (median without epoch 1) and whole-run wall time of one way of training."""

    per_epoch: float
    wall: float
    epochs: list[float]


def _batches(pixels: np.ndarray, labels: np.ndarray, batch_size: int, order: np.ndarray, collate: Any) -> Any:
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield collate({PIXELS_COLUMN: pixels[rows], LABEL_COLUMN: labels[rows]})


def _eval_batches(pixels: np.ndarray, labels: np.ndarray) -> Any:
    for start in range(0, len(pixels), EVAL_BATCH_SIZE):
        yield {
            PIXELS_COLUMN: torch.from_numpy(pixels[start : start + EVAL_BATCH_SIZE]),
            LABEL_COLUMN: torch.from_numpy(labels[start : start + EVAL_BATCH_SIZE]),
        }


def plain_training(dataset: PatchDataset, stats: BandStats, cfg: TrainConfig, threads: int = CPUS) -> Timing:
    """Train in this process without Ray: shuffle, D4-augment, guarded steps, then validate, every epoch.

    Args:
        dataset: The dataset (train and val splits are used).
        stats: Band statistics of the training split.
        cfg: The run's settings (epochs, batch size, optimizer, clipping, width, seed).
        threads: Torch threads.

    Returns:
        The per-epoch seconds (train and validation, as Ray's ``epoch_seconds``) and the wall time including
        normalisation and building the model.
    """
    started = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    train_x = normalise(dataset.train.pixels, stats)  # (N, C, H, W)
    train_y = dataset.train.labels.astype(np.int64)
    val_x = normalise(dataset.val.pixels, stats)
    val_y = dataset.val.labels.astype(np.int64)
    model, _ = build_model(dataset.metadata, cfg)
    optimizer = build_optimizer(model, cfg)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    eval_loss_fn = nn.CrossEntropyLoss()
    device = torch.device("cpu")
    epochs = []
    for epoch in range(1, cfg.epochs + 1):
        epoch_started = time.perf_counter()
        order = np.random.default_rng(cfg.seed * 1_000_003 + epoch).permutation(len(train_x))
        batches = _batches(train_x, train_y, cfg.batch_size, order, D4Collate(seed=cfg.seed * 1_000_003 + epoch))
        sums = train_epoch(model, optimizer, loss_fn, batches, cfg.clip_norm, device)
        val_loss, val_count, confusion = evaluate_shard(
            model, eval_loss_fn, _eval_batches(val_x, val_y), dataset.metadata.num_classes, 0, 1
        )
        metrics = epoch_metrics(epoch, sums, val_loss, val_count, confusion, cfg)
        epochs.append(time.perf_counter() - epoch_started)
        if metrics["diverged"]:
            print(f"  note: the plain run diverged at epoch {epoch}")
    return Timing(median_after_warmup(epochs), time.perf_counter() - started, epochs)


def ray_training(
    dataset: PatchDataset, stats: BandStats, cfg: TrainConfig, storage: Path, datasets: dict[str, Any]
) -> Timing:
    """Train with ``workflows.training.launch.run_training`` (Ray Data, Ray Train workers); read its epoch times.

    Args:
        dataset: The dataset (for its metadata).
        stats: Band statistics of the training split.
        cfg: The run's settings, including ``num_workers`` and ``cpus_per_worker``.
        storage: Folder for the run's checkpoints.
        datasets: Ray datasets ``train`` and ``val``, as :func:`workflows.jobs.inputs.build_inputs` builds them.

    Returns:
        The median reported ``epoch_seconds`` without epoch 1, and the wall time of the whole run (start-up of the
        trainer and workers, every epoch, checkpoints, teardown).
    """
    started = time.perf_counter()
    outcome = run_training(cfg, dataset.metadata, stats, datasets, storage, unique_run_name("bench"))
    wall = time.perf_counter() - started
    epochs = [float(m["epoch_seconds"]) for m in outcome.history]
    if len(epochs) != cfg.epochs:
        raise RuntimeError(f"the Ray run reported {len(epochs)} epochs, expected {cfg.epochs}")
    return Timing(median_after_warmup(epochs), wall, epochs)


def start_ray(cpus: int = CPUS) -> None:
    """A new local Ray cluster of ``cpus`` CPUs for this script alone (never one that is already running)."""
    connect("local", cpus)


def load(size: str, quick: bool, storage: Path) -> tuple[str, PatchDataset, Path]:
    """The default dataset (``small``) or generated patches (``large``, written under ``storage``).

    Returns:
        A label for the table, the dataset, and the folder the Ray side reads.
    """
    if size == "small":
        dataset = read_dataset(DEFAULT_DATASET_DIR)
        return f"{len(dataset.train)} (default)", dataset, DEFAULT_DATASET_DIR
    counts = QUICK_LARGE_COUNTS if quick else LARGE_COUNTS
    started = time.perf_counter()
    dataset = generate(counts, seed=SYNTHETIC_SEED)
    folder = storage / "large-dataset"
    write_dataset(folder, dataset)
    print(f"generated and wrote {counts} in {time.perf_counter() - started:.0f} s", flush=True)
    return f"{len(dataset.train)} (synthetic)", dataset, folder


def throughput(quick: bool, storage: Path) -> list[dict[str, Any]]:
    """Measure plain and both Ray layouts at both sizes; prints progress, returns one row per size."""
    rows = []
    for size in ("small", "large"):
        label, dataset, folder = load(size, quick, storage)
        epochs = (QUICK_EPOCHS if quick else FULL_EPOCHS)[size]
        cfg = TrainConfig(epochs=epochs)
        row: dict[str, Any] = {"size": label, "epochs": epochs}
        row["plain"] = plain_training(dataset, band_stats(dataset.train.pixels), cfg)
        print(f"{label}: plain {_epochs(row['plain'])}", flush=True)
        inputs = build_inputs(open_inputs(folder))
        for name, workers, cpus in LAYOUTS:
            run_cfg = cfg.replace(num_workers=workers, cpus_per_worker=cpus)
            row[name] = ray_training(dataset, inputs.stats, run_cfg, storage, inputs.datasets)
            print(f"{label}: {name} {_epochs(row[name])}, wall {row[name].wall:.1f} s", flush=True)
        del inputs
        rows.append(row)
    return rows


def _epochs(timing: Timing) -> str:
    return "epochs " + " ".join(f"{s:.2f}" for s in timing.epochs) + " s"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The per-epoch table (with ratios to plain) and the wall-time table."""
    names = [name for name, _, _ in LAYOUTS]
    head = f"{'train patches':<20}{'epochs':>7}{'plain s/ep':>12}" + "".join(f"{n + ' s/ep':>15}" for n in names)
    head += "".join(f"{n + '/plain':>15}" for n in names)
    lines = ["seconds per epoch (median without epoch 1; training and validation)", head]
    for row in rows:
        plain = row["plain"].per_epoch
        line = f"{row['size']:<20}{row['epochs']:>7}{plain:>12.2f}"
        line += "".join(f"{row[n].per_epoch:>15.2f}" for n in names)
        line += "".join(f"{row[n].per_epoch / plain:>14.2f}x" for n in names)
        lines.append(line)
    lines += ["", "wall seconds of the whole run (plain: incl. normalising; Ray: incl. trainer start-up, checkpoints)"]
    lines.append(f"{'train patches':<20}{'epochs':>7}{'plain':>12}" + "".join(f"{n:>15}" for n in names))
    for row in rows:
        line = f"{row['size']:<20}{row['epochs']:>7}{row['plain'].wall:>12.1f}"
        lines.append(line + "".join(f"{row[n].wall:>15.1f}" for n in names))
    return "\n".join(lines)


def accuracy(quick: bool, storage: Path) -> list[float]:
    """Test accuracy of the best checkpoint of ``TrainConfig()`` runs (2 workers) for each of the seeds."""
    dataset = read_dataset(DEFAULT_DATASET_DIR)
    inputs = build_inputs(open_inputs(DEFAULT_DATASET_DIR))
    stats, datasets = inputs.stats, inputs.datasets
    scores = []
    for seed in ACCURACY_SEEDS:
        cfg = TrainConfig(seed=seed)
        if quick:
            cfg = cfg.replace(epochs=QUICK_ACCURACY_EPOCHS)
        started = time.perf_counter()
        outcome = run_training(cfg, dataset.metadata, stats, datasets, storage, unique_run_name(f"acc-{seed}"))
        if outcome.best_checkpoint is None:
            raise RuntimeError(f"seed {seed}: the run left no checkpoint")
        evaluated = evaluate_members([outcome.best_checkpoint], dataset.test)
        metrics = evaluated["variants"]["single"]  # the checkpoint alone, without TTA
        scores.append(metrics["accuracy"])
        print(
            f"seed {seed}: {cfg.epochs} epochs x {cfg.num_workers} workers in {time.perf_counter() - started:.0f} s; "
            f"best epoch {evaluated['checkpoint_epoch']} (val_acc {outcome.best_metrics['val_acc']:.4f}); "
            f"test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}",
            flush=True,
        )
    return scores


def build_parser() -> argparse.ArgumentParser:
    """Flags of the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="588 patches x 3 epochs and 5,000 x 2 (accuracy: 3 epochs a seed)"
    )
    parser.add_argument(
        "--accuracy", action="store_true", help="test accuracy of train.py's defaults over seeds 0, 1, 2 instead"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the chosen measurement and print its figures; returns the exit code."""
    args = build_parser().parse_args(argv)
    load_average = ", ".join(f"{v:.1f}" for v in os.getloadavg())  # other processes skew every figure
    print(f"CPUs {os.cpu_count()}, Ray cluster {CPUS} CPUs, load average at start {load_average}", flush=True)
    start_ray()
    try:
        with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
            if args.accuracy:
                scores = accuracy(args.quick, Path(tmp))
                spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
                print(
                    f"test accuracy over seeds {', '.join(map(str, ACCURACY_SEEDS))}: "
                    f"{statistics.mean(scores):.4f} ± {spread:.4f} (sd)"
                )
                return 0
            rows = throughput(args.quick, Path(tmp))
    finally:
        ray.shutdown()
    print()
    print(format_table(rows))
    large = rows[-1]
    worst = max(large[n].per_epoch for n, _, _ in LAYOUTS) / large["plain"].per_epoch
    best = min(large[n].per_epoch for n, _, _ in LAYOUTS) / large["plain"].per_epoch
    print(
        f"target: Ray s/epoch <= {TARGET_RATIO}x plain at {LARGE_COUNTS['train']:,} patches; "
        f"measured at {large['size']}: {best:.2f}x (best layout) to {worst:.2f}x (worst)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
