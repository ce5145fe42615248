"""Ray Data reads of a dataset folder's Parquet files: validation per block, exact band statistics, normalisation.

The driver reads only footers and the ``patch_id`` column (:func:`open_dataset_files`), and the ``label`` column of a
training file that val/test splits are carved from; Ray Data's tasks read the pixels. The training split is scanned
once (every block checked with the format's row checks, per-band moments combined exactly with Chan's formulas) for
its band statistics; then each split is read, checked and normalised in ``map_batches``, and kept in the object store
only when it fits :data:`MATERIALIZE_SHARE` of it; a larger split is streamed from Parquet on every pass. A bad row
stops the run with the message :func:`data.reading.read_split` gives (file and row).

A folder that needs splits carved from ``train`` is carved as :func:`data.folder.read_dataset` carves it (stratified
by class, seeded) from the label column alone; each carved split's reads keep the rows whose patch ids it holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.exceptions import UserCodeException

from data.folder import check_ids_across_splits, check_split_metadata, split_files
from data.format import LABEL, PATCH_ID, PIXELS, SPLITS, PatchFileInfo, PatchFormatError, PatchMetadata, PatchRowError
from data.pipeline import LABEL_COLUMN, MIN_STD, PIXELS_COLUMN, BandStats, normalise
from data.reading import check_rows, read_file_info, read_labels, read_patch_ids
from data.splitting import DEFAULT_SPLIT_SEED, carve_rows
from data.storage import locate, shown

# Largest share of the cluster's object-store memory that the materialised splits (normalised float32 pixels) may
# take together; beyond it every split is streamed from Parquet on each pass. PBT members share one copy.
MATERIALIZE_SHARE = 0.3
# Blocks of each materialised split: enough that two or more workers each get several, and that shuffling blocks
# mixes the order.
DEFAULT_BLOCKS = 8
# Ray Data 2.60's Parquet reader lists a read's files on a pool of footer-reading actors (32 by default, whatever
# the number of files) and kills the pool once the listing is done: the actors not yet started count as failed tasks
# on the dashboard, in a run where nothing failed, and each is one more process to start. One actor reads the small
# footers of our few files, concurrently. Read by Ray where a read is planned, in this process; a value the user set
# is kept.
FOOTER_ACTORS_SETTING = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
FOOTER_ACTORS = 1
# Rows per batch of the driver's own pass over a split (the baselines), about 14 MB of the default dataset's patches.
DRIVER_BATCH_ROWS = 4096

T = TypeVar("T")


class BlockRowError(PatchFormatError, UserCodeException):
    """A bad row found in a Ray Data block, named by its patch id (a block does not know where it starts in the file).

    A :class:`ray.exceptions.UserCodeException`, so that Ray Data reports it as the user's error, not its own.

    Args:
        path: The input file.
        patch_id: The id of the bad row.
        problem: What is wrong with it.
    """

    def __init__(self, path: str, patch_id: str, problem: str) -> None:
        self.path, self.patch_id, self.problem = path, patch_id, problem
        super().__init__(f"{path}: patch {patch_id!r}: {problem}")

    def __reduce__(self) -> tuple:
        return type(self), (self.path, self.patch_id, self.problem)


def validate_block(block: pa.Table, path: str, metadata: PatchMetadata) -> dict[str, np.ndarray]:
    """Check one block of the input with the format's row checks; its ids and pixels, shape (N, C, H, W).

    Raises:
        BlockRowError: A row's pixels or label are bad.
        PatchFormatError: A column has the wrong type.
    """
    ids = np.asarray(block.column(PATCH_ID).to_pylist(), dtype=object)
    pixels, _ = _checked(block, path, metadata)
    return {PATCH_ID: ids, PIXELS: pixels}


def _checked(block: pa.Table, path: str, metadata: PatchMetadata) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`data.reading.check_rows` of a block, a bad row named by its patch id."""
    try:
        return check_rows(block, path, metadata)
    except PatchRowError as err:
        raise BlockRowError(path, block.column(PATCH_ID)[err.row].as_py(), err.problem) from None


def with_file_rows(path: str | os.PathLike, run: Callable[[], T]) -> T:
    """``run()``, with a :class:`BlockRowError` turned into the :class:`PatchRowError` naming the file's row.

    Only this failure path reads the ids again, to find the row ``read_split`` would name.
    """
    try:
        return run()
    except BlockRowError as err:
        ids = read_patch_ids(path).tolist()
        raise PatchRowError(path, ids.index(err.patch_id), err.problem) from None


@dataclass(frozen=True)
class DatasetFiles:
    """A dataset folder's split files as their footers describe them (no pixels read).

    Attributes:
        metadata: The metadata every split agrees on.
        files: Each split's file (a path or URI), by split name (``train``, ``val``, ``test``); carved splits share
            the training file.
        infos: Each split's file's footer, by split name.
        rows: For the splits carved from the training file, the rows of that file each one takes (sorted).
        ids: For the same splits, the patch ids of those rows (what Ray Data's blocks are filtered by).
    """

    metadata: PatchMetadata
    files: dict[str, str]
    infos: dict[str, PatchFileInfo]
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    ids: dict[str, pa.Array] = field(default_factory=dict)

    def num_rows(self, split: str) -> int:
        """Patches in a split."""
        return len(self.rows[split]) if split in self.rows else self.infos[split].num_rows


