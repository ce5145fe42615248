"""Print PBT (the main job) beside random search with the same compute: best and median test accuracy, diverged.

For each seed, two searches over ``lr`` and ``grad_clip`` train the same number of members for the same number
of epochs on the default dataset (or ``--data``):

- PBT: the main job itself (``workflows.jobs.experiment.tune_experiment``) with that ``--seed``, on a local Ray cluster
  this script starts. Every member's final checkpoint is evaluated on the test split.
- Random search: members whose ``lr`` and ``grad_clip`` are drawn from the distribution PBT's initial population
  is a stratified sample of (``lr`` log-uniform over ``--initial-lr-range``; the upper half of that log range
  unclipped, the seed's setting, the lower half clipped at a norm drawn from PBT's choices), each trained for all
  epochs with its draw and never changed. They train in this process with the same loop, guards and augmentation
  as a Ray worker (``benchmarks/pbt_vs_plain.py``'s plain loop), since nothing but the schedule differs.

Both start every member from the same seeded weights. A member counts as diverged when its last epoch was (a
non-finite or exploded loss), and as failed when its final test accuracy is below twice chance: a large step can
also leave a member stuck near chance with a finite loss, which the divergence guard does not flag.

Example:
    python benchmarks/pbt_vs_random.py                  # 4 members x 30 epochs, seeds 0 1 2 (about 8 min)
    python benchmarks/pbt_vs_random.py --quick          # 2 members x 4 epochs, width 16, one seed (about 1 min)
    python benchmarks/pbt_vs_random.py --data data/my-patches --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pbt_vs_plain import Member, Row, plain_pbt, start_ray  # noqa: E402
from data import DEFAULT_DATASET_DIR  # noqa: E402
from data.folder import read_dataset  # noqa: E402
from data.format import PatchDataset, PatchFormatError  # noqa: E402
from workflows.jobs.experiment import TUNE_DIR, ExperimentConfig, format_outcome, tune_experiment  # noqa: E402
from workflows.serving.evaluate import evaluate_members  # noqa: E402
from workflows.training.config import TrainConfig  # noqa: E402
from workflows.training.hyperparams import CLIP_CHOICES, INITIAL_LR_RANGE  # noqa: E402
from workflows.tuning.pbt import TRIAL_FOLDER_GLOB  # noqa: E402

# A member whose final test accuracy is below this multiple of chance failed to learn.
FAILED_FACTOR = 2.0
QUICK = {"population": 2, "epochs": 4, "interval": 2, "channels": 16, "seeds": [0]}


def random_members(count: int, lr_range: tuple[float, float], epochs: int, seed: int) -> list[Member]:
    """``count`` members with independent draws of ``lr`` and ``grad_clip``, fixed for all ``epochs``."""
    rng = np.random.default_rng(seed)
    low, high = math.log(lr_range[0]), math.log(lr_range[1])
    middle = (low + high) / 2
    members = []
    for index in range(count):
        log_lr = rng.uniform(low, high)
        clip = None if log_lr >= middle else float(rng.choice(CLIP_CHOICES))
        lr = math.exp(log_lr)
        members.append(Member(f"random-{index}", [Row(e, lr, clip) for e in range(1, epochs + 1)]))
    return members


def single_accuracy(checkpoint: Path, split: Any) -> float:
    """One checkpoint's test accuracy alone, without TTA."""
    return evaluate_members([checkpoint], split)["variants"]["single"]["accuracy"]


def final_checkpoints(tune_dir: Path) -> dict[str, Path]:
    """Each trial's last checkpoint folder in the job's Tune folder, by trial folder name."""
    found = {}
    for trial in sorted(tune_dir.glob(TRIAL_FOLDER_GLOB)):
        checkpoints = sorted(trial.glob("checkpoint_*"))
        if checkpoints:
            found[trial.name] = checkpoints[-1]
    return found


def run_pbt(args: argparse.Namespace, dataset: PatchDataset, seed: int, results: Path) -> dict[str, Any]:
    """The main job with this seed; every member's final test accuracy."""
    job = ExperimentConfig.from_mapping(dict(
        data=Path(args.data), results=str(results), seed=seed, population=args.population, epochs=args.epochs,
        perturbation_interval=args.interval, channels=args.channels, initial_lr_range=args.initial_lr_range,
    ))  # fmt: skip
    start_ray()
    try:
        started = time.perf_counter()
        outcome = tune_experiment(job)
        print(format_outcome(outcome))
        wall = time.perf_counter() - started
    finally:
        ray.shutdown()
    best, record = outcome.metrics, outcome.record
    checkpoints = final_checkpoints(results / TUNE_DIR).values()
    return {
        "wall": wall,
        "best": best["accuracy"],
        "accuracies": [single_accuracy(checkpoint, dataset.test) for checkpoint in checkpoints],
        "diverged": sum(1 for t in record["trials"].values() if t["final"]["diverged"]),
        "exploits": sum(len(t["exploits"]) for t in record["trials"].values()),
    }


