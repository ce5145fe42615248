"""The main job: population-based training of the ResNet over lr and grad_clip, then test, bundle and report.

Run it on a local Ray cluster as a Ray job (the dashboard at http://127.0.0.1:8265 shows the members):
    ray start --head
    ray job submit -- python workflows/tune.py

Results land in one folder per experiment (``--results``, default ``results/tune-<time>`` under the directory the
job runs in): ``test_metrics.json``, ``pbt.json``, ``bundle/``, ``report/`` (JSON and PNG plots) and ``tune/`` (Ray
Tune's own records, used by ``--resume``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from ray import tune

from data import DEFAULT_DATASET_DIR
from data.atomic import check_creatable, write_json_atomic
from data.format import PatchDataset, PatchFormatError, read_dataset
from data.pipeline import build_ray_datasets, compute_band_stats
from serving.baselines import format_test_summary, run_baselines
from serving.bundle import export_bundle
from serving.evaluate import (
    TEST_METRICS_FILE,
    VARIANT_METRICS,
    evaluate_members,
    rank_members,
)
from training.cluster import cluster_cpus, cluster_gpus, connect
from training.config import AUGMENTATIONS, OPTIMIZERS, TrainConfig, reject_uri
from training.hyperparams import INITIAL_LR_RANGE, MUTABLES, NAMES, PopulationOptions, initial_population
from tuning.pbt import (
    MEMBER_KEY,
    METRIC,
    MODE,
    PBTMember,
    make_scheduler,
    read_member_logs,
    remove_train_runs,
)
from tuning.progress import TENSORBOARD_DIR, PopulationProgress
from tuning.ray_private import PopulationSearch, apply_tune_settings, quiet_tune_timing_notes
from tuning.report import format_summary, write_report
from workflows.config_file import add_config_flags, parse_args, write_config
from workflows.flags import non_negative_float, positive_float, positive_int, unit_fraction

log = logging.getLogger(__name__)

DEFAULTS = TrainConfig()
EXPERIMENT_FILE = "experiment.json"
CONFIG_FILE = "config.yaml"
PBT_FILE = "pbt.json"
TUNE_DIR = "tune"
TRAIN_RUNS_DIR = "train_runs"
MEMBER_LOGS_DIR = "members"
BUNDLE_DIR = "bundle"
REPORT_DIR = "report"
# Checkpoints Tune keeps per member (one every epoch; see the CheckpointConfig below).
KEEP_TUNE_CHECKPOINTS = 6
# Smallest CPU share a member's worker gets; below it a member would crawl.
MIN_CPUS_PER_WORKER = 0.25
# The Tune function only waits on its TorchTrainer; it must still ask for some CPU (zero is refused).
TRIAL_FUNCTION_CPUS = 0.01


class ExperimentInterrupted(RuntimeError):
    """The experiment stopped (Ctrl+C / SIGINT) before every member finished; ``--resume`` continues it."""


@dataclasses.dataclass(frozen=True)
class TuneDefaults:
    """Defaults of the PBT experiment, with the reason for each."""

    population: int = 4  # one member can diverge and be replaced while three others train
    epochs: int = 40  # as train.py: the default dataset plateaus around epoch 30-40
    perturbation_interval: int = 5  # epochs between exploit/explore steps (and checkpoints)
    workers_per_trial: int = 1  # a 2-CPU laptop runs members side by side rather than workers
    seed: int = 0


TUNE_DEFAULTS = TuneDefaults()


def build_parser() -> argparse.ArgumentParser:
    """Flags of the PBT experiment; defaults come from :class:`TuneDefaults` and :class:`TrainConfig`."""
    parser = argparse.ArgumentParser(
        description="Population-based training of the fixed ResNet over learning rate and gradient clipping. "
        "Members that diverge are replaced by copies of healthy ones with mutated settings. Afterwards the final "
        "population's healthy members are evaluated on the test split (best alone, ensemble, ensemble over the "
        "flips/rotations) beside a random forest and a logistic regression, and exported as an ensemble model "
        "bundle, with a JSON and PNG report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    io = parser.add_argument_group("data and output")
    io.add_argument("--data", type=Path, default=DEFAULT_DATASET_DIR, help="dataset folder (train/val/test.parquet)")
    io.add_argument(
        "--results",
        default=None,
        help="experiment folder (default results/tune-<time>); on a multi-node cluster, a folder every node mounts "
        "at the same path (object-store URIs are not supported yet)",
    )
    io.add_argument("--resume", action="store_true", help="continue the interrupted experiment in --results")
    io.add_argument("--overwrite", action="store_true", help="allow a results folder that already has results")
    pbt = parser.add_argument_group("population-based training")
    pbt.add_argument("--population", type=positive_int, default=TUNE_DEFAULTS.population, help="members")
    pbt.add_argument("--epochs", type=positive_int, default=TUNE_DEFAULTS.epochs, help="epochs per member")
    pbt.add_argument(
        "--perturbation-interval",
        type=positive_int,
        default=TUNE_DEFAULTS.perturbation_interval,
        help="epochs between exploit/explore steps (a diverged or stuck member is replaced at once); members "
        "checkpoint every epoch",
    )
    pbt.add_argument(
        "--initial-lr-range",
        type=positive_float,
        nargs=2,
        default=INITIAL_LR_RANGE,
        metavar=("LOW", "HIGH"),
        help="initial learning rates, spaced geometrically over the members",
    )
    pbt.add_argument(
        "--stable-start",
        action="store_true",
        help="start every member with clipping (by default the upper half starts unclipped, and some diverge)",
    )
    pbt.add_argument("--metric", default=METRIC, help="metric PBT ranks members by")
    pbt.add_argument("--mode", choices=("max", "min"), default=MODE, help="whether --metric is maximised")
    pbt.add_argument("--seed", type=int, default=TUNE_DEFAULTS.seed)
    pbt.add_argument("--smoke-test", action="store_true", help="2 members, 4 epochs, small network: a quick check")
    train = parser.add_argument_group("training (shared by all members)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULTS.optimizer)
    train.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    train.add_argument("--weight-decay", type=non_negative_float, default=DEFAULTS.weight_decay)
    train.add_argument("--label-smoothing", type=unit_fraction, default=DEFAULTS.label_smoothing)
    train.add_argument("--channels", type=positive_int, default=DEFAULTS.channels, help="network width")
    train.add_argument(
        "--augment", choices=AUGMENTATIONS, default=DEFAULTS.augment, help="flips/rotations drawn per training patch"
    )
    ray_group = parser.add_argument_group("Ray")
    ray_group.add_argument("--workers-per-trial", type=positive_int, default=TUNE_DEFAULTS.workers_per_trial)
    ray_group.add_argument(
        "--cpus-per-worker", type=positive_float, default=None, help="default: the cluster's CPUs shared by all members"
    )
    ray_group.add_argument("--gpu", action="store_true", help="one GPU per worker")
    ray_group.add_argument("--address", default=None, help="Ray cluster (default: running cluster or new local)")
    ray_group.add_argument("--num-cpus", type=positive_int, default=None, help="CPUs of a new local cluster")
    add_config_flags(parser)
    return parser


def _apply_smoke_test(args: argparse.Namespace) -> None:
    args.population, args.epochs, args.perturbation_interval, args.channels = 2, 4, 2, 16


def _validate(args: argparse.Namespace) -> None:
    problems = []
    if args.population < 2:
        problems.append(f"--population must be at least 2, got {args.population}")
    if args.perturbation_interval < 1 or args.perturbation_interval > args.epochs:
        problems.append(f"--perturbation-interval must lie in 1..--epochs ({args.epochs})")
    low, high = args.initial_lr_range
    if not (0 < low <= high and math.isfinite(high)):
        problems.append(f"--initial-lr-range needs 0 < LOW <= HIGH, both finite, got {low} {high}")
    if args.workers_per_trial < 1:
        problems.append("--workers-per-trial must be at least 1")
    if args.cpus_per_worker is not None and not (math.isfinite(args.cpus_per_worker) and args.cpus_per_worker > 0):
        problems.append(f"--cpus-per-worker must be a finite number > 0, got {args.cpus_per_worker}")
    shared = ("optimizer", "batch_size", "weight_decay", "label_smoothing", "channels", "epochs")
    try:  # the members' shared settings, checked as TrainConfig will check them, before Ray starts
        TrainConfig(**{name: getattr(args, name) for name in shared}, num_workers=args.workers_per_trial)
    except ValueError as err:
        problems.append(str(err))
    if problems:
        raise ValueError("; ".join(problems))


def size_members(cpus: float, population: int, workers: int, requested: float | None) -> tuple[float, int]:
    """CPUs per worker and concurrent members, so that members never wait for each other's CPUs.

    Returns:
        The CPU share of each worker and how many members run at once.
    """
    free = cpus - population * TRIAL_FUNCTION_CPUS  # each member's Tune function holds a sliver too
    share = requested or max(MIN_CPUS_PER_WORKER, free / (population * workers))
    share = math.floor(share) if share >= 1 else math.floor(share * 20) / 20
    concurrent = max(1, min(population, int(free / (workers * share) + 1e-6)))
    return share, concurrent


def _results_folder(args: argparse.Namespace) -> Path:
    reject_uri(args.results)
    if args.results:
        results = Path(args.results).resolve()
    else:
        results = (Path("results") / time.strftime("tune-%Y%m%d-%H%M%S")).resolve()
    check_creatable(results, "--results", folder=True)  # before the data is read and Ray starts
    return results


def build_pbt_record(member_logs: dict[str, list[dict[str, Any]]], args: argparse.Namespace, best_trial: str) -> dict:
    """The per-member record of ``pbt.json``: configs over time, exploits (donor and epoch), final metrics."""
    keep = ("epoch", *NAMES, "val_acc", "val_loss", "val_macro_f1", "train_loss", "diverged")
    keep += ("exploited_from", "restored_epoch", "skipped_steps", "grad_norm_mean", "train_run", "reported_at")
    trials: dict[str, Any] = {}
    for trial_id, rows in member_logs.items():
        if not rows:
            continue
        history = [{k: row.get(k) for k in keep} for row in rows]
        exploits = [
            {
                "report_index": i,
                "donor": row["exploited_from"],
                "donor_epoch": int(row["restored_epoch"]),
                **{name: row[name] for name in NAMES},
            }
            for i, row in enumerate(history)
            if row.get("exploited_from")
        ]
        trials[trial_id] = {
            "initial_config": {name: history[0][name] for name in NAMES},
            "final_config": {name: history[-1][name] for name in NAMES},
            "history": history,
            "exploits": exploits,
            "final": {k: history[-1][k] for k in ("epoch", "val_acc", "val_loss", "diverged")},
        }
    return {
        "metric": args.metric,
        "mode": args.mode,
        "population": args.population,
        "epochs": args.epochs,
        "perturbation_interval": args.perturbation_interval,
        "best_trial": best_trial,
        "trials": trials,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) the experiment and write its outputs; returns the test metrics of the shipped ensemble.

    The steps follow the data flow: the experiment's flags, the dataset and its statistics, the members' shared
    training settings, Tune's population, then the shipped ensemble's test, bundle and report.

    Raises:
        PatchFormatError: The dataset is invalid.
        ValueError: A flag has an impossible value.
        FileExistsError: The results folder already holds results and neither --resume nor --overwrite was given.
    """
    results = _experiment(args)
    dataset = read_dataset(args.data)
    stats = compute_band_stats(dataset.train.pixels)
    connect(args.address, args.num_cpus)
    base, concurrent = _member_config(args)
    results.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        body = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        write_json_atomic(results / EXPERIMENT_FILE, body)
        write_config(results / CONFIG_FILE, build_parser(), args)  # the experiment as a file --config takes
    print(
        f"PBT: {args.population} members x {args.epochs} epochs, perturbation every {args.perturbation_interval}, "
        f"{concurrent} at a time, {args.workers_per_trial} worker(s) x {base.cpus_per_worker:g} CPU each; "
        f"data {args.data} ({len(dataset.train)} train patches); results {results}",
        flush=True,
    )
    trainable = tune.with_resources(
        tune.with_parameters(
            PBTMember,
            base=base.to_dict(),
            metadata_json=dataset.metadata.to_json(),
            stats=stats.to_dict(),
            datasets=build_ray_datasets(dataset, stats),
            storage_path=str(results / TRAIN_RUNS_DIR),
            log_dir=str(results / MEMBER_LOGS_DIR),
        ),
        {"cpu": TRIAL_FUNCTION_CPUS},
    )
    (results / MEMBER_LOGS_DIR).mkdir(parents=True, exist_ok=True)
    tuner = _make_tuner(args, trainable, base, concurrent, dataset.metadata.num_classes, results)
    apply_tune_settings()
    quiet_tune_timing_notes()
    started = time.perf_counter()
    grid = tuner.fit()
    elapsed = time.perf_counter() - started
    return _ship(args, grid, dataset, results, elapsed)


