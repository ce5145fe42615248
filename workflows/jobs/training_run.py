"""One training run as a library call: ``train_run(TrainJob(...))`` returns a :class:`TrainResult`.

The steps follow the data flow of ``docs/DESIGN.md``: the run's settings (checked before the data is read and Ray
starts), the dataset and its training statistics, Ray Data's datasets, one Ray Train run (a line and a TensorBoard
point per epoch), then the best checkpoint's test, the baselines and the model bundle. ``workflows/train.py`` is the
command line around it; a notebook calls it directly::

    from workflows.jobs.training_run import TrainJob, train_run
    from workflows.training.config import TrainConfig
    result = train_run(TrainJob(results="results/nb", address="local", training=TrainConfig(epochs=5)))
    result.metrics["accuracy"], result.bundle
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data import DEFAULT_DATASET_DIR
from data.atomic import write_json_atomic
from data.storage import Location, as_user_path, joined, local_copy, local_staging, path_or_uri, shown
from workflows.jobs.inputs import build_inputs, check_room_to_read, open_inputs
from workflows.jobs.settings import from_flat, to_flat
from workflows.serving.baselines import format_test_summary, run_baselines
from workflows.serving.bundle import BUNDLE_DIR, export_bundle
from workflows.serving.evaluate import TEST_METRICS_FILE, VARIANT_METRICS, evaluate_members
from workflows.training.cluster import cluster_cpus, cluster_gpus, connect
from workflows.training.config import TrainConfig, results_location
from workflows.training.config_file import CONFIG_FILE, write_config
from workflows.training.launch import TrainingOutcome, run_training, unique_run_name
from workflows.tuning.progress import TENSORBOARD_DIR, EpochCurves, report_line

HISTORY_FILE = "history.json"
RAY_DIR = "ray"
# Settings about one invocation, not the run: never kept in the run's config file.
INVOCATION_ONLY = ("overwrite",)
# A run lets its user set every training field.
TRAINING_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))


@dataclass(frozen=True)
class TrainJob:
    """One training run's settings: data and output, the cluster, and the training; defaults defined once here."""

    data: Path | str = DEFAULT_DATASET_DIR  # the embedded default dataset; a folder or an object-store URI
    results: str | None = None  # None: results/train-<time> under the working directory
    overwrite: bool = False  # allow a results folder that already holds test_metrics.json
    resume_from: str | None = None  # a checkpoint folder to continue from (its epoch, model and optimizer)
    max_failures: int = 1  # one restart from the latest checkpoint after a worker fails
    address: str | None = None  # None: the running cluster, or a new local one
    num_cpus: int | None = None  # CPUs of a new local cluster (None: all)
    training: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", path_or_uri(self.data))  # frozen: a folder as a Path, a URI as typed

    @classmethod
    def from_mapping(cls, values: Any) -> TrainJob:
        """The job from flat keys (a mapping or namespace): this class's fields and :class:`TrainConfig`'s."""
        return from_flat(cls, values, TRAINING_KEYS)

    def settings(self) -> dict[str, Any]:
        """Flat plain values with the flags' names (the run's ``config.yaml``), without the invocation's."""
        return to_flat(self, TRAINING_KEYS, INVOCATION_ONLY)


@dataclass(frozen=True)
class TrainResult:
    """What a run produced: its settings, the best checkpoint's test metrics, its history and its files."""

    job: TrainJob
    results: Path | str  # the folder, or its URI in an object store
    metrics: dict[str, Any]  # test_metrics.json
    history: list[dict[str, Any]]  # every epoch's metrics (history.json)
    best_checkpoint: str
    files: dict[str, Path | str] = field(default_factory=dict)  # test_metrics, history, config, bundle

    @property
    def bundle(self) -> Path | str:
        """The exported model bundle (``predict.py --model``)."""
        return joined(self.results, BUNDLE_DIR)


