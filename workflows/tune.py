"""The main job: population-based training of the ResNet over lr and grad_clip, then test, bundle and report.

Run it on a local Ray cluster as a Ray job (the dashboard at http://127.0.0.1:8265 shows the members):
    ray start --head
    ray job submit -- python workflows/tune.py

Results land in one folder per experiment (``--results``, default ``results/tune-<time>`` under the directory the
job runs in): ``test_metrics.json``, ``pbt.json``, ``bundle/``, ``report/`` (JSON and PNG plots) and ``tune/`` (Ray
Tune's own records, used by ``--resume``). The experiment itself is :func:`workflows.jobs.experiment.tune_experiment`;
this
script parses the flags (and ``--config``) into its :class:`~workflows.jobs.experiment.ExperimentConfig` and prints the
outcome.
"""

from __future__ import annotations

import argparse
import logging
import sys

from data.format import PatchFormatError
from workflows.jobs.experiment import ExperimentConfig, ExperimentInterrupted, format_outcome, tune_experiment
from workflows.jobs.flags import add_flags, positive_float, positive_int
from workflows.training.config_file import add_config_flags, parse_args

DEFAULTS = ExperimentConfig()
TRAINING = DEFAULTS.training


def build_parser() -> argparse.ArgumentParser:
    """Flags of the PBT experiment: the fields of :class:`ExperimentConfig`, with its defaults."""
    parser = argparse.ArgumentParser(
        description="Population-based training of the fixed ResNet over learning rate and gradient clipping. "
        "Members that diverge are replaced by copies of healthy ones with mutated settings. Afterwards the final "
        "population's healthy members are evaluated on the test split (best alone, ensemble, ensemble over the "
        "flips/rotations) beside a random forest and a logistic regression, and exported as an ensemble model "
        "bundle, with a JSON and PNG report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    io = parser.add_argument_group("data and output")
    add_flags(io, DEFAULTS, ["data"])
    io.add_argument(
        "--results",
        default=None,
        help="experiment folder (default results/tune-<time>); on a multi-node cluster, a folder every node mounts "
        "at the same path, or an object-store URI (s3://bucket/prefix), where Tune and Train keep checkpoints and "
        "member logs and the other files are uploaded at the end; S3 credentials and endpoint from the AWS_* "
        "environment variables",
    )
    io.add_argument("--resume", action="store_true", help="continue the interrupted experiment in --results")
    add_flags(io, DEFAULTS, ["overwrite"])
    pbt = parser.add_argument_group("population-based training")
    pbt.add_argument("--population", type=positive_int, default=DEFAULTS.population, help="members")
    add_flags(pbt, TRAINING, ["epochs"], epochs="epochs per member")
    pbt.add_argument(
        "--perturbation-interval",
        type=positive_int,
        default=DEFAULTS.perturbation_interval,
        help="epochs between exploit/explore steps (a diverged or stuck member is replaced at once); members "
        "checkpoint every epoch",
    )
    pbt.add_argument(
        "--initial-lr-range",
        type=positive_float,
        nargs=2,
        default=list(DEFAULTS.initial_lr_range),
        metavar=("LOW", "HIGH"),
        help="initial learning rates, spaced geometrically over the members",
    )
    pbt.add_argument(
        "--stable-start",
        action="store_true",
        help="start every member with clipping (by default the upper half starts unclipped, and some diverge)",
    )
    add_flags(pbt, TRAINING, ["metric", "mode", "seed"])
    pbt.add_argument("--smoke-test", action="store_true", help="2 members, 4 epochs, small network: a quick check")
    train = parser.add_argument_group("training (shared by all members; PBT sets lr and grad_clip)")
    add_flags(
        train,
        TRAINING,
        ["optimizer", "momentum", "weight_decay", "label_smoothing", "batch_size", "channels", "dropout", "augment"],
    )
    ray_group = parser.add_argument_group("Ray")
    add_flags(ray_group, TRAINING, ["num_workers", "gpu"])
    add_flags(
        ray_group,
        DEFAULTS,
        ["cpus_per_worker"],
        cpus_per_worker="CPUs each worker reserves (None: the cluster's CPUs shared by all members)",
    )
    add_flags(ray_group, DEFAULTS, ["address", "num_cpus"])
    add_config_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args = parse_args(build_parser(), argv, lambda parsed: ExperimentConfig.from_mapping(parsed).settings())
        config = ExperimentConfig.from_mapping(args)
        print(format_outcome(tune_experiment(config)))
    except (PatchFormatError, ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ExperimentInterrupted as err:
        print(f"stopped: {err}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
