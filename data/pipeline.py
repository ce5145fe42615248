"""The Ray Data pipeline: read and validate splits, band statistics of the training split, normalisation, augmentation.

The driver never holds pixels. :func:`band_stats` is one streaming pass of Ray Data over every file of the dataset
(from :func:`data.format.open_dataset`): each block is validated where it is read and reduced to per-band partial
moments of its training rows, and the driver merges those few numbers. :func:`build_ray_datasets` then reads the
training and validation splits again and normalises them in ``map_batches``; a split whose normalised pixels fit in
:data:`MATERIALISE_SHARE` of the object store is materialised there once, so an epoch only shuffles the block order,
and a larger one is streamed from Parquet every epoch. The workers shuffle rows locally and draw a random element of
the augmentation group per patch (by default one of the 8 flips/rotations of D4) with :class:`D4Collate`.

Importing this module does not import Ray (the bundle and the evaluation use its statistics and transforms); the
functions that build Ray datasets import it when called.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data.format import (
    LABEL,
    PATCH_ID,
    PIXELS,
    DatasetSource,
    PatchFormatError,
    PatchMetadata,
    check_file_decodes,
    corrupt_file_error,
    decode_labels,
    decode_pixels,
    first_row_problem,
    label_names_of,
    metadata_shape,
    patch_ids_of,
)

if TYPE_CHECKING:
    import ray.data

# Column names of the Ray datasets handed to the training workers.
PIXELS_COLUMN = PIXELS
LABEL_COLUMN = LABEL
# Column of the file each row came from, added by read_parquet(include_paths=True).
PATH_COLUMN = "path"

# A band whose training pixels barely vary is divided by this instead of ~0, so it cannot explode.
MIN_STD = 1e-6
# Patches converted to float64 at a time for the statistics (about 29 MB of 14 x 8 x 8 patches).
MOMENT_CHUNK_ROWS = 4096
# Largest share of the cluster's object store that materialised (normalised) splits may fill. Ray Data lets each
# execution keep up to half of the store in flight (its default limit fraction, 0.5 in Ray 2.60): 0.4 for the
# materialised splits leaves that half to the epoch's own pass (and the validation pass beside it) plus a margin, so
# holding the data never makes the store spill to disk. A split that does not fit is streamed from Parquet instead.
MATERIALISE_SHARE = 0.4
# Ray Data's Parquet reader: the older one (DataContext.use_datasource_v2 = False) here read and materialised the
# default training split in 0.24-0.3 s against 3.3-12.7 s with 2.60's default (2026-12-02, 2 cores, two runs each),
# and it cuts a file of one row group into as many blocks as asked; the new one made one block of a whole file.
USE_DATASOURCE_V2 = False
# Blocks of about this size once decoded, and at least MIN_BLOCKS of them: few enough that the per-block tasks cost
# little, enough that two or more workers each get several and a new block order mixes the epoch. Ray Data's
# default cut a 50,000-patch file into 354 blocks of 0.5 MB, which took 11 s to map where reading took 3 s.
BLOCK_BYTES = 32 * 2**20
MIN_BLOCKS = 8


@dataclass(frozen=True)
class BandStats:
    """Per-band mean and standard deviation of the training split.

    Attributes:
        mean: Mean of each band, shape (C,).
        std: Standard deviation of each band (at least ``MIN_STD``), shape (C,).
    """

    mean: np.ndarray
    std: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists, for checkpoints, bundles and JSON."""
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, body: Mapping[str, list[float]]) -> BandStats:
        """Inverse of :meth:`to_dict`."""
        return cls(mean=np.asarray(body["mean"], dtype=np.float64), std=np.asarray(body["std"], dtype=np.float64))