def train_run(job: TrainJob) -> TrainResult:
    """Train, test the best checkpoint (by ``job.training.metric``) and export it as a bundle.

    With ``job.results`` an object-store URI, Ray Train keeps its checkpoints there and the files this process
    writes are staged on the local disk and uploaded when the run ends (also when it fails).

    Raises:
        PatchFormatError: The dataset is invalid.
        ValueError: A setting has an impossible value.
        FileExistsError: The results folder already holds results and ``overwrite`` is not set.
        StorageError: The object store cannot be reached or written.
        RuntimeError: Training ended without a checkpoint.
    """
    cfg = job.training
    results = _results_location(job)
    source = open_inputs(job.data)  # footers and ids, checked before Ray starts
    connect(job.address, job.num_cpus)
    if cfg.gpu and cluster_gpus() < cfg.num_workers:
        raise ValueError(f"--gpu asks for {cfg.num_workers} GPUs, the cluster has {cluster_gpus():.0f}")
    layout = f"--num-workers {cfg.num_workers} x --cpus-per-worker {cfg.cpus_per_worker:g}"
    check_room_to_read(source, cfg.num_workers * cfg.cpus_per_worker, cluster_cpus(), layout)
    inputs = build_inputs(source)
    meta, rows = inputs.metadata, inputs.rows
    print(
        f"data {shown(job.data)}: {rows['train']} train / {rows['val']} val / {rows['test']} test patches, "
        f"{meta.num_bands} bands, {meta.height}x{meta.width}, {meta.num_classes} classes; {cfg.num_workers} "
        f"workers; results {results}",
        flush=True,
    )
    folder = as_user_path(results)
    with local_staging(results, "train-results-") as staging:
        staging.mkdir(parents=True, exist_ok=True)
        write_config(staging / CONFIG_FILE, job.settings())  # the run as a file --config takes
        outcome = _train(job, meta, inputs.stats, inputs.datasets, staging, results.join(RAY_DIR).uri)
        write_json_atomic(staging / HISTORY_FILE, outcome.history)
        if outcome.best_checkpoint is None:
            raise RuntimeError("training finished without a checkpoint; nothing to evaluate")
        best = results.at(outcome.best_checkpoint)
        with local_copy(best, "train-checkpoint-") as checkpoint:
            metrics = evaluate_members([checkpoint], inputs.test)  # variants: single, single+tta
            baselines = run_baselines(inputs.baselines)
            metrics.update(checkpoint=best.uri, train_config=cfg.to_dict(), baselines=baselines)
            write_json_atomic(staging / TEST_METRICS_FILE, metrics)
            summary = {key: metrics[key] for key in (*VARIANT_METRICS, "variant", "variants")}
            export_bundle(checkpoint, staging / BUNDLE_DIR, extra={"test_metrics": summary}, overwrite=True)
    files = {
        "config": joined(folder, CONFIG_FILE),
        "history": joined(folder, HISTORY_FILE),
        "test_metrics": joined(folder, TEST_METRICS_FILE),
        "bundle": joined(folder, BUNDLE_DIR),
    }
    return TrainResult(job, folder, metrics, outcome.history, best.uri, files)


def _results_location(job: TrainJob) -> Location:
    """The results folder, refused before the data is read and Ray starts if it cannot or may not be written."""
    results = results_location(job.results, "train", job.data)
    if results.join(TEST_METRICS_FILE).exists() and not job.overwrite:
        raise FileExistsError(f"{results}: already holds {TEST_METRICS_FILE}; pass --overwrite or another --results")
    return results


def _train(
    job: TrainJob, metadata: Any, stats: Any, datasets: dict[str, Any], staging: Path, storage: str
) -> TrainingOutcome:
    """The Ray Train run (checkpoints under ``storage``), a line and a TensorBoard point (in ``staging``) an epoch."""
    curves = EpochCurves(staging / TENSORBOARD_DIR)

    def progress(metrics: dict[str, Any], checkpoint: str | None) -> None:
        print(report_line(metrics, job.training.epochs), flush=True)
        curves.add(metrics)

    try:
        return run_training(
            job.training,
            metadata,
            stats,
            datasets,
            storage,
            unique_run_name("train"),
            resume_from=job.resume_from,
            max_failures=job.max_failures,
            on_report=progress,
        )
    finally:
        curves.close()


def format_outcome(result: TrainResult) -> str:
    """What train.py prints at the end: the best checkpoint, the test figures and the files written."""
    metrics = result.metrics
    return "\n".join(
        [
            f"best checkpoint: epoch {metrics['checkpoint_epoch']} ({result.best_checkpoint})",
            format_test_summary(metrics),
            f"wrote {result.files['test_metrics']} and the model bundle {result.bundle}",
            f"curves by epoch: tensorboard --logdir {joined(result.results, TENSORBOARD_DIR)}",
        ]
    )
