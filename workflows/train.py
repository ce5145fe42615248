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
from workflows.jobs.flags import add_flags, non_negative_int
from workflows.jobs.training_run import TrainJob, format_outcome, train_run
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
    add_flags(data, DEFAULTS, ["data"])
    data.add_argument(
        "--results",
        default=None,
        help="results folder (default: results/train-<time>), or an object-store URI (s3://bucket/prefix), where "
        "Ray Train keeps the checkpoints and the other files are uploaded at the end; S3 credentials and endpoint "
        "from the AWS_* environment variables",
    )
    add_flags(data, DEFAULTS, ["overwrite"])
    data.add_argument("--resume-from", default=None, help="checkpoint folder to continue from (keeps its epoch)")
    opt = parser.add_argument_group("optimisation")
    add_flags(
        opt,
        TRAINING,
        ["optimizer", "lr", "grad_clip", "momentum", "weight_decay", "label_smoothing", "epochs", "batch_size"],
    )
    add_flags(opt, TRAINING, ["channels", "dropout", "augment", "seed"])
    scale = parser.add_argument_group("Ray")
    add_flags(scale, TRAINING, ["num_workers", "cpus_per_worker", "gpu"])
    add_flags(scale, DEFAULTS, ["address", "num_cpus"])
    scale.add_argument(
        "--max-failures",
        type=non_negative_int,
        default=DEFAULTS.max_failures,
        help="restarts from the last checkpoint on failure",
    )
    ckpt = parser.add_argument_group("checkpoints")
    add_flags(ckpt, TRAINING, ["metric", "mode", "checkpoint_every", "keep_checkpoints"])
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