@dataclass(frozen=True)
class BandMoments:
    """Per-band count, mean and sum of squared deviations of some pixels, in float64; merges exactly.

    Two sets of pixels merge with Chan et al.'s pairwise update, so per-block moments computed anywhere combine into
    the mean and (population) standard deviation of all pixels, without the cancellation of a sum of squares.

    Attributes:
        count: Values per band (patches x height x width).
        mean: Mean of each band, shape (C,).
        m2: Sum of squared deviations from the mean of each band, shape (C,).
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, bands: int) -> BandMoments:
        """Moments of no pixels."""
        return cls(0, np.zeros(bands), np.zeros(bands))

    @classmethod
    def of(cls, pixels: np.ndarray) -> BandMoments:
        """Moments of pixels (N, C, H, W), ``MOMENT_CHUNK_ROWS`` patches at a time."""
        moments = cls.empty(pixels.shape[1])
        for start in range(0, len(pixels), MOMENT_CHUNK_ROWS):
            chunk = np.asarray(pixels[start : start + MOMENT_CHUNK_ROWS], dtype=np.float64)
            mean = chunk.mean(axis=(0, 2, 3))
            m2 = np.square(chunk - mean.reshape(1, -1, 1, 1)).sum(axis=(0, 2, 3))
            moments = moments.merge(cls(chunk.size // chunk.shape[1], mean, m2))
        return moments

    def merge(self, other: BandMoments) -> BandMoments:
        """Moments of both sets of pixels together."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + np.square(delta) * (self.count * other.count / count)
        return BandMoments(count, mean, m2)

    def band_stats(self) -> BandStats:
        """Mean and standard deviation (at least ``MIN_STD``) of each band."""
        return BandStats(mean=self.mean, std=np.maximum(np.sqrt(self.m2 / self.count), MIN_STD))


def compute_band_stats(pixels: np.ndarray) -> BandStats:
    """Mean and standard deviation of every band over all patches and pixels held in memory.

    Args:
        pixels: Training pixels, shape (N, C, H, W).
    """
    return BandMoments.of(pixels).band_stats()


def normalise(pixels: np.ndarray, stats: BandStats) -> np.ndarray:
    """Standardise each band with the given statistics; returns float32 of the same shape (N, C, H, W)."""
    mean = stats.mean.reshape(1, -1, 1, 1)
    std = stats.std.reshape(1, -1, 1, 1)
    return ((np.asarray(pixels, dtype=np.float64) - mean) / std).astype(np.float32)


def normalised_bytes(source: DatasetSource, name: str) -> int:
    """Bytes a split takes in the object store once normalised: float32 pixels and an int64 label per patch."""
    return source.rows(name) * (source.metadata.values_per_patch * np.dtype(np.float32).itemsize + 8)


def materialised_splits(
    sizes: Mapping[str, int], store_bytes: float, share: float = MATERIALISE_SHARE
) -> tuple[str, ...]:
    """The splits to materialise: in the given order, each while the running total fits in ``share`` of the store.

    Args:
        sizes: Bytes of each split once normalised (:func:`normalised_bytes`).
        store_bytes: The cluster's object store memory.
        share: Largest share of the store the materialised splits may fill.

    Returns:
        The names of the splits to materialise; the others are streamed from Parquet every pass.
    """
    budget, chosen = share * store_bytes, []
    for name, size in sizes.items():
        if size <= budget:
            chosen.append(name)
            budget -= size
    return tuple(chosen)


def _read_parquet(
    paths: Sequence[Path], rows: int, metadata: PatchMetadata, *, shuffle_files: bool = False
) -> ray.data.Dataset:
    """A lazy Ray dataset of the files' rows, with the ``path`` of each row's file, in blocks for about ``rows``."""
    import ray.data

    blocks = max(MIN_BLOCKS, math.ceil(rows * metadata.values_per_patch * np.dtype(np.float32).itemsize / BLOCK_BYTES))
    context = ray.data.DataContext.get_current()
    chosen, context.use_datasource_v2 = context.use_datasource_v2, USE_DATASOURCE_V2
    try:
        return ray.data.read_parquet(
            [_ray_path(path) for path in paths],
            include_paths=True,
            shuffle="files" if shuffle_files else None,
            override_num_blocks=blocks,
        )
    finally:
        context.use_datasource_v2 = chosen


def _ray_path(path: Path) -> str:
    """How a file is named to Ray and in its ``path`` column: absolute, so every worker finds it."""
    return str(Path(path).resolve())


