"""A PBT experiment as a library call: ``tune_experiment(ExperimentConfig(...))`` returns an :class:`ExperimentResult`.

The steps follow the data flow of ``docs/DESIGN.md``: the experiment's settings (checked, or read back on
resume), the dataset and its training statistics, the members' shared training settings sized to the cluster,
Tune's population under PBT, then the shipped ensemble's test, bundle, ``pbt.json`` and report. ``workflows/tune.py``
is the command line around it; a notebook calls it directly::

    from workflows.jobs.experiment import ExperimentConfig, tune_experiment
    result = tune_experiment(ExperimentConfig(smoke_test=True, results="results/nb", address="local"))
    result.metrics["accuracy"], result.bundle
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from data import DEFAULT_DATASET_DIR
from data.atomic import write_json_atomic
from data.storage import Location, as_user_path, joined, local_staging, path_or_uri, shown
from data.streaming import DatasetFiles
from workflows.jobs.inputs import JobInputs, build_inputs, check_room_to_read, open_inputs, read_cpus
from workflows.jobs.settings import from_flat, to_flat
from workflows.serving.baselines import format_test_summary, run_baselines
from workflows.serving.bundle import BUNDLE_DIR, export_bundle
from workflows.serving.evaluate import TEST_METRICS_FILE, VARIANT_METRICS, evaluate_members, rank_members
from workflows.training.cluster import cluster_cpus, cluster_gpus, connect
from workflows.training.config import TrainConfig, results_location
from workflows.training.config_file import CONFIG_FILE, write_config
from workflows.training.hyperparams import INITIAL_LR_RANGE, MUTABLES, NAMES, PopulationOptions, initial_population
from workflows.tuning.pbt import MEMBER_KEY, PBTMember, make_scheduler, read_member_logs, remove_train_runs
from workflows.tuning.progress import TENSORBOARD_DIR, PopulationProgress
from workflows.tuning.report import format_summary, write_report
from workflows.tuning.tune_private import PopulationSearch, apply_tune_settings, quiet_tune_timing_notes

EXPERIMENT_FILE = "experiment.json"
PBT_FILE = "pbt.json"
TUNE_DIR = "tune"
TRAIN_RUNS_DIR = "train_runs"
MEMBER_LOGS_DIR = "members"
REPORT_DIR = "report"
# Checkpoints Tune keeps per member (one every epoch; see the CheckpointConfig below).
KEEP_TUNE_CHECKPOINTS = 6
# Smallest CPU share a member's worker gets; below it a member would crawl.
MIN_CPUS_PER_WORKER = 0.25
# A member's own Tune actor only waits on its TorchTrainer; it must still ask for some CPU (zero is refused).
MEMBER_ACTOR_CPUS = 0.01
# Settings about one invocation, not the experiment: never kept in the experiment's files.
INVOCATION_ONLY = ("resume", "overwrite")


class ExperimentInterrupted(RuntimeError):
    """The experiment stopped (Ctrl+C / SIGINT) before every member finished; ``resume=True`` continues it."""


# The training settings a user sets for the whole population; PBT sets lr and grad_clip per member, and the
# experiment sizes each member's CPUs and checkpoints itself (_member_config).
TRAINING_KEYS = (
    "optimizer",
    "momentum",
    "weight_decay",
    "label_smoothing",
    "epochs",
    "batch_size",
    "channels",
    "dropout",
    "augment",
    "seed",
    "metric",
    "mode",
    "num_workers",
    "gpu",
)


def _members_training() -> TrainConfig:
    """The members' shared training defaults: train.py's, with one worker each."""
    return TrainConfig(num_workers=1)  # a 2-CPU laptop runs members side by side rather than workers


@dataclass(frozen=True)
class ExperimentConfig:
    """The PBT experiment's settings; each default is defined here once (the training ones in TrainConfig)."""

    data: Path | str = DEFAULT_DATASET_DIR  # the embedded default dataset; a folder or an object-store URI
    results: str | None = None  # None: results/tune-<time> under the working directory
    resume: bool = False  # continue the interrupted experiment in ``results``
    overwrite: bool = False  # allow a results folder that already has results
    population: int = 4  # one member can diverge and be replaced while three others train
    perturbation_interval: int = 5  # epochs between exploit/explore steps (members checkpoint every epoch)
    initial_lr_range: tuple[float, float] = INITIAL_LR_RANGE  # spaced geometrically over the members
    stable_start: bool = False  # by default the upper half starts unclipped, so some members diverge
    smoke_test: bool = False  # 2 members, 4 epochs, small network: a quick check
    cpus_per_worker: float | None = None  # None: the cluster's CPUs shared by all members
    address: str | None = None  # None: the running cluster, or a new local one
    num_cpus: int | None = None  # CPUs of a new local cluster
    # What every member trains with (``TRAINING_KEYS`` of it are the user's; see _member_config for the rest).
    training: TrainConfig = field(default_factory=_members_training)

    def __post_init__(self) -> None:
        # Frozen: as files and flags give them (a list, a string), normalised once.
        object.__setattr__(self, "data", path_or_uri(self.data))
        object.__setattr__(self, "initial_lr_range", tuple(self.initial_lr_range))

    @classmethod
    def from_mapping(cls, values: Any) -> ExperimentConfig:
        """The config from flat keys (a mapping or namespace): its fields and ``TRAINING_KEYS``; others ignored."""
        return from_flat(cls, values, TRAINING_KEYS)

    def settings(self) -> dict[str, Any]:
        """The experiment's settings as flat plain values (the files it keeps), without the invocation's."""
        return to_flat(self, TRAINING_KEYS, INVOCATION_ONLY)


