"""Train the ResNet once with Ray Train (data-parallel workers) and evaluate its best checkpoint on the test split.

Example:
    python workflows/train.py --epochs 20 --num-workers 2 --results results/my-run
    python workflows/train.py --config results/my-run/config.yaml --results results/again

The run itself is :func:`workflows.jobs.training_run.train_run`; this script parses the flags (and ``--config``) into
its
:class:`~workflows.jobs.training_run.TrainJob` and prints the outcome.
"""

from __future__ import annotations

import argparse
import logging
import sys

from data.format import PatchFormatError
from workflows.jobs.flags import (
    add_data_flag,
    grad_clip,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    unit_fraction,
)
from workflows.jobs.training_run import TrainJob, format_outcome, train_run
from workflows.training.config import AUGMENTATIONS, OPTIMIZERS, RANKABLE_METRICS
from workflows.training.config_file import add_config_flags, parse_args

DEFAULTS = TrainJob()
TRAINING = DEFAULTS.training


def build_parser() -> argparse.ArgumentParser:
    """Flags of one training run: the fields of :class:`TrainJob` and :class:`TrainConfig`, with their defaults."""
    parser = argparse.ArgumentParser(
        description="Train the fixed ResNet on a patch dataset with Ray Train, then evaluate the best checkpoint "
        "(by --metric, validation accuracy by default) on the test split. Writes test_metrics.json, history.json, "
        "the model bundle (bundle/, for workflows/predict.py) and config.yaml (the run as a --config file) to "
        "--results.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data and output")
    add_data_flag(data, DEFAULTS.data)
    data.add_argument(
        "--results",
        default=None,
        help="results folder (default: results/train-<time>), or an object-store URI (s3://bucket/prefix), where "
        "Ray Train keeps the checkpoints and the other files are uploaded at the end; S3 credentials and endpoint "
        "from the AWS_* environment variables",
    )
    data.add_argument("--overwrite", action="store_true", help="allow a results folder that already has results")
    data.add_argument("--resume-from", default=None, help="checkpoint folder to continue from (keeps its epoch)")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--optimizer", choices=OPTIMIZERS, default=TRAINING.optimizer)
    opt.add_argument("--lr", type=positive_float, default=TRAINING.lr, help="learning rate")
    opt.add_argument("--grad-clip", type=grad_clip, default=TRAINING.grad_clip, help="max gradient norm; 0 = off")
    opt.add_argument("--momentum", type=non_negative_float, default=TRAINING.momentum, help="SGD momentum")
    opt.add_argument("--weight-decay", type=non_negative_float, default=TRAINING.weight_decay)
    opt.add_argument("--label-smoothing", type=unit_fraction, default=TRAINING.label_smoothing)
    opt.add_argument("--epochs", type=positive_int, default=TRAINING.epochs)
    opt.add_argument(
        "--batch-size", type=positive_int, default=TRAINING.batch_size, help="global batch, split over workers"
    )
    opt.add_argument("--channels", type=positive_int, default=TRAINING.channels, help="network width")
    opt.add_argument("--dropout", type=unit_fraction, default=TRAINING.dropout)
    opt.add_argument(
        "--augment", choices=AUGMENTATIONS, default=TRAINING.augment, help="flips/rotations drawn per training patch"
    )
    opt.add_argument("--seed", type=int, default=TRAINING.seed)
    scale = parser.add_argument_group("Ray")
    scale.add_argument("--num-workers", type=positive_int, default=TRAINING.num_workers, help="data-parallel workers")
    scale.add_argument("--cpus-per-worker", type=positive_float, default=TRAINING.cpus_per_worker)
    scale.add_argument("--gpu", action="store_true", help="one GPU per worker (the cluster must have them)")
    scale.add_argument("--address", default=None, help="Ray cluster address (default: running cluster or new local)")
    scale.add_argument("--num-cpus", type=positive_int, default=None, help="CPUs of a new local cluster (default: all)")
    scale.add_argument(
        "--max-failures",
        type=non_negative_int,
        default=DEFAULTS.max_failures,
        help="restarts from the last checkpoint on failure",
    )
    ckpt = parser.add_argument_group("checkpoints")
    ckpt.add_argument(
        "--metric", choices=RANKABLE_METRICS, default=TRAINING.metric, help="what ranks checkpoints: kept, best"
    )
    ckpt.add_argument(
        "--mode",
        choices=("max", "min"),
        default=None,
        help="whether --metric is maximised (%(default)s: its own direction)",
    )
    ckpt.add_argument(
        "--checkpoint-every", type=positive_int, default=TRAINING.checkpoint_every, help="epochs between checkpoints"
    )
    ckpt.add_argument(
        "--keep-checkpoints", type=positive_int, default=TRAINING.keep_checkpoints, help="best checkpoints Ray keeps"
    )
    add_config_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args = parse_args(build_parser(), argv, lambda parsed: TrainJob.from_mapping(parsed).settings())
        print(format_outcome(train_run(TrainJob.from_mapping(args))))
    except (PatchFormatError, ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