def _by_file(block: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """The rows of a block grouped by the file they came from (a block seldom spans two), without the path column."""
    paths = block.column(PATH_COLUMN)
    rows = block.drop_columns([PATH_COLUMN])
    found = pc.unique(paths).to_pylist()
    if len(found) == 1:
        yield found[0], rows
        return
    for path in found:
        yield path, rows.filter(pc.equal(paths, path))


def _row_in_file(path: str, table: pa.Table, row: int) -> int:
    """The row of its file that row ``row`` of a block is, found by its (checked, unique) patch id."""
    pid = patch_ids_of(table)[row]
    ids = patch_ids_of(pq.read_table(path, columns=[PATCH_ID]))
    return pc.index(ids, pid).as_py()


def _problem_message(shown: str, path: str, table: pa.Table, problem: tuple[int, str]) -> tuple[int, str]:
    """The row in the file and the one-line error for a block's first bad row."""
    row = _row_in_file(path, table, problem[0])
    return row, f"{shown}: row {row}: {problem[1]}"


def _kept(table: pa.Table, keep: pa.Array | None) -> pa.Table:
    """The rows of a carved split (``keep``: its patch ids), or all rows."""
    return table if keep is None else table.filter(pc.is_in(patch_ids_of(table), value_set=keep))


def _checked_rows(block: pa.Table, files: Mapping[str, str], metadata: PatchMetadata) -> Iterator[tuple[str, pa.Table]]:
    """A block's rows by file, each group validated; raises the format's one-line error for the first bad row."""
    for path, rows in _by_file(block):
        problem = first_row_problem(rows, metadata)
        if problem is not None:
            raise PatchFormatError(_problem_message(files[path], path, rows, problem)[1])
        yield path, rows


def _raw_block(block: pa.Table, files: Mapping[str, str], metadata: PatchMetadata, keep: pa.Array | None) -> pa.Table:
    """Validated rows in the format's own types: ``patch_id`` and ``label`` strings, flat float32 ``pixels``."""
    values = metadata.values_per_patch
    schema = pa.schema([(PATCH_ID, pa.string()), (LABEL, pa.string()), (PIXELS, pa.list_(pa.float32(), values))])
    parts = [schema.empty_table()]  # a block may be empty
    for _, rows in _checked_rows(block, files, metadata):
        rows = _kept(rows, keep)
        flat = pa.array(decode_pixels(rows, metadata).reshape(-1), type=pa.float32())
        columns = [patch_ids_of(rows), label_names_of(rows), pa.FixedSizeListArray.from_arrays(flat, values)]
        parts.append(pa.Table.from_arrays(columns, schema=schema))
    return pa.concat_tables(parts)


def _normalised_block(
    block: pa.Table,
    files: Mapping[str, str],
    metadata: PatchMetadata,
    keep: pa.Array | None,
    mean: np.ndarray,
    std: np.ndarray,
) -> dict[str, np.ndarray]:
    """Validated rows as the workers take them: normalised ``pixels`` (B, C, H, W) float32 and ``label`` (B,) int64."""
    stats = BandStats(mean=mean, std=std)
    pixels = [np.zeros((0, *metadata_shape(metadata)), dtype=np.float32)]  # a block may be empty
    labels = [np.zeros(0, dtype=np.int64)]
    for _, rows in _checked_rows(block, files, metadata):
        rows = _kept(rows, keep)
        pixels.append(normalise(decode_pixels(rows, metadata), stats))
        labels.append(decode_labels(rows, metadata))
    return {PIXELS_COLUMN: np.concatenate(pixels), LABEL_COLUMN: np.concatenate(labels)}


def _split_arguments(source: DatasetSource, name: str) -> dict[str, Any]:
    split = source.splits[name]
    return {
        "files": {_ray_path(path): str(path) for path in split.files},
        "metadata": source.metadata,
        "keep": split.keep,
    }


def raw_split(source: DatasetSource, name: str) -> ray.data.Dataset:
    """One split as a lazy Ray dataset of the format's rows, validated block by block where they are read.

    Columns as the files hold them (:mod:`data.format`): ``patch_id`` and ``label`` (class name) strings and
    ``pixels`` (``fixed_size_list<float32>[C*H*W]``, band-major, not normalised). A carved split keeps only its own
    rows. A bad row raises :class:`data.format.PatchFormatError` inside Ray Data; :func:`band_stats` has checked
    every row before, with the format's one-line errors.

    Args:
        source: The dataset, from :func:`data.format.open_dataset`.
        name: ``train``, ``val`` or ``test``.
    """
    return _read_parquet(source.splits[name].files, source.rows(name), source.metadata).map_batches(
        _raw_block, batch_format="pyarrow", batch_size=None, fn_kwargs=_split_arguments(source, name)
    )


def _scan_block(
    block: pa.Table, files: Mapping[str, tuple[str, int]], metadata: PatchMetadata, train: Mapping[str, pa.Array | None]
) -> pa.Table:
    """One row per block: the per-band moments of its training rows and the first problem found (or none)."""
    moments = BandMoments.empty(metadata.num_bands)
    problems: list[tuple[int, int, str]] = []
    for path, rows in _by_file(block):
        shown, index = files[path]
        try:
            rows.validate(full=True)
        except pa.ArrowException as err:
            problems.append((index, -1, str(corrupt_file_error(shown, err))))
            continue
        problem = first_row_problem(rows, metadata)
        if problem is not None:
            problems.append((index, *_problem_message(shown, path, rows, problem)))
        elif path in train:
            moments = moments.merge(BandMoments.of(decode_pixels(_kept(rows, train[path]), metadata)))
    first = min(problems) if problems else (-1, -1, "")
    return pa.table(
        {
            "count": [moments.count],
            "mean": [moments.mean.tolist()],
            "m2": [moments.m2.tolist()],
            "file": [first[0]],
            "row": [first[1]],
            "problem": [first[2]],
        }
    )


def band_stats(source: DatasetSource) -> BandStats:
    """Validate every row of the dataset and return the band statistics of its training split, in one streaming pass.

    Ray Data reads every file of the dataset once; each block is checked where it is read (pixels and labels, with
    the format's one-line errors naming file and row) and reduced to the exact per-band moments (float64) of its
    training rows, which the driver merges. The driver never holds pixels, and a bad row anywhere, in any split, is
    found before training starts.

    Args:
        source: The dataset, from :func:`data.format.open_dataset`.

    Raises:
        PatchFormatError: A row is invalid or a file cannot be decoded; of several, the first by file and row.
    """
    import ray.exceptions

    files = {_ray_path(path): (str(path), index) for index, path in enumerate(source.files)}
    train = source.splits["train"]
    rows = sum(split.rows for split in source.splits.values())  # every row of every file, once
    scan = _read_parquet(source.files, rows, source.metadata).map_batches(
        _scan_block,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={
            "files": files,
            "metadata": source.metadata,
            "train": {_ray_path(p): train.keep for p in train.files},
        },
    )
    try:
        records = scan.take_all()
    except ray.exceptions.RayError:
        for path in source.files:  # a file Arrow could not decode: name it, as the in-process reader would
            check_file_decodes(path)
        raise
    problems = [(r["file"], r["row"], r["problem"]) for r in records if r["problem"]]
    if problems:
        raise PatchFormatError(min(problems)[2])
    moments = BandMoments.empty(source.metadata.num_bands)
    for r in records:
        moments = moments.merge(BandMoments(int(r["count"]), np.asarray(r["mean"]), np.asarray(r["m2"])))
    if moments.count != train.rows * source.metadata.height * source.metadata.width:
        raise RuntimeError(f"the statistics pass saw {moments.count} training values, expected {train.rows} patches")
    return moments.band_stats()


def build_ray_datasets(
    source: DatasetSource, stats: BandStats, splits: tuple[str, ...] = ("train", "val")
) -> dict[str, ray.data.Dataset]:
    """Normalised Ray datasets of the given splits, materialised where they fit, for Ray Train.

    Each has ``pixels`` ((C, H, W) float32 tensors, normalised with ``stats``) and ``label`` (int64). A split that
    fits (:func:`materialised_splits`) is read and normalised once, here, and kept in the object store; ``train``
    then gets a new block order every epoch. A split that does not fit is read from Parquet and normalised on every
    pass (``train`` in a new file order each time). Call this once per experiment and hand the result to every
    trainer; the workers shuffle rows locally and augment with :class:`D4Collate`. Split ``train`` over several
    workers with ``streaming_split(equal=True)`` (Ray Train's ``DataConfig``), never validation or test.

    Args:
        source: The dataset, from :func:`data.format.open_dataset`.
        stats: Band statistics of the training split (:func:`band_stats`).
        splits: Which splits to build.

    Returns:
        Ray datasets by split name.
    """
    import ray

    store = ray.cluster_resources().get("object_store_memory", 0.0)
    kept = materialised_splits({name: normalised_bytes(source, name) for name in splits}, store, MATERIALISE_SHARE)
    built = {}
    for name in splits:
        materialise = name in kept
        ds = _read_parquet(
            source.splits[name].files,
            source.rows(name),
            source.metadata,
            shuffle_files=name == "train" and not materialise,
        ).map_batches(
            _normalised_block,
            batch_format="pyarrow",
            batch_size=None,
            fn_kwargs={**_split_arguments(source, name), "mean": stats.mean, "std": stats.std},
        )
        if materialise:
            ds = ds.materialize()
            if name == "train":
                ds = ds.randomize_block_order()
        built[name] = ds
    return built


# The dihedral group D4 of a square: element k of d4_transform rotates by k % 4 quarter turns, then mirrors
# left-right when k >= HALF_D4. The even elements (rotations by 0 or 2 quarter turns, with or without the mirror) keep
# the image's axes: identity, vertical flip, horizontal flip and both.
D4_ORDER = 8
HALF_D4 = D4_ORDER // 2
AXIS_KEEPING = tuple(k for k in range(D4_ORDER) if k % 2 == 0)

# Augmentation groups by name, as elements of d4_transform. "d4": all eight, for imagery whose class does not depend
# on orientation (overhead land cover); "flips": the four that keep the axes, for data whose class changes under a
# quarter turn; "none": the identity only.
D4, FLIPS, NO_AUGMENTATION = "d4", "flips", "none"
AUGMENTATION_GROUPS = {D4: tuple(range(D4_ORDER)), FLIPS: AXIS_KEEPING, NO_AUGMENTATION: (0,)}
AUGMENTATIONS = tuple(AUGMENTATION_GROUPS)
DEFAULT_AUGMENTATION = D4


def augmentation_elements(name: str, square: bool = True) -> np.ndarray:
    """The elements of an augmentation group, for :func:`d4_transform`.

    Training draws one of them per patch (:class:`D4Collate`); test-time augmentation averages over the views
    ``d4_transform(pixels, np.full(len(pixels), k))`` for each element ``k``.

    Args:
        name: One of ``AUGMENTATIONS``.
        square: Whether the patches are square; a non-square patch has no quarter turns, so "d4" gives the same
            four elements as "flips" there.

    Returns:
        Element indices in increasing order, shape (group size,).

    Raises:
        ValueError: ``name`` is not an augmentation group.
    """
    if name not in AUGMENTATION_GROUPS:
        raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {name!r}")
    return np.array([k for k in AUGMENTATION_GROUPS[name] if square or k in AXIS_KEEPING], dtype=np.int64)


def d4_transform(pixels: np.ndarray, elements: np.ndarray) -> np.ndarray:
    """Apply one element of the dihedral group D4 to each patch.

    Element ``k`` rotates by ``k % 4`` quarter turns and then, for ``k >= 4``, mirrors left-right. All eight are
    label-preserving for overhead imagery. Non-square patches only take the four that keep their shape (the even
    elements: identity, half turn, and the two mirrors).

    Args:
        pixels: Patches, shape (N, C, H, W).
        elements: Group element per patch, integers in [0, 8); even ones only for non-square patches.

    Raises:
        ValueError: An element is out of range, or rotates a non-square patch by a quarter turn.
    """
    square = pixels.shape[2] == pixels.shape[3]
    allowed = range(D4_ORDER) if square else AXIS_KEEPING
    unknown = np.setdiff1d(elements, allowed)
    if unknown.size:
        shape = "square" if square else f"non-square ({pixels.shape[2]}x{pixels.shape[3]})"
        raise ValueError(f"D4 elements {unknown.tolist()} do not apply to {shape} patches; use {list(allowed)}")
    out = np.empty_like(pixels)
    for k in allowed:
        rows = np.flatnonzero(elements == k)
        if rows.size == 0:
            continue
        moved = np.rot90(pixels[rows], k % HALF_D4, axes=(2, 3))
        if k >= HALF_D4:
            moved = moved[..., ::-1]
        out[rows] = moved
    return out


class D4Collate:
    """Turns a Ray Data numpy batch into tensors with a random element of an augmentation group applied to each patch.

    Passed (as :class:`data.collate.RayD4Collate`) to ``iter_torch_batches`` on each training worker, so
    augmentation runs in Ray Data's prefetch thread beside the model rather than as Ray tasks competing with training
    for CPUs. Seeded per worker and epoch, so a run is reproducible and every epoch sees different views of each
    patch.

    Args:
        seed: Seed of this worker's augmentation for one epoch.
        augment: The group (one of ``AUGMENTATIONS``) whose elements are drawn, uniformly.

    Raises:
        ValueError: ``augment`` is not an augmentation group.
    """

    def __init__(self, seed: int, augment: str = DEFAULT_AUGMENTATION) -> None:
        augmentation_elements(augment)  # refuse an unknown group now, not in the prefetch thread
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        """Tensors ``pixels`` (B, C, H, W), each patch moved by its own random group element, and ``label`` (B,)."""
        import torch

        pixels = np.asarray(batch[PIXELS_COLUMN], dtype=np.float32)  # (B, C, H, W)
        elements = augmentation_elements(self.augment, square=pixels.shape[2] == pixels.shape[3])
        moved = d4_transform(pixels, self.rng.choice(elements, size=len(pixels)))
        return {
            PIXELS_COLUMN: torch.from_numpy(np.ascontiguousarray(moved)),
            LABEL_COLUMN: torch.tensor(np.asarray(batch[LABEL_COLUMN]), dtype=torch.int64),
        }
