"""Classifying patches with trained networks: in this process, or streamed through a pool of Ray Data model actors.

In process, :func:`ensemble_probabilities` averages the softmax probabilities of one or more networks over the views
of test-time augmentation (TTA): D4 elements of :func:`data.pipeline.d4_transform`.

Streamed, raw format rows (a Parquet file read by ``ray.data.read_parquet``, or any Ray dataset of ``patch_id``,
``pixels`` and ``label`` rows) go to a fixed pool of actors that each build the networks once, with torch threads
sized to the CPUs the actor holds (a GPU when asked), and check every block (``workflows.patch_stream.BlockCheck``).
:func:`write_predictions` writes the per-patch predictions as Parquet part files from Ray's write tasks
(:class:`PredictionSink`); :func:`score_members` returns only the summed confusion matrices of each prediction
variant. Either way the driver plans and adds up K x K counts: it holds no pixels and no per-patch predictions.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
import torch

from data.format import PATCH_ID, PatchMetadata
from data.pipeline import DEFAULT_AUGMENTATION, BandStats, augmentation_elements, d4_transform, normalise
from resnet import ResNet, ResNetConfig
from workflows.patch_stream import BlockCheck, PatchSource
from workflows.predictions import (
    IO_TASK_CPUS,
    PREDICTED_INDEX,
    PREDICTED_LABEL,
    TRUE_INDEX,
    PartWritten,
    PredictionSink,
    ProgressWatcher,
    confusion_counts,
    probability_column,
)

if TYPE_CHECKING:
    from workflows.bundle import Bundle

PREDICT_BATCH_SIZE = 1024
# The identity element of d4_transform alone: prediction without test-time augmentation.
NO_TTA = np.zeros(1, dtype=np.int64)

# The one column of the scoring actors' output: a (variants, K, K) count tensor per batch.
CONFUSION = "confusion"
# Rows per Ray Data block: enough blocks to keep every actor busy to the end and to show progress, few enough that
# the per-block overhead (a task hand-over) stays far below the forward passes each carries.
BLOCK_ROWS = 4096
# Read tasks in flight per model actor (at least one in all): reading took about 20 us a patch here against 170 us to
# classify it without TTA on one thread, and the read tasks take no logical CPU, so nothing else bounds them.
READ_TASKS_PER_ACTOR = 0.25


def tta_views(train_config: Mapping[str, Any] | None, metadata: PatchMetadata) -> tuple[str, np.ndarray]:
    """The augmentation group a model was trained with and its elements, the views test-time augmentation averages.

    Raises:
        ValueError: The training config names an unknown group.
    """
    name = (train_config or {}).get("augment", DEFAULT_AUGMENTATION)
    return name, augmentation_elements(name, square=metadata.height == metadata.width)


def model_from_state(state: dict[str, Any]) -> ResNet:
    """Rebuild the network of a checkpoint or bundle state, in eval mode."""
    model = ResNet(ResNetConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    return model.eval()


def _normalised_batches(pixels: np.ndarray, stats: BandStats) -> Iterator[np.ndarray]:
    """Normalised batches of at most ``PREDICT_BATCH_SIZE`` patches, (B, C, H, W) each."""
    for start in range(0, len(pixels), PREDICT_BATCH_SIZE):
        yield normalise(pixels[start : start + PREDICT_BATCH_SIZE], stats)


@torch.no_grad()
def batch_view_probabilities(
    models: Sequence[ResNet], batch: np.ndarray, views: np.ndarray, device: torch.device | None = None
) -> np.ndarray:
    """Probabilities of every model on every view of one normalised batch, shape (M, V, B, K).

    Args:
        models: The networks, on ``device``.
        batch: Normalised patches, (B, C, H, W).
        views: D4 elements, one per view.
        device: Where the networks are (None: the CPU).
    """
    out = np.empty((len(models), len(views), len(batch), models[0].config.num_classes), dtype=np.float32)
    for model in models:
        model.eval()
    for v, element in enumerate(views):
        # Normalisation is per band, so moving the normalised patches equals normalising the moved ones.
        moved = torch.from_numpy(np.ascontiguousarray(d4_transform(batch, np.full(len(batch), element))))
        if device is not None:
            moved = moved.to(device, non_blocking=True)
        for m, model in enumerate(models):
            out[m, v] = torch.softmax(model(moved), dim=1).cpu().numpy()
    return out


def member_view_probabilities(
    models: Sequence[ResNet],
    pixels: np.ndarray,
    stats: BandStats,
    views: np.ndarray,
    device: torch.device | None = None,
) -> np.ndarray:
    """Class probabilities of each model on each view, shape (M, V, N, K), for raw pixels (N, C, H, W).

    View ``v`` applies the D4 element ``views[v]`` (see :func:`data.pipeline.d4_transform`) to every patch.
    """
    parts = [batch_view_probabilities(models, b, views, device) for b in _normalised_batches(pixels, stats)]
    empty = (len(models), len(views), 0, models[0].config.num_classes)
    return np.concatenate(parts, axis=2) if parts else np.zeros(empty, dtype=np.float32)


def ensemble_probabilities(
    models: Sequence[ResNet],
    pixels: np.ndarray,
    stats: BandStats,
    views: np.ndarray = NO_TTA,
    device: torch.device | None = None,
) -> np.ndarray:
    """Class probabilities, shape (N, K), for raw pixels (N, C, H, W): the mean over the models and the views."""
    parts = [
        batch_view_probabilities(models, b, views, device).mean(axis=(0, 1)) for b in _normalised_batches(pixels, stats)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, models[0].config.num_classes), dtype=np.float32)


def predict_probabilities(model: ResNet, pixels: np.ndarray, stats: BandStats) -> np.ndarray:
    """Class probabilities, shape (N, K), of one model for raw pixels (N, C, H, W), normalised with ``stats``."""
    return ensemble_probabilities([model], pixels, stats)


@dataclass(frozen=True)
class ActorResources:
    """What each model actor holds.

    Attributes:
        cpus: Logical CPUs; the actor runs this many torch threads (at least one).
        gpus: GPUs (fractions share one); above zero the networks run on CUDA.
    """

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cpus) and self.cpus > 0) or not (math.isfinite(self.gpus) and self.gpus >= 0):
            raise ValueError(f"actor resources need cpus > 0 and gpus >= 0, got {self.cpus} and {self.gpus}")

    @property
    def threads(self) -> int:
        """Torch intra-op threads of one actor."""
        return max(1, int(self.cpus))

    def device(self) -> torch.device:
        """Where an actor runs its networks."""
        return torch.device("cuda" if self.gpus > 0 else "cpu")

    def pool_size(self, cluster_cpus: float, cluster_gpus: float) -> int:
        """Actors that fit the cluster at once (at least one): by GPUs when the actors take GPUs, else by CPUs."""
        fits = cluster_gpus / self.gpus if self.gpus > 0 else cluster_cpus / self.cpus
        return max(1, int(fits + 1e-9))


# One CPU and no GPU per actor.
DEFAULT_RESOURCES = ActorResources()


def _start_actor(resources: ActorResources) -> torch.device:
    """Size torch's threads to the actor and return its device."""
    torch.set_num_threads(resources.threads)
    return resources.device()