@dataclass(frozen=True)
class ExperimentResult:
    """What an experiment produced: its effective settings, the shipped ensemble's test metrics and its files."""

    config: ExperimentConfig  # with smoke-test sizes applied, or as saved when resumed
    results: Path | str  # the folder, or its URI in an object store
    metrics: dict[str, Any]  # test_metrics.json
    record: dict[str, Any]  # pbt.json
    best_trial: str
    ensemble: list[str]  # the shipped members, best first
    errors: list[str]  # the first line of each failed member's error
    files: dict[str, Path | str] = field(default_factory=dict)  # test_metrics, pbt, bundle and the report's files

    @property
    def bundle(self) -> Path | str:
        """The exported model bundle (``predict.py --model``)."""
        return joined(self.results, BUNDLE_DIR)


def tune_experiment(config: ExperimentConfig) -> ExperimentResult:
    """Run (or resume) the experiment and write its outputs.

    Raises:
        PatchFormatError: The dataset is invalid.
        ValueError: A setting has an impossible value.
        FileExistsError: The results folder already holds results and neither resume nor overwrite was asked.
        ExperimentInterrupted: The fit stopped before every member finished.
    """
    config, results = _experiment(config)
    source = open_inputs(config.data)  # footers and ids, checked before Ray starts
    connect(config.address, config.num_cpus)
    base, concurrent = _member_config(config, source)  # before the scan: a layout that cannot run is refused
    inputs = build_inputs(source)
    training = config.training
    with local_staging(results, "tune-results-") as staging:
        staging.mkdir(parents=True, exist_ok=True)
        if not config.resume:
            _keep_settings(config, results, staging)
        print(
            f"PBT: {config.population} members x {training.epochs} epochs, perturbation every "
            f"{config.perturbation_interval}, {concurrent} at a time, {training.num_workers} worker(s) x "
            f"{base.cpus_per_worker:g} CPU each; data {shown(config.data)} ({inputs.rows['train']} train patches); "
            f"results {results}",
            flush=True,
        )
        trainable = tune.with_resources(
            tune.with_parameters(
                PBTMember,
                base=base,
                metadata=inputs.metadata,
                stats=inputs.stats,
                datasets=inputs.datasets,
                storage_path=results.join(TRAIN_RUNS_DIR).uri,
                log_dir=results.join(MEMBER_LOGS_DIR).uri,
            ),
            {"cpu": MEMBER_ACTOR_CPUS},
        )
        tuner = _make_tuner(config, trainable, base, concurrent, inputs.metadata.num_classes, results, staging)
        apply_tune_settings()
        quiet_tune_timing_notes()
        started = time.perf_counter()
        grid = tuner.fit()
        elapsed = time.perf_counter() - started
        return _ship(config, grid, inputs, results, staging, elapsed)