def open_dataset_files(folder: str | os.PathLike, *, seed: int = DEFAULT_SPLIT_SEED) -> DatasetFiles:
    """A dataset folder's files, footers and patch ids, checked, and its carved splits planned (no pixels read).

    Checks what :func:`data.folder.read_dataset` checks without reading pixels: each footer, the splits' agreement
    on the metadata, and the patch ids (none empty, none repeated within or across splits). The rows are checked by
    the Ray Data reads. A folder without ``val`` or ``test`` (or with a single unsplit file) has them carved from the
    training file as ``read_dataset`` carves them, stratified by class with ``seed``, from its label column alone.

    Raises:
        PatchFormatError: The folder is not a dataset, a footer or a label is bad, the splits disagree, an id is
            empty or repeated, or a carved split would be empty.
    """
    files = split_files(folder)
    infos = {name: read_file_info(path) for name, path in files.items()}
    for name, info in infos.items():
        check_split_metadata(files[name], info.metadata, infos["train"].metadata, files["train"])
    ids = {name: read_patch_ids(path) for name, path in files.items()}
    check_ids_across_splits(ids, shown(folder))
    metadata = infos["train"].metadata
    missing = [name for name in SPLITS if name not in files]
    if not missing:
        return DatasetFiles(metadata=metadata, files=files, infos=infos)
    rows = carve_rows(read_labels(files["train"], metadata), missing, seed, files["train"])
    carved = {name: pa.array(ids["train"][part].tolist(), type=pa.string()) for name, part in rows.items()}
    files.update({name: files["train"] for name in missing})
    infos.update({name: infos["train"] for name in missing})
    return DatasetFiles(metadata=metadata, files=files, infos=infos, rows=rows, ids=carved)


def _kept(block: pa.Table, keep: pa.Array | None) -> pa.Table:
    """The rows of a block that belong to the split (all of them unless the split is carved)."""
    return block if keep is None else block.filter(pc.is_in(block.column(PATCH_ID), value_set=keep))


def _block_moments(
    block: pa.Table, path: str, metadata: PatchMetadata, keep: pa.Array | None = None
) -> dict[str, np.ndarray]:
    """One row per block: its patch count, per-band mean and sum of squared deviations, and label counts."""
    pixels, labels = _checked(_kept(block, keep), path, metadata)
    if len(pixels) == 0:  # a block of a carved split's file holding none of its rows
        empty = np.zeros((1, metadata.num_bands))
        return {"values": np.array([0]), "mean": empty, "m2": empty, "labels": np.zeros((1, metadata.num_classes))}
    values = pixels.astype(np.float64).transpose(1, 0, 2, 3).reshape(metadata.num_bands, -1)  # (C, N*H*W)
    mean = values.mean(axis=1)
    m2 = ((values - mean[:, None]) ** 2).sum(axis=1)
    counts = np.bincount(labels, minlength=metadata.num_classes)
    return {"values": np.array([values.shape[1]]), "mean": mean[None], "m2": m2[None], "labels": counts[None]}


def combine_moments(counts: np.ndarray, means: np.ndarray, m2s: np.ndarray) -> BandStats:
    """Exact band statistics from per-block moments (Chan et al.'s pairwise update, population std).

    Args:
        counts: Values per band in each block, shape (B,).
        means: Each block's per-band mean, shape (B, C).
        m2s: Each block's per-band sum of squared deviations from its mean, shape (B, C).
    """
    total, mean, m2 = 0.0, np.zeros(means.shape[1]), np.zeros(means.shape[1])
    for n, block_mean, block_m2 in zip(counts.astype(np.float64), means, m2s, strict=True):
        if n == 0:
            continue
        delta = block_mean - mean
        combined = total + n
        mean = mean + delta * (n / combined)
        m2 = m2 + block_m2 + delta**2 * (total * n / combined)
        total = combined
    return BandStats(mean=mean, std=np.maximum(np.sqrt(m2 / total), MIN_STD))


def read_parquet(path: str, **options: Any) -> Any:
    """``ray.data.read_parquet(path, **options)`` with :data:`FOOTER_ACTORS` footer readers (Ray connected)."""
    import ray.data

    if FOOTER_ACTORS_SETTING in os.environ:
        return ray.data.read_parquet(path, **options)
    os.environ[FOOTER_ACTORS_SETTING] = str(FOOTER_ACTORS)
    try:
        return ray.data.read_parquet(path, **options)
    finally:
        os.environ.pop(FOOTER_ACTORS_SETTING, None)


def _prepare_context() -> None:
    import ray.data

    # A BlockRowError reaches the driver as itself (with its fields), not as Ray's wrapper of it.
    ray.data.DataContext.get_current().raise_original_map_exception = True


