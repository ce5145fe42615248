"""Batch prediction: stream a patch file through a pool of Ray Data model actors into Parquet predictions.

The input is read with ``ray.data.read_parquet`` and checked block by block with the patch format's own checks
(:func:`data.format.check_rows`); each model actor loads the bundle once and classifies batches; the predictions are
written with ``write_parquet`` under a temporary name beside the output and renamed when complete. The driver reads
only footers, the ``patch_id`` column (the one whole-file check: unique ids) and, after the write, the ids, labels and
predicted labels batch by batch, to check order and count a confusion matrix. It never holds pixels or all the
predictions.

Output rule: an ``output`` ending in ``.parquet`` is one Parquet file; any other name is a folder of part files
(``<write id>_<task>-<n>.parquet``, in input order by name).

Input and output may be local paths or object-store URIs (``s3://bucket/prefix``: anything :mod:`data.storage`
resolves); the model bundle is a local folder. Ray Data reads and writes the store directly, so every node of a
cluster can. An object store has no rename: a stored output is written under ``.<name>.<random>.tmp/`` beside it and
its objects are moved into place one by one once complete and checked (a file output is one object, which appears
whole); a failure before that deletes the temporary prefix, and a failure while moving takes the moved parts back
out, so nothing that looks finished is left.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import torch

from data.atomic import OutputLocationError, check_creatable, write_folder_atomic
from data.format import (
    DATASET_FILES,
    LABEL,
    PARQUET_SUFFIX,
    PATCH_ID,
    PIXELS,
    SPLITS,
    PatchFileInfo,
    child,
    read_dataset,
    read_file_info,
    read_patch_ids,
    write_split,
)
from data.messages import brief_list
from data.storage import Location, StorageError, check_reachable, is_uri, locate, move_files, shown
from data.streaming import validate_block, with_file_rows
from workflows.serving.bundle import Bundle, PredictionMode, check_compatible, load_bundle
from workflows.serving.evaluate import PREDICT_BATCH_SIZE, confusion_metrics
from workflows.training.cluster import cluster_cpus, connect
from workflows.training.ray_private import hide_user_code_error_notes

log = logging.getLogger(__name__)

PREDICTED_LABEL = "predicted_label"
PROBABILITY_PREFIX = "prob_"
OUTPUT_METADATA_KEY = "predictions"
# Names write_parquet gives its files: "<dataset id>_<write id>_<task index, 6 digits>-<file of the task>.parquet".
PART_FILE = re.compile(r"(?:[A-Za-z0-9]+_)?[0-9a-f]+_(?P<task>[0-9]{6,})-(?P<file>[0-9]+)\.parquet")
# Rows per part file of a folder output: about 2 MB of predictions a part, so a big run is tens of files, not
# thousands, and each is written as soon as its rows are ready.
PART_ROWS = 50_000
# Bytes per Ray Data block: about 4,500 patches of 14 x 8 x 8, small enough to spread a file over the actors and
# large enough to keep a block's overhead far below its forward passes.
BLOCK_BYTES = 16 * 1024**2
# CPUs each model actor holds; its torch intra-op threads are as many.
ACTOR_CPUS = 1
# The actor pool leaves one CPU of the cluster to the read, validation and write tasks, which reserve it: with the
# pool holding every CPU the streamed read stalled for good here (Ray 2.60, 2 CPUs, 0-CPU reads included), and with
# 0-CPU tasks beside a smaller pool Ray Data wrote whole blocks out of order at 50,000 patches (preserve_order set).
IO_TASK_CPUS = 1
IO_RESERVED_CPUS = 1
# Rows per batch of the driver's check of the written predictions (ids and labels only: a few hundred KB).
CHECK_ROWS = 16_384
# A progress line each time another tenth of the patches is classified, looked at this often.
PROGRESS_STEPS = 10
PROGRESS_POLL_S = 1.0


@dataclass(frozen=True)
class PredictConfig:
    """One prediction run; the fields are predict.py's flags.

    Attributes:
        model: The model bundle folder (local).
        input: A Parquet file of patches or a dataset folder: a local path, or an object-store URI (kept a ``str``).
        output: A Parquet file (a name ending in ``.parquet``) or a folder of part files (any other name): a local
            path, or an object-store URI (kept a ``str``).
        split: The split classified when ``input`` is a dataset folder.
        overwrite: Replace an existing output.
        batch_size: Patches per forward pass.
        ensemble: Average all the bundle's members (False: its best alone); None: the bundle's mode.
        tta: Average over the test-time augmentation views (False: none); None: the bundle's mode.
        concurrency: Model actors; None (and at most): one per cluster CPU but one, kept for reading and writing.
        address: Ray cluster address (``local`` starts a private one); None: join one or start one.
        num_cpus: CPUs of a newly started local cluster; None: all.
    """

    model: Path
    input: Path | str
    output: Path | str
    split: str = "test"  # the held-out split: what a model is usually run on
    overwrite: bool = False  # predictions are never replaced unless asked
    batch_size: int = PREDICT_BATCH_SIZE  # the in-process evaluation's batch: same memory, same speed per call
    ensemble: bool | None = None  # the bundle records how it was meant to predict
    tta: bool | None = None  # likewise
    concurrency: int | None = None  # single-threaded actors on all CPUs but the one reading and writing
    address: str | None = None  # RAY_ADDRESS or a running local cluster, else a new one (workflows/training/cluster.py)
    num_cpus: int | None = None  # a new local cluster takes the whole machine

    def __post_init__(self) -> None:
        if is_uri(self.model):
            raise ValueError(
                f"--model {shown(self.model)}: must be a local bundle folder; copy the bundle to this machine first"
            )
        object.__setattr__(self, "model", Path(self.model))
        for name in ("input", "output"):  # a URI stays a string: a Path would fold its "//"
            value = getattr(self, name)
            object.__setattr__(self, name, shown(value) if is_uri(value) else Path(value))
        if self.batch_size < 1 or (self.concurrency is not None and self.concurrency < 1):
            raise ValueError("--batch-size and --concurrency must be at least 1")
        if self.split not in SPLITS:
            raise ValueError(f"--split {self.split!r}: expected one of {', '.join(SPLITS)}")


@dataclass(frozen=True)
class PredictResult:
    """What a prediction run did.

    Attributes:
        output: The Parquet file or folder written (a path, or a URI as a ``str``).
        patches: Patches classified.
        seconds: Ray start-up and inference (writing and checking the output included).
        startup_seconds: Connecting to or starting Ray.
        inference_seconds: Reading, classifying, writing and checking.
        accuracy: Accuracy against the input's labels; None for unlabelled input.
        macro_f1: Macro-F1 against the input's labels; None for unlabelled input.
    """

    output: Path | str
    patches: int
    seconds: float
    startup_seconds: float
    inference_seconds: float
    accuracy: float | None = None
    macro_f1: float | None = None


def probability_column(class_name: str) -> str:
    """Name of the output column holding the probability of one class."""
    return f"{PROBABILITY_PREFIX}{class_name}"


def is_folder_output(path: Path | str | Location) -> bool:
    """Whether ``path`` names a folder of part files (any name not ending in ``.parquet``) rather than one file."""
    return not str(path).rstrip("/").rsplit("/", 1)[-1].endswith(PARQUET_SUFFIX)


class Predictor:
    """Ray Data callable class: each actor loads the bundle once, then classifies batches of raw pixels.

    Args:
        bundle_dir: The model bundle folder.
        threads: Torch intra-op threads of this actor (one per CPU it holds).
        ensemble: Average all the bundle's members (False: the best alone); None: the bundle's default.
        tta: Average over its test-time augmentation views (False: none); None: the bundle's default.
        batch_size: Patches per forward pass; a block is classified in slices of this many.
        counter: A :class:`PatchCounter` actor told how many patches each block held, for the driver's progress.
    """

    def __init__(
        self,
        bundle_dir: str,
        threads: int = ACTOR_CPUS,
        ensemble: bool | None = None,
        tta: bool | None = None,
        batch_size: int = PREDICT_BATCH_SIZE,
        counter: Any = None,
    ) -> None:
        torch.set_num_threads(threads)
        self.batch_size = batch_size
        self.counter = counter
        self.bundle = load_bundle(bundle_dir)
        self.ensemble, self.tta = ensemble, tta
        self.classes = np.asarray(self.bundle.metadata.classes, dtype=object)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Patch ids, predicted class names and class probabilities of one batch (a whole block)."""
        pixels = np.asarray(batch[PIXELS], dtype=np.float32)  # (B, C, H, W), raw values
        slices = [
            self.bundle.predict_probabilities(pixels[start : start + self.batch_size], self.ensemble, self.tta)
            for start in range(0, len(pixels), self.batch_size)
        ]
        probabilities = np.concatenate(slices)  # (B, K)
        out = {PATCH_ID: batch[PATCH_ID], PREDICTED_LABEL: self.classes[probabilities.argmax(axis=1)]}
        for k, name in enumerate(self.bundle.metadata.classes):
            out[probability_column(name)] = probabilities[:, k]
        if self.counter is not None:
            self.counter.add.remote(len(pixels))  # not waited for: progress must never slow the work
        return out