def _keep_settings(config: ExperimentConfig, results: Location, staging: Path) -> None:
    """Write the experiment's settings (``--resume`` reads them back) before any member starts.

    In an object store they are uploaded at once, so that an experiment whose driver is lost can still be resumed.
    """
    write_json_atomic(staging / EXPERIMENT_FILE, config.settings())
    write_config(staging / CONFIG_FILE, config.settings())  # the experiment as a file --config takes
    if not results.local:
        for name in (EXPERIMENT_FILE, CONFIG_FILE):
            results.join(name).write_bytes((staging / name).read_bytes())


def _experiment(config: ExperimentConfig) -> tuple[ExperimentConfig, Location]:
    """The effective settings (the saved ones on resume, smoke-test sizes applied) and the results folder."""
    results = results_location(config.results, "tune", config.data)  # before the data is read and Ray starts
    if config.resume:
        saved = results.join(EXPERIMENT_FILE)
        if not saved.is_file():
            raise ValueError(f"{results}: nothing to resume (no {EXPERIMENT_FILE}); start without --resume")
        # The saved experiment, with this invocation's folder and cluster.
        saved_config = ExperimentConfig.from_mapping(json.loads(saved.read_bytes()))
        here = {name: getattr(config, name) for name in ("results", "address", "num_cpus", *INVOCATION_ONLY)}
        config = dataclasses.replace(saved_config, **here)
    else:
        if config.smoke_test:
            smaller = config.training.replace(epochs=4, channels=16)
            config = dataclasses.replace(config, population=2, perturbation_interval=2, training=smaller)
        if results.join(TUNE_DIR).exists() and not config.overwrite:
            raise FileExistsError(f"{results}: already holds an experiment; pass --resume, --overwrite or --results")
    _validate(config)
    return config, results


def _validate(config: ExperimentConfig) -> None:
    """Refuse impossible experiment settings in one line (the training ones TrainConfig checked already)."""
    problems = []
    epochs = config.training.epochs
    if config.population < 2:
        problems.append(f"--population must be at least 2, got {config.population}")
    if config.perturbation_interval < 1 or config.perturbation_interval > epochs:
        problems.append(f"--perturbation-interval must lie in 1..--epochs ({epochs})")
    low, high = config.initial_lr_range
    if not (0 < low <= high and math.isfinite(high)):
        problems.append(f"--initial-lr-range needs 0 < LOW <= HIGH, both finite, got {low} {high}")
    if config.cpus_per_worker is not None and not (
        math.isfinite(config.cpus_per_worker) and config.cpus_per_worker > 0
    ):
        problems.append(f"--cpus-per-worker must be a finite number > 0, got {config.cpus_per_worker}")
    if problems:
        raise ValueError("; ".join(problems))


def size_members(cpus: float, population: int, workers: int, requested: float | None) -> tuple[float, int]:
    """CPUs per worker and concurrent members, so that members never wait for each other's CPUs.

    Returns:
        The CPU share of each worker and how many members run at once.
    """
    free = cpus - population * MEMBER_ACTOR_CPUS  # each member's Tune actor holds a sliver too
    share = requested or max(MIN_CPUS_PER_WORKER, free / (population * workers))
    share = math.floor(share) if share >= 1 else math.floor(share * 20) / 20
    concurrent = max(1, min(population, int(free / (workers * share) + 1e-6)))
    return share, concurrent