def streamed_band_stats(files: DatasetFiles) -> tuple[BandStats, np.ndarray]:
    """Scan the training split in Ray Data: every row checked, band statistics exact (Ray connected).

    Returns:
        The statistics and the count of each class in the split.

    Raises:
        PatchRowError: A row is bad (the message names the file and row).
        PatchFormatError: A column has the wrong type.
    """
    _prepare_context()
    path = str(files.files["train"])
    ds = read_parquet(path).select_columns([PATCH_ID, PIXELS, LABEL])
    ds = ds.map_batches(
        _block_moments,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"path": path, "metadata": files.metadata, "keep": files.ids.get("train")},
    )
    rows = with_file_rows(path, ds.take_all)
    counts = np.array([int(np.asarray(r["values"]).reshape(-1)[0]) for r in rows])
    means = np.stack([np.asarray(r["mean"], dtype=np.float64).reshape(-1) for r in rows])
    m2s = np.stack([np.asarray(r["m2"], dtype=np.float64).reshape(-1) for r in rows])
    labels = np.sum([np.asarray(r["labels"]).reshape(-1) for r in rows], axis=0)
    return combine_moments(counts, means, m2s), labels


def _normalised_block(
    block: pa.Table, path: str, metadata: PatchMetadata, stats: BandStats, keep: pa.Array | None = None
) -> dict[str, np.ndarray]:
    """A block's rows of the split, checked and normalised: ``pixels`` float32 (N, C, H, W), ``label`` int64."""
    pixels, labels = _checked(_kept(block, keep), path, metadata)
    return {PIXELS_COLUMN: normalise(pixels, stats), LABEL_COLUMN: labels}


def fits_object_store(
    files: DatasetFiles, splits: tuple[str, ...] = ("train", "val"), object_store_bytes: float | None = None
) -> bool:
    """Whether the splits' normalised pixels together fit :data:`MATERIALIZE_SHARE` of the object store.

    Splits that do are read once and kept there; the others are read from Parquet on every pass, by Ray Data tasks
    that need CPUs of their own while the workers train.

    Args:
        files: The dataset's files.
        splits: Which splits.
        object_store_bytes: The cluster's object-store memory (None: ask Ray, which must be connected).
    """
    if object_store_bytes is None:
        import ray

        object_store_bytes = ray.cluster_resources().get("object_store_memory", 0.0)
    values = files.metadata.values_per_patch
    needed = sum(files.num_rows(name) * values * np.dtype(np.float32).itemsize for name in splits)
    return needed <= MATERIALIZE_SHARE * object_store_bytes


def stream_ray_datasets(
    files: DatasetFiles,
    stats: BandStats,
    splits: tuple[str, ...] = ("train", "val"),
    object_store_bytes: float | None = None,
    blocks: int = DEFAULT_BLOCKS,
) -> dict[str, Any]:
    """Ray datasets of the splits, read, checked and normalised by Ray Data (Ray connected).

    The splits are materialised (``train`` then in a shuffled block order) when their normalised pixels together fit
    :data:`MATERIALIZE_SHARE` of the object store, and raise a bad row's error here; otherwise each pass streams them
    from Parquet, and a bad row stops the run with its error.

    Args:
        files: The dataset's files.
        stats: Band statistics of the training split.
        splits: Which splits to build.
        object_store_bytes: The cluster's object-store memory (None: ask Ray).
        blocks: Blocks of each materialised split, so that several workers each get several.
    """
    _prepare_context()
    keep = fits_object_store(files, splits, object_store_bytes)
    built = {}
    for name in splits:
        path = str(files.files[name])
        ds = read_parquet(path).select_columns([PATCH_ID, PIXELS, LABEL])
        ds = ds.map_batches(
            _normalised_block,
            batch_format="pyarrow",
            batch_size=None,
            fn_kwargs={"path": path, "metadata": files.metadata, "stats": stats, "keep": files.ids.get(name)},
        )
        if keep:
            ds = with_file_rows(path, ds.repartition(min(blocks, files.num_rows(name))).materialize)
            if name == "train":
                ds = ds.randomize_block_order()
        built[name] = ds
    return built


def split_batches(files: DatasetFiles, split: str, rows: int = DRIVER_BATCH_ROWS) -> Iterator[tuple[np.ndarray, ...]]:
    """A split's raw pixels (B, C, H, W) and labels (B,), batch by batch, read in this process.

    Raises:
        PatchRowError: A row is bad (naming the file and row).
    """
    path = files.files[split]
    source = locate(path)
    keep = None
    if split in files.rows:  # a carved split: its rows of the training file
        keep = np.zeros(files.infos[split].num_rows, dtype=bool)
        keep[files.rows[split]] = True
    start = 0
    reader = pq.ParquetFile(source.path, filesystem=source.filesystem)
    for batch in reader.iter_batches(batch_size=rows, columns=[PIXELS, LABEL]):
        table = pa.Table.from_batches([batch])
        positions = np.arange(start, start + len(batch))  # the rows of the file this batch holds
        start += len(batch)
        if keep is not None:
            positions = positions[keep[positions]]
            table = table.take(pa.array(positions - (start - len(batch))))
            if len(positions) == 0:
                continue
        try:
            yield check_rows(table, path, files.metadata)
        except PatchRowError as err:
            raise PatchRowError(path, positions[err.row], err.problem) from None