@ray.remote(num_cpus=0)
class PatchCounter:
    """How many patches the model actors have classified so far (a tiny actor the driver asks for progress)."""

    def __init__(self) -> None:
        self.done = 0

    def add(self, patches: int) -> None:
        """Count another block."""
        self.done += patches

    def count(self) -> int:
        """Patches classified so far."""
        return self.done


def _count(counter: Any) -> int:
    """What a :class:`PatchCounter` holds, or 0 when it cannot say (a progress line is never worth a failure)."""
    try:
        return int(ray.get(counter.count.remote(), timeout=PROGRESS_POLL_S * 10))
    except Exception:  # noqa: BLE001 - a lost or slow counter only costs progress lines
        return 0


def report_progress(
    count: Callable[[], int], total: int, say: Callable[[str], None], stop: threading.Event, poll_s: float
) -> None:
    """Say ``predicted N/total patches (rate/s)`` each time another tenth is done, until ``stop`` is set.

    Args:
        count: Patches done so far.
        total: Patches in all.
        say: Where the lines go.
        stop: Set by the caller when the work has ended.
        poll_s: Seconds between looks at ``count``.
    """
    started, step = time.perf_counter(), total / PROGRESS_STEPS
    next_line = step
    while not stop.wait(poll_s):
        done = count()
        if done >= next_line and done < total:
            rate = done / max(time.perf_counter() - started, 1e-9)
            say(f"predicted {done}/{total} patches ({rate:.0f}/s)")
            next_line = (done // step + 1) * step


def check_output(path: Path | str, overwrite: bool) -> None:
    """Refuse an output that exists (unless ``overwrite``), is the wrong kind, or whose folder cannot be written.

    Raises:
        FileExistsError: The output exists and may not be replaced, or is a folder of other files.
        OutputLocationError: A part of the output's folder is a file, or it is not writable (a URI: a whole bucket).
        StorageError: The object store cannot be asked.
    """
    if is_uri(path):
        _check_stored_output(locate(path, "--output"), overwrite)
        return
    path = Path(path)
    if is_folder_output(path):
        check_creatable(path, "--output", folder=True)
        if path.is_symlink():
            raise FileExistsError(f"{path}: is a symbolic link; choose another --output")
        if path.is_dir():
            foreign = sorted(e.name for e in path.iterdir() if not (e.is_file() and PART_FILE.fullmatch(e.name)))
            if foreign:
                raise FileExistsError(
                    f"{path}: is a folder holding {brief_list(foreign)}, not only prediction part files; choose "
                    "another --output"
                )
            if not overwrite:
                raise FileExistsError(f"{path}: already exists; pass --overwrite or choose another --output")
        return
    if path.is_dir():
        raise FileExistsError(f"{path}: is a folder; --output must name a Parquet file")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{path}: already exists; pass --overwrite or choose another --output")
    check_creatable(path, "--output")


def _check_stored_output(output: Location, overwrite: bool) -> None:
    """:func:`check_output` for an object-store output: the same refusals, asked of the store."""
    if "/" not in output.path.strip("/"):
        raise OutputLocationError(f"--output {output}: is a whole bucket; name a file or folder inside it")
    kind = output.kind()
    if is_folder_output(output):
        if kind == pafs.FileType.File:
            raise OutputLocationError(f"--output {output}: is a file, not a folder; choose a folder")
        if kind == pafs.FileType.Directory:
            files = set(output.files())
            foreign = [name for name in output.names() if name not in files or not PART_FILE.fullmatch(name)]
            if foreign:
                raise FileExistsError(
                    f"{output}: is a folder holding {brief_list(foreign)}, not only prediction part files; choose "
                    "another --output"
                )
            if not overwrite:
                raise FileExistsError(f"{output}: already exists; pass --overwrite or choose another --output")
        return
    if kind == pafs.FileType.Directory:
        raise FileExistsError(f"{output}: is a folder; --output must name a Parquet file")
    if kind == pafs.FileType.File and not overwrite:
        raise FileExistsError(f"{output}: already exists; pass --overwrite or choose another --output")


def check_not_a_source(output: Path | str, input_path: Path | str, bundle_dir: Path) -> None:
    """Refuse an output that is the input, inside the input dataset folder, or inside the model bundle.

    Paths are compared resolved (symbolic links followed) and, where both exist, with ``os.path.samefile`` (hard
    links), so no spelling of the path lets the predictions replace what they are computed from. URIs are compared
    by their paths in the store (an object store has no links).

    Raises:
        FileExistsError: One line naming what the output would replace.
    """
    if not is_uri(output) and _inside(Path(output), bundle_dir):
        raise FileExistsError(
            f"--output {output}: is inside the --model bundle folder {bundle_dir}; choose another --output"
        )
    if is_uri(output) or is_uri(input_path):
        if is_uri(output) and is_uri(input_path):
            _check_not_a_stored_source(locate(output, "--output"), locate(input_path, "--input"))
        return  # one local and one stored: never the same
    output, input_path = Path(output), Path(input_path)
    if input_path.is_dir():
        if _inside(output, input_path):
            kind = "a folder" if is_folder_output(output) else "a Parquet file"
            raise FileExistsError(
                f"--output {output}: is {kind} inside the --input dataset folder {input_path}, which would "
                "change the dataset; choose another --output"
            )
        sources: Iterable[Path] = [input_path / name for name in DATASET_FILES] + sorted(input_path.glob("*.parquet"))
    else:
        sources = [input_path]
    for source in sources:
        if _same_file(output, source):
            raise FileExistsError(
                f"--output {output}: is the input file {source}; predictions must not replace the patches, choose "
                "another --output"
            )


def _check_not_a_stored_source(output: Location, source: Location) -> None:
    """:func:`check_not_a_source` for an output and an input that are both URIs."""
    if output.filesystem.type_name != source.filesystem.type_name:
        return
    if source.is_dir():
        if output.path == source.path or output.path.startswith(f"{source.path}/"):
            kind = "a folder" if is_folder_output(output) else "a Parquet file"
            raise FileExistsError(
                f"--output {output}: is {kind} inside the --input dataset folder {source}, which would change the "
                "dataset; choose another --output"
            )
    elif output.path == source.path:
        raise FileExistsError(
            f"--output {output}: is the input file {source}; predictions must not replace the patches, choose "
            "another --output"
        )


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file: through symbolic links (resolved) or hard links (same inode)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies within it, symbolic links resolved."""
    folder = folder.resolve()
    return path.resolve() == folder or folder in path.resolve().parents


def _in_part_order(names: Iterable[str]) -> list[str]:
    """The part-file names among ``names``, in input order (by task, then file of the task)."""
    matched = []
    for name in names:
        match = PART_FILE.fullmatch(name)
        if match:
            matched.append((int(match["task"]), int(match["file"]), name))
    return [name for *_, name in sorted(matched)]


def part_files(folder: Path) -> list[Path]:
    """The part files write_parquet left in ``folder``, in input order (by task, then file of the task)."""
    return [folder / name for name in _in_part_order(path.name for path in folder.iterdir())]


def stored_parts(folder: Location) -> list[Location]:
    """:func:`part_files` of a folder on any file system (a local one or an object store)."""
    return [folder.join(name) for name in _in_part_order(folder.files())]


@contextmanager
def input_file(path: Path | str, split: str) -> Iterator[tuple[str, str]]:
    """The Parquet file to stream (a path or a URI) and the name messages give it: the file, or a dataset's split.

    Raises:
        PatchFormatError: A dataset folder without the split cannot be carved (see :func:`data.format.read_dataset`).
        StorageError: The object store cannot be asked.
    """
    if not locate(path, "--input").is_dir():
        yield str(path), str(path)
        return
    split_file = child(path, f"{split}{PARQUET_SUFFIX}")
    if locate(split_file, "--input").is_file():
        yield split_file, split_file
        return
    # A folder of one unsplit file (or without this split): read_dataset carves the splits in memory, stratified by
    # class with a fixed seed, which needs every label at once and cannot stream. The carved split is written to a
    # local temporary file and streamed from there like any other (so on a cluster of several nodes, only a folder
    # that holds the split streams from every node).
    dataset = read_dataset(path)
    with tempfile.TemporaryDirectory(prefix="predict-input-") as tmp:
        carved = Path(tmp) / f"{split}{PARQUET_SUFFIX}"
        write_split(carved, dataset.splits[split], dataset.metadata)
        del dataset
        yield str(carved), split_file


@contextmanager
def staged_output(output: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside ``output`` for write_parquet; on success the output is renamed into place.

    A file output takes the folder's single part file; a folder output is the folder itself, swapped in (an older
    predictions folder is replaced only with ``overwrite``). On failure nothing is left.

    Raises:
        FileExistsError: Something appeared at ``output`` meanwhile.
        RuntimeError: A file output's folder does not hold exactly one part file.
    """
    if is_folder_output(output):
        owned = {p.name for p in part_files(output)} if output.is_dir() else set()
        with write_folder_atomic(output, owned, "predictions", overwrite=overwrite) as tmp:
            yield tmp
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        yield tmp
        parts = part_files(tmp)
        if len(parts) != 1:
            raise RuntimeError(f"Ray Data wrote {len(parts)} files for the single --output file {output}")
        check_output(output, overwrite)  # nobody wrote it meanwhile
        os.replace(parts[0], output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def staged_stored_output(output: Location, overwrite: bool) -> Iterator[Location]:
    """:func:`staged_output` in an object store: a temporary prefix beside ``output``, its objects moved in at the end.

    An object store has no rename of folders. A file output is its single part, moved (copied, then deleted: the
    object appears whole). A folder output gets each new part moved in, and only then are the previous parts (with
    ``overwrite``) deleted; if a move fails, the parts moved so far are deleted again, so the folder is left as it was.
    The temporary prefix is deleted in any case.

    Raises:
        FileExistsError: Something appeared at ``output`` meanwhile.
        RuntimeError: A file output's prefix does not hold exactly one part file.
        StorageError: The store refused; if older parts could not be deleted after the new ones were moved in, the
            message says so and names the folder.
    """
    parent = output.at(output.path.rsplit("/", 1)[0])
    tmp = parent.join(f".{output.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        parts = stored_parts(tmp)
        if not is_folder_output(output) and len(parts) != 1:
            raise RuntimeError(f"Ray Data wrote {len(parts)} files for the single --output file {output}")
        check_output(output.uri, overwrite)  # nobody wrote it meanwhile
        if is_folder_output(output):
            _move_parts_in(tmp, parts, output)
        else:
            parts[0].move(output)
    finally:
        with suppress(StorageError):  # the run's own error, if any, is the one to report
            tmp.delete()


def _move_parts_in(tmp: Location, parts: list[Location], output: Location) -> None:
    """Move a temporary prefix's part files into the folder ``output``, then delete the parts it held before."""
    older = stored_parts(output)  # check_output allowed nothing else there
    try:
        move_files(tmp, output)
    except BaseException:
        for part in parts:
            with suppress(StorageError):
                output.join(part.name).delete()
        raise
    try:
        for part in older:
            part.delete()
    except StorageError as err:
        raise StorageError(
            f"--output {output}: the new predictions are in place but older part files could not be deleted ({err}); "
            f"delete whichever of {brief_list(part.name for part in older)} remain"
        ) from None


def output_schema(bundle: Bundle, model: Path, where: str) -> pa.Schema:
    """Columns of the predictions and the ``predictions`` metadata naming model, input and classes."""
    classes = list(bundle.metadata.classes)
    fields = [pa.field(PATCH_ID, pa.string()), pa.field(PREDICTED_LABEL, pa.string())]
    fields += [pa.field(probability_column(name), pa.float32()) for name in classes]
    body = {"model": str(model.resolve()), "input": where, "classes": classes}
    return pa.schema(fields, metadata={OUTPUT_METADATA_KEY: json.dumps(body)})


def write_predictions(
    source: str,
    info: PatchFileInfo,
    staging: Location,
    schema: pa.Schema,
    config: PredictConfig,
    concurrency: int,
    mode: PredictionMode,
    counter: Any = None,
) -> None:
    """Stream ``source`` (a path or URI) through validation and the actor pool into part files in ``staging``.

    Ray must be connected; it reads and writes the file systems directly. ``counter`` (a :class:`PatchCounter`) is
    told of every classified block.

    Raises:
        PatchFormatError: A row of the input is bad; the message names the file and row as ``read_split`` does.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # output rows in input order
    context.target_max_block_size = BLOCK_BYTES
    # A BlockRowError then reaches the driver as itself (with its fields), not as Ray's wrapper of it.
    context.raise_original_map_exception = True
    hide_user_code_error_notes()  # the one-line error below says it all
    columns = [PATCH_ID, PIXELS] + ([LABEL] if info.labelled else [])  # labels are read to be validated
    read = locate(source, "--input")
    ds = ray.data.read_parquet(read.path, filesystem=read.filesystem, num_cpus=IO_TASK_CPUS).select_columns(columns)
    ds = ds.map_batches(
        validate_block,
        batch_format="pyarrow",
        batch_size=None,  # whole blocks: the checks are vectorised
        fn_kwargs={"path": source, "metadata": info.metadata},  # the validated metadata, pickled as it is
        num_cpus=IO_TASK_CPUS,
    )
    ds = ds.map_batches(
        Predictor,
        fn_constructor_kwargs={
            "bundle_dir": str(config.model.resolve()),
            "threads": ACTOR_CPUS,
            "ensemble": mode.ensemble,
            "tta": mode.tta,
            "batch_size": config.batch_size,
            "counter": counter,
        },
        # Whole blocks, sliced into forward passes by the actor: with batch_size set here, Ray 2.60 wrote batches of
        # 1,024 rows out of order at 50,000 patches, preserve_order notwithstanding (check_predictions caught it).
        batch_size=None,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=ACTOR_CPUS,
    )
    # A folder output: parts of PART_ROWS rows (the last one shorter); a file output: one write task, one file.
    per_file = PART_ROWS if is_folder_output(config.output) else info.num_rows
    with_file_rows(
        source,
        lambda: ds.write_parquet(
            staging.path,
            filesystem=staging.filesystem,
            try_create_dir=staging.local,  # a store needs no folder; its empty marker objects would outlive the run
            schema=schema,
            compression="zstd",
            min_rows_per_file=per_file,
            max_rows_per_file=per_file,
            ray_remote_args={"num_cpus": IO_TASK_CPUS},
        ),
    )


def _aligned(left: Iterator[pa.RecordBatch], right: Iterator[pa.RecordBatch]) -> Iterator[tuple[pa.RecordBatch, ...]]:
    """Equal-length slices of two streams of batches, in order, until either ends."""
    a = b = None
    while True:
        while a is None or len(a) == 0:
            a = next(left, None)
            if a is None:
                return
        while b is None or len(b) == 0:
            b = next(right, None)
            if b is None:
                return
        n = min(len(a), len(b))
        yield a.slice(0, n), b.slice(0, n)
        a, b = a.slice(n), b.slice(n)


def _class_index(column: pa.Array, classes: list[str]) -> np.ndarray:
    return pc.index_in(column.cast(pa.string()), value_set=pa.array(classes)).to_numpy(zero_copy_only=False)


def _parquet(location: Location) -> pq.ParquetFile:
    return pq.ParquetFile(location.path, filesystem=location.filesystem)


def put_in_input_order(source: str, parts: list[Location]) -> list[Location]:
    """Rename the part files so that their names sort in input order; returns them in that order.

    Ray 2.60 numbers its write tasks in the order they start, not in input order: with an input of several row
    groups, the task holding the last rows was numbered first (seen at 200,000 patches in 65,536-row groups, with
    ``preserve_order`` set). Each part holds a run of consecutive input rows, so the input position of its first row
    orders the parts; :func:`check_predictions` then checks every row. Only the parts' first ids are looked up, in
    one pass over the input's ``patch_id`` column, batch by batch.
    """
    if len(parts) < 2:
        return parts
    firsts = {}
    for part in parts:
        ids = _parquet(part).read_row_group(0, columns=[PATCH_ID]).column(0) if _parquet(part).num_row_groups else []
        firsts[part.name] = str(ids[0]) if len(ids) else None
    wanted = pa.array(sorted({first for first in firsts.values() if first is not None}), type=pa.string())
    position: dict[str, int] = {}
    offset = 0
    for batch in _parquet(locate(source)).iter_batches(batch_size=CHECK_ROWS, columns=[PATCH_ID]):
        found = pc.index_in(batch.column(0).cast(pa.string()), value_set=wanted).to_numpy(zero_copy_only=False)
        for row in np.flatnonzero(~np.isnan(found.astype(float))):
            position.setdefault(wanted[int(found[row])].as_py(), offset + int(row))
        offset += len(batch)
    ordered = sorted(parts, key=lambda part: position.get(firsts[part.name] or "", offset))
    if ordered == parts:
        return parts
    # New names of one fresh write id, so that no rename lands on a part not yet renamed.
    prefix = parts[0].name.split("_", 1)[0]
    renamed = []
    fresh = uuid.uuid4().hex
    for rank, part in enumerate(ordered):
        target = part.at(part.path.rsplit("/", 1)[0]).join(f"{prefix}_{fresh}_{rank:06d}-0{PARQUET_SUFFIX}")
        part.move(target)
        renamed.append(target)
    return renamed


def check_predictions(source: str, info: PatchFileInfo, parts: list[Location], classes: list[str]) -> np.ndarray | None:
    """Check the part files hold every input row once, in order; count the confusion matrix when labelled.

    Reads ids and labels batch by batch through the file system layer (``source`` a path or URI), so memory does not
    grow with the data.

    Returns:
        The confusion matrix (rows: true class, columns: predicted), or None for unlabelled input.

    Raises:
        RuntimeError: Rows are missing, extra or out of order.
    """
    written = sum(_parquet(part).metadata.num_rows for part in parts)
    truth = [PATCH_ID] + ([LABEL] if info.labelled else [])
    left = _parquet(locate(source)).iter_batches(batch_size=CHECK_ROWS, columns=truth)
    right = (
        batch
        for part in parts
        for batch in _parquet(part).iter_batches(batch_size=CHECK_ROWS, columns=[PATCH_ID, PREDICTED_LABEL])
    )
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64) if info.labelled else None
    checked = 0
    for given, predicted in _aligned(left, right):
        if not given.column(PATCH_ID).cast(pa.string()).equals(predicted.column(PATCH_ID).cast(pa.string())):
            checked = -1
            break
        checked += len(given)
        if confusion is not None:
            rows = _class_index(given.column(LABEL), classes), _class_index(predicted.column(PREDICTED_LABEL), classes)
            np.add.at(confusion, rows, 1)
    if written != info.num_rows or checked != info.num_rows:
        raise RuntimeError(f"Ray Data wrote {written} rows for {info.num_rows} patches, or out of order")
    return confusion


def predict_run(config: PredictConfig, progress: Callable[[str], None] | None = None) -> PredictResult:
    """Validate everything, stream the inference into the output and check it; connects to (or starts) Ray.

    Args:
        config: The run.
        progress: Called with each progress line; None logs them.

    Raises:
        BundleError: The bundle is invalid or the input does not match it.
        PatchFormatError: The input is not in the patch format (a bad row: named by file and row).
        FileExistsError: The output exists and ``overwrite`` is false, or it would replace an input.
        OSError: The output cannot be written.
        ValueError: The output's folder cannot be written.
        StorageError: An input or output URI's bucket does not exist, or the store refuses access (one line naming
            the flag and the URI; checked before Ray starts).
    """
    say = progress or log.info
    for flag, value in (("--input", config.input), ("--output", config.output)):
        check_reachable(locate(value, flag), flag)
    check_not_a_source(config.output, config.input, config.model)  # first: it names what the output would replace
    check_output(config.output, config.overwrite)
    bundle = load_bundle(config.model)
    with input_file(config.input, config.split) as (source, where):
        info = read_file_info(source, require_labels=False)
        check_compatible(bundle.metadata, info.metadata, where, labelled=info.labelled)
        read_patch_ids(source)  # before Ray starts: the one check that needs every row
        started = time.perf_counter()
        started_ray = not ray.is_initialized()
        connect(config.address, config.num_cpus)
        try:
            connected = time.perf_counter()
            confusion = _classify(config, bundle, source, where, info, say)
            finished = time.perf_counter()
        finally:
            if started_ray:
                # Disconnect (and stop a cluster this call started) now, not at interpreter exit: torn down then, the
                # local GCS logged "KillActor RPC failed ... Socket closed" for the pool's actors after our output.
                ray.shutdown()
    metrics = confusion_metrics(confusion) if confusion is not None else {}
    return PredictResult(
        output=config.output,
        patches=info.num_rows,
        seconds=finished - started,
        startup_seconds=connected - started,
        inference_seconds=finished - connected,
        accuracy=metrics.get("accuracy"),
        macro_f1=metrics.get("macro_f1"),
    )


def _classify(
    config: PredictConfig, bundle: Bundle, source: str, where: str, info: PatchFileInfo, say: Callable[[str], None]
) -> np.ndarray | None:
    """Write and check the predictions on the connected cluster; the confusion matrix when the input is labelled."""
    started = time.perf_counter()
    cpus = max(1, int(cluster_cpus()))
    concurrency = min(config.concurrency or cpus, max(1, cpus - IO_RESERVED_CPUS), info.num_rows)
    mode = bundle.prediction_mode(config.ensemble, config.tta)
    members, views = len(bundle.models) if mode.ensemble else 1, len(bundle.views) if mode.tta else 1
    say(
        f"classifying {info.num_rows} patches from {where} with {concurrency} model actors "
        f"({members} member(s) x {views} view(s) each)"
    )
    counter = PatchCounter.remote()
    stop = threading.Event()
    progress = threading.Thread(
        target=report_progress,
        args=(functools.partial(_count, counter), info.num_rows, say, stop, PROGRESS_POLL_S),
        daemon=True,
    )
    progress.start()
    try:
        with _staging(config.output, config.overwrite) as staging:
            schema = output_schema(bundle, config.model, where)
            write_predictions(source, info, staging, schema, config, concurrency, mode, counter)
            parts = put_in_input_order(source, stored_parts(staging))
            confusion = check_predictions(source, info, parts, list(bundle.metadata.classes))
            rate = info.num_rows / max(time.perf_counter() - started, 1e-9)
            say(f"predicted {info.num_rows}/{info.num_rows} patches ({rate:.0f}/s)")
    finally:
        stop.set()
        progress.join()
        ray.kill(counter)
    return confusion


@contextmanager
def _staging(output: Path | str, overwrite: bool) -> Iterator[Location]:
    """Where Ray Data writes: :func:`staged_output` on a local disk, else :func:`staged_stored_output`."""
    if is_uri(output):
        with staged_stored_output(locate(output, "--output"), overwrite) as tmp:
            yield tmp
        return
    with staged_output(Path(output), overwrite) as tmp:
        yield locate(tmp)


def config_defaults() -> dict[str, object]:
    """The defaults of :class:`PredictConfig`, by field name, for the script's flags."""
    return {f.name: f.default for f in dataclasses.fields(PredictConfig) if f.default is not dataclasses.MISSING}