def build_pbt_record(member_logs: dict[str, list[dict[str, Any]]], config: ExperimentConfig, best_trial: str) -> dict:
    """The per-member record of ``pbt.json``: configs over time, exploits (donor and epoch), final metrics.

    Args:
        member_logs: Each trial's report rows (``members/*.jsonl``).
        config: The experiment's settings.
        best_trial: The shipped ensemble's best member.
    """
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
        "metric": config.training.metric,
        "mode": config.training.mode,
        "population": config.population,
        "epochs": config.training.epochs,
        "perturbation_interval": config.perturbation_interval,
        "best_trial": best_trial,
        "trials": trials,
    }


def _member_config(config: ExperimentConfig, source: DatasetFiles) -> tuple[TrainConfig, int]:
    """The members' shared training settings, sized to the connected cluster, and how many members run at once.

    Members share the CPUs a streamed split's reads leave; a layout that leaves the reads none is refused.
    """
    workers = config.training.num_workers
    if config.training.gpu and cluster_gpus() < workers:
        raise ValueError(f"--gpu needs {workers} GPUs per member; the cluster has {cluster_gpus():.0f}")
    cpus = cluster_cpus()
    share, concurrent = size_members(cpus - read_cpus(source), config.population, workers, config.cpus_per_worker)
    layout = f"{concurrent} member(s) at a time x --num-workers {workers} x --cpus-per-worker {share:g}"
    check_room_to_read(source, concurrent * workers * share, cpus, layout)
    if config.training.gpu:  # members are sized by GPUs: each worker holds one for the whole experiment
        concurrent = max(1, min(config.population, int(cluster_gpus() // workers)))
    base = config.training.replace(
        cpus_per_worker=share,
        # A member reports a (small, quickly written) checkpoint every epoch, so that a member in trouble can be
        # replaced by the best member's latest state at once; Train keeps the latest two, Tune copies what it needs.
        checkpoint_every=1,
        keep_checkpoints=2,
    )
    return base, concurrent


def _make_tuner(
    config: ExperimentConfig,
    trainable: Any,
    base: TrainConfig,
    concurrent: int,
    num_classes: int,
    results: Location,
    staging: Path,
) -> tune.Tuner:
    """Tune's population: restored from ``results`` on --resume, else a new grid of members under PBT."""
    if config.resume:
        return tune.Tuner.restore(results.join(TUNE_DIR).uri, trainable=trainable, resume_errored=True)
    options = PopulationOptions(unstable=not config.stable_start, lr_range=tuple(config.initial_lr_range), base=base)
    members = initial_population(config.population, options)
    training = config.training
    scheduler = make_scheduler(config.perturbation_interval, training.seed, num_classes, training.metric, training.mode)
    return tune.Tuner(
        trainable,
        param_space={
            MEMBER_KEY: tune.grid_search(list(range(config.population))),
            **{name: tune.sample_from(lambda spec, n=name: members[spec[MEMBER_KEY]][n]) for name in NAMES},
        },
        tune_config=tune.TuneConfig(
            # The population's grid; finished only when every member has ended, so Tune keeps members' processes.
            search_alg=PopulationSearch(max_concurrent=concurrent),
            scheduler=scheduler,
            # A member keeps its process, and its TorchTrainer, across exploits (workflows/tuning/pbt.py).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=results.uri,
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=1,
                checkpoint_at_end=True,
                # Per member. A donor's checkpoint must outlive the exploit decision until the clone has loaded
                # it: with the member's process kept that is within an epoch, and a clone that needs a new
                # process takes several seconds more.
                num_to_keep=KEEP_TUNE_CHECKPOINTS,
            ),
            failure_config=tune.FailureConfig(max_failures=1),
            # Tune's boxed tables (a box per report) drown the story; PopulationProgress prints a line instead.
            verbose=0,
            callbacks=[PopulationProgress(training.epochs, staging / TENSORBOARD_DIR)],
        ),
    )


def _ship(
    config: ExperimentConfig, grid: Any, inputs: JobInputs, results: Location, staging: Path, elapsed: float
) -> ExperimentResult:
    """Test the final population's healthy members as an ensemble, bundle it and write the records.

    Raises:
        ExperimentInterrupted: A member has not reached the last epoch (the fit was stopped).
        RuntimeError: No member left a checkpoint.
    """
    errors = [str(e).splitlines()[0] for e in grid.errors]
    metric, mode = config.training.metric, config.training.mode
    unfinished = [r for r in grid if r.error is None and (r.metrics or {}).get("epoch", 0) < config.training.epochs]
    if unfinished:
        raise ExperimentInterrupted(
            f"{results}: interrupted with {len(unfinished)} member(s) unfinished; continue with "
            f"python workflows/tune.py --resume --results {results}"
        )
    finished = {str(r.metrics.get("trial_id")): r for r in grid if r.checkpoint is not None and r.metrics}
    if not finished:
        raise RuntimeError(f"no member left a checkpoint; errors: {errors or 'none'}")
    # The shipped ensemble: the final population's healthy members, best first (the best alone if none is healthy).
    ranked = rank_members({trial_id: r.metrics for trial_id, r in finished.items()}, metric, mode)
    chosen = [finished[trial_id] for trial_id in ranked]
    best, best_trial = chosen[0], ranked[0]
    members = [{"trial_id": trial_id, metric: finished[trial_id].metrics.get(metric)} for trial_id in ranked]
    with contextlib.ExitStack() as stack:
        checkpoint_dirs = [stack.enter_context(r.checkpoint.as_directory()) for r in chosen]
        metrics = evaluate_members(checkpoint_dirs, inputs.test)
        metrics.update(best_trial=best_trial, best_config={name: best.config[name] for name in NAMES})
        metrics.update(members=members, baselines=run_baselines(inputs.baselines), wall_seconds=elapsed)
        write_json_atomic(staging / TEST_METRICS_FILE, metrics)
        summary = {key: metrics[key] for key in (*VARIANT_METRICS, "variant", "variants")}
        export_bundle(
            checkpoint_dirs,
            staging / BUNDLE_DIR,
            members=members,
            extra={"test_metrics": summary, "trial": best_trial},
            overwrite=True,
        )
    record = build_pbt_record(read_member_logs(results.join(MEMBER_LOGS_DIR)), config, best_trial)
    write_json_atomic(staging / PBT_FILE, record)
    written = write_report(record, metrics, staging / REPORT_DIR)
    remove_train_runs(results.join(TRAIN_RUNS_DIR))
    folder = as_user_path(results)
    files = {"test_metrics": TEST_METRICS_FILE, "pbt": PBT_FILE, "bundle": BUNDLE_DIR}
    files.update({name: str(path.relative_to(staging)) for name, path in written.items()})
    shipped = {name: joined(folder, *Path(relative).parts) for name, relative in files.items()}
    return ExperimentResult(config, folder, metrics, record, best_trial, ranked, errors, shipped)


def format_outcome(result: ExperimentResult) -> str:
    """What the job prints at the end: the population's story, the test figures and the files written."""
    record, metrics = result.record, result.metrics
    diverged = sum(1 for t in record["trials"].values() if t["final"]["diverged"])
    exploits = sum(len(t["exploits"]) for t in record["trials"].values())
    best = ", ".join(f"{m.name} {m.text(metrics['best_config'][m.name])}" for m in MUTABLES)
    lines = [
        format_summary(record),
        f"members diverged at the end: {diverged} of {len(record['trials'])}; exploits: {exploits}",
        f"best member {result.best_trial} ({best})",
        f"ensemble: {len(result.ensemble)} healthy member(s) at the end ({', '.join(result.ensemble)})",
        format_test_summary(metrics),
        f"wall time {metrics['wall_seconds']:.0f} s",
    ]
    if result.errors:
        lines.append(f"members that failed: {len(result.errors)}: {result.errors[0]}")
    lines += [f"wrote {path}" for path in result.files.values()]
    lines.append(f"curves by epoch: tensorboard --logdir {joined(result.results, TENSORBOARD_DIR)}")
    return "\n".join(lines)