class Predictor:
    """Ray Data callable class: each actor loads the model bundle once, then classifies blocks of raw format rows.

    Args:
        load: Returns the bundle (for example ``functools.partial(workflows.bundle.load_bundle, folder)``), called
            once in each actor.
        check: How every block is validated and decoded.
        resources: What the actor holds (torch threads, GPU).
        ensemble: Average all the bundle's members (False: the best alone); None: the bundle's default.
        tta: Average over its test-time augmentation views (False: none); None: the bundle's default.
    """

    def __init__(
        self,
        load: Callable[[], Bundle],
        check: BlockCheck,
        resources: ActorResources = DEFAULT_RESOURCES,
        ensemble: bool | None = None,
        tta: bool | None = None,
    ) -> None:
        self.device = _start_actor(resources)
        bundle = load()
        mode = bundle.prediction_mode(ensemble, tta)
        self.models = [model.to(self.device) for model in (bundle.models if mode.ensemble else bundle.models[:1])]
        self.views = bundle.views if mode.tta else NO_TTA
        self.stats, self.check = bundle.band_stats, check
        self.classes = np.asarray(bundle.metadata.classes, dtype=object)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Patch ids, predicted class names and class probabilities of one batch (and its true classes, if known)."""
        block = self.check.decode(batch)
        probabilities = ensemble_probabilities(self.models, block.pixels, self.stats, self.views, self.device)
        predicted = probabilities.argmax(axis=1)  # (B,)
        # Typed columns: a block that a carved split emptied must have the same schema as the others.
        columns: dict[str, pa.Array] = {
            PATCH_ID: block.patch_ids,
            PREDICTED_LABEL: pa.array(self.classes[predicted].tolist(), type=pa.string()),
        }
        for k, name in enumerate(self.classes):
            columns[probability_column(name)] = pa.array(probabilities[:, k], type=pa.float32())
        if block.labels is not None:
            columns[TRUE_INDEX] = pa.array(block.labels, type=pa.int32())
            columns[PREDICTED_INDEX] = pa.array(predicted, type=pa.int32())
        return pa.table(columns)


@dataclass(frozen=True)
class Variant:
    """One way of predicting with a population: the mean probabilities over some of its members and views.

    Attributes:
        name: Its key in the metrics (for example ``ensemble+tta``).
        members: Which members (best first) it averages.
        views: Which views (of those each member predicts) it averages.
    """

    name: str
    members: slice
    views: slice


class MemberScorer:
    """Ray Data callable class: the confusion counts of every prediction variant on each block of labelled rows.

    Args:
        members: An object-store reference to the members' states (``model_config`` and ``model`` each), best first.
        band_stats: The members' input statistics, as :meth:`data.pipeline.BandStats.to_dict` gives them.
        views: The D4 elements each member predicts.
        variants: The variants to count, each a mean over members and views.
        check: How every block is validated and decoded (with labels).
        resources: What the actor holds (torch threads, GPU).
    """

    def __init__(
        self,
        members: Any,
        band_stats: dict[str, list[float]],
        views: Sequence[int],
        variants: Sequence[Variant],
        check: BlockCheck,
        resources: ActorResources = DEFAULT_RESOURCES,
    ) -> None:
        self.device = _start_actor(resources)
        self.models = [model_from_state(state).to(self.device) for state in ray.get(members)]
        self.stats, self.views = BandStats.from_dict(band_stats), np.asarray(views, dtype=np.int64)
        self.variants, self.check = list(variants), check

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        """One row: the (variants, K, K) counts of this batch, rows the truth."""
        block = self.check.decode(batch)
        probabilities = member_view_probabilities(self.models, block.pixels, self.stats, self.views, self.device)
        classes = probabilities.shape[-1]
        counts = [
            confusion_counts(block.labels, probabilities[v.members, v.views].mean(axis=(0, 1)).argmax(axis=1), classes)
            for v in self.variants
        ]
        return {CONFUSION: np.stack(counts)[np.newaxis]}


def _configure(ds: ray.data.Dataset, metadata: PatchMetadata) -> ray.data.Dataset:
    """Settings of this dataset alone: blocks of about ``BLOCK_ROWS`` patches, input order kept, our errors, quiet."""
    context = ds.context
    context.target_max_block_size = BLOCK_ROWS * metadata.values_per_patch * np.dtype(np.float32).itemsize
    context.execution_options.preserve_order = True
    # A failing block raises its own error (our one-line PatchFormatError), not Ray Data's wrapper of it.
    context.raise_original_map_exception = True
    context.enable_progress_bars = False  # our own progress lines; Ray's bars garble captured logs
    context.print_on_execution_start = False
    return ds


@contextlib.contextmanager
def _user_errors_unlogged() -> Iterator[None]:
    """Keep Ray Data from logging a failed run's stack traces: the caller gets the error and says it in one line.

    Ray Data logs every failed task with its traces at ERROR before it raises (a bad row of the input would print
    two screens of them); during the run its package logger passes only CRITICAL. Errors still propagate.
    """
    logger = logging.getLogger("ray.data")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def write_predictions(
    source: PatchSource,
    load: Callable[[], Bundle],
    classes: Sequence[str],
    folder: Path,
    *,
    file_metadata: dict[str, str],
    rows_per_file: int | None,
    batch_size: int = PREDICT_BATCH_SIZE,
    concurrency: int = 1,
    resources: ActorResources = DEFAULT_RESOURCES,
    ensemble: bool | None = None,
    tta: bool | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[PartWritten]:
    """Classify a source on the connected Ray cluster and write the predictions as part files into ``folder``.

    Args:
        source: The checked input file.
        load: Loads the model bundle, in each actor.
        classes: The bundle's class names (K).
        folder: An existing, empty folder for the part files (``part-00000.parquet``, ... in input order).
        file_metadata: Schema metadata of every part file.
        rows_per_file: Rows of each part file (about); None or at least ``source.rows``: one file.
        batch_size: Patches per forward pass.
        concurrency: Model actors.
        resources: What each actor holds.
        ensemble: As :meth:`workflows.bundle.Bundle.predict_probabilities` takes it.
        tta: As :meth:`workflows.bundle.Bundle.predict_probabilities` takes it.
        progress: Called from a watcher thread with the rows written so far, each time more are.

    Returns:
        One record per part file, in input order, with its confusion counts when the source has labels.
    """
    readers = max(1, math.ceil(concurrency * READ_TASKS_PER_ACTOR))
    # Blocks of BLOCK_ROWS: left to itself the reader cuts a file into at least 200 (of ~300 patches at 50k), and
    # every block costs the driver's scheduler and the object store a fixed amount of work.
    blocks = max(1, math.ceil(source.rows / BLOCK_ROWS))
    read = source.dataset(num_cpus=IO_TASK_CPUS, concurrency=readers, override_num_blocks=blocks)
    ds = _configure(read, source.metadata)
    predictions = ds.map_batches(
        Predictor,
        fn_constructor_kwargs={
            "load": load,
            "check": source.check(),
            "resources": resources,
            "ensemble": ensemble,
            "tta": tta,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=resources.cpus,
        num_gpus=resources.gpus or None,
    )
    sink = PredictionSink(str(folder), len(classes), file_metadata, rows_per_file)
    watcher = ProgressWatcher(folder, progress) if progress is not None else None
    if watcher is not None:
        watcher.start()
    try:
        with _user_errors_unlogged():
            # One write task at a time: they take milliseconds, and at no CPU each Ray would start a worker
            # process (seconds of imports) for every one it could run at once.
            predictions.write_datasink(sink, ray_remote_args={"num_cpus": IO_TASK_CPUS}, concurrency=1)
    finally:
        if watcher is not None:
            watcher.stop()
    written = sum(part.rows for part in sink.written)
    if progress is not None and watcher.reported != written:
        progress(written)  # the last files were renamed before the watcher saw them
    return sink.written


def score_members(
    ds: ray.data.Dataset,
    check: BlockCheck,
    states: Sequence[dict[str, Any]],
    views: Sequence[int],
    variants: Sequence[Variant],
    *,
    concurrency: int = 1,
    resources: ActorResources = DEFAULT_RESOURCES,
) -> np.ndarray:
    """Sum the confusion counts of every prediction variant over a Ray dataset of labelled raw format rows.

    Args:
        ds: Rows of ``patch_id``, ``pixels`` (flat, band-major) and ``label`` (class names).
        check: How every block is validated and decoded.
        states: The members' checkpoint states, best first (their ``model_config``, ``model`` and ``band_stats``).
        views: The D4 elements each member predicts.
        variants: The variants to count.
        concurrency: Model actors.
        resources: What each actor holds.

    Returns:
        The counts (variants, K, K), rows the truth.

    Raises:
        ValueError: The dataset has no rows.
    """
    members = ray.put([{"model_config": s["model_config"], "model": s["model"]} for s in states])
    scored = _configure(ds, check.metadata).map_batches(
        MemberScorer,
        fn_constructor_kwargs={
            "members": members,
            "band_stats": states[0]["band_stats"],
            "views": [int(v) for v in views],
            "variants": list(variants),
            "check": check,
            "resources": resources,
        },
        batch_size=PREDICT_BATCH_SIZE,
        batch_format="pyarrow",
        # From one actor up: a fixed pool holding every CPU would starve the tasks that read the caller's rows.
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=concurrency),
        num_cpus=resources.cpus,
        num_gpus=resources.gpus or None,
    )
    total: np.ndarray | None = None
    with _user_errors_unlogged():
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            counts = np.asarray(batch[CONFUSION], dtype=np.int64).sum(axis=0)
            total = counts if total is None else total + counts
    if total is None:
        raise ValueError(f"{check.where}: has no patches to evaluate")
    return total
