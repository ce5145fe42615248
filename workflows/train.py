"""Train the ResNet once with Ray Train (data-parallel workers) and evaluate its best checkpoint on the test split.

Example:
    python workflows/train.py --epochs 20 --num-workers 2 --results results/my-run
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

from data import DEFAULT_DATASET_DIR
from data.atomic import check_creatable, write_json_atomic
from data.format import PatchFormatError, read_dataset
from data.pipeline import build_ray_datasets, compute_band_stats
from serving.baselines import format_test_summary, run_baselines
from serving.bundle import export_bundle
from serving.evaluate import TEST_METRICS_FILE, VARIANT_METRICS, evaluate_members
from training.cluster import cluster_gpus, connect
from training.config import AUGMENTATIONS, OPTIMIZERS, TrainConfig, reject_uri
from training.launch import run_training, unique_run_name
from tuning.progress import TENSORBOARD_DIR, EpochCurves, report_line
from workflows.flags import (
    grad_clip,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    unit_fraction,
)

DEFAULTS = TrainConfig()
HISTORY_FILE = "history.json"
BUNDLE_DIR = "bundle"


def build_parser() -> argparse.ArgumentParser:
    """Flags for one training run; defaults come from :class:`TrainConfig`."""
    parser = argparse.ArgumentParser(
        description="Train the fixed ResNet on a patch dataset with Ray Train, then evaluate the best checkpoint "
        "(by validation accuracy) on the test split. Writes test_metrics.json, history.json and the model bundle "
        "(bundle/, for workflows/predict.py) to --results.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data and output")
    data.add_argument("--data", type=Path, default=DEFAULT_DATASET_DIR, help="dataset folder (train/val/test.parquet)")
    # A str, not a Path: pathlib would fold an object-store URI's "//" before reject_uri can show it as typed.
    data.add_argument("--results", default=None, help="results folder (default: results/train-<time>)")
    data.add_argument("--overwrite", action="store_true", help="allow a results folder that already has results")
    data.add_argument("--resume-from", default=None, help="checkpoint folder to continue from (keeps its epoch)")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULTS.optimizer)
    opt.add_argument("--lr", type=positive_float, default=DEFAULTS.lr, help="learning rate")
    opt.add_argument("--grad-clip", type=grad_clip, default=DEFAULTS.grad_clip, help="max gradient norm; 0 = off")
    opt.add_argument("--momentum", type=non_negative_float, default=DEFAULTS.momentum, help="SGD momentum")
    opt.add_argument("--weight-decay", type=non_negative_float, default=DEFAULTS.weight_decay)
    opt.add_argument("--label-smoothing", type=unit_fraction, default=DEFAULTS.label_smoothing)
    opt.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs)
    opt.add_argument(
        "--batch-size", type=positive_int, default=DEFAULTS.batch_size, help="global batch, split over workers"
    )
    opt.add_argument("--channels", type=positive_int, default=DEFAULTS.channels, help="network width")
    opt.add_argument("--dropout", type=unit_fraction, default=DEFAULTS.dropout)
    opt.add_argument(
        "--augment", choices=AUGMENTATIONS, default=DEFAULTS.augment, help="flips/rotations drawn per training patch"
    )
    opt.add_argument("--seed", type=int, default=DEFAULTS.seed)
    scale = parser.add_argument_group("Ray")
    scale.add_argument("--num-workers", type=positive_int, default=DEFAULTS.num_workers, help="data-parallel workers")
    scale.add_argument("--cpus-per-worker", type=positive_float, default=DEFAULTS.cpus_per_worker)
    scale.add_argument("--gpu", action="store_true", help="one GPU per worker (the cluster must have them)")
    scale.add_argument("--address", default=None, help="Ray cluster address (default: running cluster or new local)")
    scale.add_argument("--num-cpus", type=positive_int, default=None, help="CPUs of a new local cluster (default: all)")
    scale.add_argument(
        "--max-failures", type=non_negative_int, default=1, help="restarts from the last checkpoint on failure"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` that the parsed flags describe."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return TrainConfig(**values, use_gpu=args.gpu)


def _progress(metrics: dict[str, Any], epochs: int, curves: EpochCurves) -> None:
    print(report_line(metrics, epochs), flush=True)
    curves.add(metrics)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run training and the test evaluation; returns the test metrics.

    Raises:
        PatchFormatError: The dataset is invalid.
        ValueError: A flag has an impossible value.
        FileExistsError: The results folder already holds results and ``--overwrite`` was not given.
    """
    reject_uri(args.results)
    cfg = config_from_args(args)
    results = (Path(args.results) if args.results else Path("results") / time.strftime("train-%Y%m%d-%H%M%S")).resolve()
    check_creatable(results, "--results", folder=True)  # before the data is read and Ray starts
    if (results / TEST_METRICS_FILE).exists() and not args.overwrite:
        raise FileExistsError(f"{results}: already holds {TEST_METRICS_FILE}; pass --overwrite or another --results")
    dataset = read_dataset(args.data)
    stats = compute_band_stats(dataset.train.pixels)
    connect(args.address, args.num_cpus)
    if cfg.use_gpu and cluster_gpus() < cfg.num_workers:
        raise ValueError(f"--gpu asks for {cfg.num_workers} GPUs, the cluster has {cluster_gpus():.0f}")
    print(
        f"data {args.data}: {len(dataset.train)} train / {len(dataset.val)} val / {len(dataset.test)} test patches, "
        f"{dataset.metadata.num_bands} bands, {dataset.metadata.height}x{dataset.metadata.width}, "
        f"{dataset.metadata.num_classes} classes; {cfg.num_workers} workers; results {results}",
        flush=True,
    )
    datasets = build_ray_datasets(dataset, stats)
    curves = EpochCurves(results / TENSORBOARD_DIR)
    outcome = run_training(
        cfg,
        dataset.metadata,
        stats,
        datasets,
        results / "ray",
        unique_run_name("train"),
        resume_from=args.resume_from,
        max_failures=args.max_failures,
        on_report=lambda metrics, checkpoint: _progress(metrics, cfg.epochs, curves),
    )
    curves.close()
    write_json_atomic(results / HISTORY_FILE, outcome.history)
    if outcome.best_checkpoint is None:
        raise RuntimeError("training finished without a checkpoint; nothing to evaluate")
    metrics = evaluate_members([outcome.best_checkpoint], dataset.test)  # variants: single, single+tta
    metrics.update(checkpoint=outcome.best_checkpoint, train_config=cfg.to_dict(), baselines=run_baselines(dataset))
    write_json_atomic(results / TEST_METRICS_FILE, metrics)
    summary = {key: metrics[key] for key in (*VARIANT_METRICS, "variant", "variants")}
    export_bundle(outcome.best_checkpoint, results / BUNDLE_DIR, extra={"test_metrics": summary}, overwrite=True)
    print(f"best checkpoint: epoch {metrics['checkpoint_epoch']} ({outcome.best_checkpoint})")
    print(format_test_summary(metrics))
    print(f"wrote {results / TEST_METRICS_FILE} and the model bundle {results / BUNDLE_DIR}")
    print(f"curves by epoch: tensorboard --logdir {results / TENSORBOARD_DIR}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except (PatchFormatError, ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