def _experiment(args: argparse.Namespace) -> Path:
    """The results folder, with ``args`` completed from the saved experiment on --resume (and checked)."""
    results = _results_folder(args)
    if args.resume:
        saved = results / EXPERIMENT_FILE
        if not saved.is_file():
            raise ValueError(f"{results}: nothing to resume (no {EXPERIMENT_FILE}); start without --resume")
        for key, value in json.loads(saved.read_text()).items():
            if key not in ("resume", "results", "address", "num_cpus"):
                setattr(args, key, value)
        args.data = Path(args.data)
    else:
        if args.smoke_test:
            _apply_smoke_test(args)
        if (results / TUNE_DIR).exists() and not args.overwrite:
            raise FileExistsError(f"{results}: already holds an experiment; pass --resume, --overwrite or --results")
    _validate(args)
    return results


def _member_config(args: argparse.Namespace) -> tuple[TrainConfig, int]:
    """The members' shared training settings, sized to the connected cluster, and how many members run at once."""
    if args.gpu and cluster_gpus() < args.workers_per_trial:
        raise ValueError(f"--gpu needs {args.workers_per_trial} GPUs per member; the cluster has {cluster_gpus():.0f}")
    share, concurrent = size_members(cluster_cpus(), args.population, args.workers_per_trial, args.cpus_per_worker)
    if args.gpu:  # members are sized by GPUs: each worker holds one for the whole experiment
        concurrent = max(1, min(args.population, int(cluster_gpus() // args.workers_per_trial)))
    base = TrainConfig(
        optimizer=args.optimizer,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        channels=args.channels,
        augment=args.augment,
        epochs=args.epochs,
        seed=args.seed,
        num_workers=args.workers_per_trial,
        cpus_per_worker=share,
        use_gpu=args.gpu,
        # A member reports a checkpoint every epoch (4.3 MB, 11-16 ms to write and copy here), so that a member in
        # trouble can be replaced by the best member's latest state at once; Train keeps the latest two, Tune
        # copies what it needs.
        checkpoint_every=1,
        keep_checkpoints=2,
    )
    return base, concurrent


def _make_tuner(
    args: argparse.Namespace, trainable: Any, base: TrainConfig, concurrent: int, num_classes: int, results: Path
) -> tune.Tuner:
    """Tune's population: restored from ``results`` on --resume, else a new grid of members under PBT."""
    if args.resume:
        return tune.Tuner.restore(str(results / TUNE_DIR), trainable=trainable, resume_errored=True)
    options = PopulationOptions(unstable=not args.stable_start, lr_range=tuple(args.initial_lr_range), base=base)
    members = initial_population(args.population, options)
    scheduler = make_scheduler(args.perturbation_interval, args.seed, num_classes, args.metric, args.mode)
    return tune.Tuner(
        trainable,
        param_space={
            MEMBER_KEY: tune.grid_search(list(range(args.population))),
            **{name: tune.sample_from(lambda config, n=name: members[config[MEMBER_KEY]][n]) for name in NAMES},
        },
        tune_config=tune.TuneConfig(
            # The population's grid; finished only when every member has ended, so Tune keeps members' processes.
            search_alg=PopulationSearch(max_concurrent=concurrent),
            scheduler=scheduler,
            # A member keeps its process, and its TorchTrainer, across exploits (tuning/pbt.py).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=str(results),
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=1,
                checkpoint_at_end=True,
                # Per member, 4.3 MB each here. A donor's checkpoint must outlive the exploit decision until the
                # clone has loaded it: with the member's process kept that is the next second (epochs take
                # 0.5-2 s), and a clone that needs a new process takes 5-10 s more.
                num_to_keep=KEEP_TUNE_CHECKPOINTS,
            ),
            failure_config=tune.FailureConfig(max_failures=1),
            # Tune's boxed tables (a box per report) drown the story; PopulationProgress prints a line instead.
            verbose=0,
            callbacks=[PopulationProgress(args.epochs, results / TENSORBOARD_DIR)],
        ),
    )


def _ship(args: argparse.Namespace, grid: Any, dataset: PatchDataset, results: Path, elapsed: float) -> dict[str, Any]:
    """Test the final population's healthy members as an ensemble, bundle it, write the records and say so.

    Raises:
        ExperimentInterrupted: A member has not reached the last epoch (the fit was stopped).
        RuntimeError: No member left a checkpoint.
    """
    errors = [str(e).splitlines()[0] for e in grid.errors]
    unfinished = [r for r in grid if r.error is None and (r.metrics or {}).get("epoch", 0) < args.epochs]
    if unfinished:
        raise ExperimentInterrupted(
            f"{results}: interrupted with {len(unfinished)} member(s) unfinished; continue with "
            f"python workflows/tune.py --resume --results {results}"
        )
    finished = {str(r.metrics.get("trial_id")): r for r in grid if r.checkpoint is not None and r.metrics}
    if not finished:
        raise RuntimeError(f"no member left a checkpoint; errors: {errors or 'none'}")
    # The shipped ensemble: the final population's healthy members, best first (the best alone if none is healthy).
    ranked = rank_members({trial_id: r.metrics for trial_id, r in finished.items()}, args.metric, args.mode)
    chosen = [finished[trial_id] for trial_id in ranked]
    best, best_trial = chosen[0], ranked[0]
    members = [{"trial_id": trial_id, args.metric: finished[trial_id].metrics.get(args.metric)} for trial_id in ranked]
    with contextlib.ExitStack() as stack:
        checkpoint_dirs = [stack.enter_context(r.checkpoint.as_directory()) for r in chosen]
        metrics = evaluate_members(checkpoint_dirs, dataset.test)
        metrics.update(best_trial=best_trial, best_config={name: best.config[name] for name in NAMES})
        metrics.update(members=members, baselines=run_baselines(dataset), wall_seconds=elapsed)
        write_json_atomic(results / TEST_METRICS_FILE, metrics)
        summary = {key: metrics[key] for key in (*VARIANT_METRICS, "variant", "variants")}
        export_bundle(
            checkpoint_dirs,
            results / BUNDLE_DIR,
            members=members,
            extra={"test_metrics": summary, "trial": best_trial},
            overwrite=True,
        )
    record = build_pbt_record(read_member_logs(results / MEMBER_LOGS_DIR), args, best_trial)
    write_json_atomic(results / PBT_FILE, record)
    written = write_report(record, metrics, results / REPORT_DIR)
    remove_train_runs(results / TRAIN_RUNS_DIR)

    diverged = sum(1 for t in record["trials"].values() if t["final"]["diverged"])
    exploits = sum(len(t["exploits"]) for t in record["trials"].values())
    print(format_summary(record))
    print(f"members diverged at the end: {diverged} of {len(record['trials'])}; exploits: {exploits}")
    print(f"best member {best_trial} ({', '.join(f'{m.name} {m.text(best.config[m.name])}' for m in MUTABLES)})")
    print(f"ensemble: {len(chosen)} healthy member(s) at the end ({', '.join(ranked)})")
    print(format_test_summary(metrics))
    print(f"wall time {elapsed:.0f} s")
    if errors:
        print(f"members that failed: {len(errors)}: {errors[0]}")
    for name in (TEST_METRICS_FILE, PBT_FILE, BUNDLE_DIR):
        print(f"wrote {results / name}")
    for path in written.values():
        print(f"wrote {path}")
    print(f"curves by epoch: tensorboard --logdir {results / TENSORBOARD_DIR}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args = parse_args(build_parser(), argv)
        run(args)
    except (PatchFormatError, ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ExperimentInterrupted as err:
        print(f"stopped: {err}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