def run_random(args: argparse.Namespace, dataset: PatchDataset, seed: int) -> dict[str, Any]:
    """Random search with this seed, trained in this process; every member's test accuracy."""
    base = TrainConfig(channels=args.channels, epochs=args.epochs, seed=seed)
    members = random_members(args.population, tuple(args.initial_lr_range), args.epochs, seed)
    plain = plain_pbt(dataset, base, members)
    # Random search picks its winner by validation accuracy, as PBT's job does.
    return {
        "wall": plain["wall"],
        "best": plain["accuracy"],
        "accuracies": plain["member_accuracies"],
        "diverged": sum(plain["diverged"]),
        "draws": [(m.rows[0].lr, m.rows[0].grad_clip) for m in members],
    }


def _figures(runs: list[dict[str, Any]], chance: float) -> tuple[str, str, str, str]:
    best = [r["best"] for r in runs]
    medians = [statistics.median(r["accuracies"]) for r in runs]
    diverged = [r["diverged"] for r in runs]
    failed = [sum(1 for a in r["accuracies"] if a < FAILED_FACTOR * chance) for r in runs]
    return (
        " ".join(f"{v:.4f}" for v in best) + f"  (mean {statistics.fmean(best):.4f})",
        " ".join(f"{v:.4f}" for v in medians) + f"  (mean {statistics.fmean(medians):.4f})",
        " ".join(str(v) for v in diverged),
        " ".join(str(v) for v in failed),
    )


def build_parser() -> argparse.ArgumentParser:
    """Flags of the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATASET_DIR, help="dataset folder (default: embedded)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds, one PBT and one random "
                        "search each (default: 0 1 2)")  # fmt: skip
    parser.add_argument("--population", type=int, default=4, help="members per search (default: 4)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per member (default: 30)")
    parser.add_argument("--interval", type=int, default=5, help="PBT perturbation interval (default: 5)")
    parser.add_argument("--channels", type=int, default=TrainConfig().channels, help="network width (default: 64)")
    parser.add_argument(
        "--initial-lr-range", type=float, nargs=2, default=list(INITIAL_LR_RANGE), metavar=("LOW", "HIGH"),
        help=f"learning rates both searches start from (default: {INITIAL_LR_RANGE[0]:g} {INITIAL_LR_RANGE[1]:g})",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="2 members x 4 epochs, width 16, seed 0")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run both searches for every seed and print the figures; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.quick:
        args.population, args.epochs, args.interval = QUICK["population"], QUICK["epochs"], QUICK["interval"]
        args.channels, args.seeds = QUICK["channels"], QUICK["seeds"]
    try:
        dataset = read_dataset(args.data)
    except PatchFormatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    chance = 1 / dataset.metadata.num_classes
    load_average = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"CPUs {os.cpu_count()}, load average at start {load_average}; {args.population} members x {args.epochs} "
        f"epochs each, PBT interval {args.interval}, width {args.channels}, seeds {args.seeds}",
        flush=True,
    )
    pbt_runs, random_runs = [], []
    with tempfile.TemporaryDirectory(prefix="pbt-vs-random-") as tmp:
        for seed in args.seeds:
            pbt_runs.append(run_pbt(args, dataset, seed, Path(tmp) / f"pbt-{seed}"))
            random_runs.append(run_random(args, dataset, seed))
            p, r = pbt_runs[-1], random_runs[-1]
            print(
                f"seed {seed}: PBT best {p['best']:.4f}, members {[round(a, 4) for a in p['accuracies']]}, "
                f"{p['exploits']} exploits, {p['diverged']} diverged, {p['wall']:.0f} s; random best {r['best']:.4f}, "
                f"members {[round(a, 4) for a in r['accuracies']]}, {r['diverged']} diverged, {r['wall']:.0f} s; "
                f"random draws (lr, clip) {[(round(lr, 4), clip) for lr, clip in r['draws']]}",
                flush=True,
            )
    print()
    print(f"{'':<34}{'PBT (tune.py)':<40}random search")
    names = ("best test accuracy", "median member test accuracy", "members diverged at the end",
             f"members below {FAILED_FACTOR:g}x chance")  # fmt: skip
    rows = zip(names, _figures(pbt_runs, chance), _figures(random_runs, chance), strict=True)
    for name, pbt_value, random_value in rows:
        print(f"{name:<34}{pbt_value:<40}{random_value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
