"""The Parquet patch format: the one place that names its columns, dtypes and metadata keys.

A dataset is a folder with ``train.parquet``, ``val.parquet`` and ``test.parquet``. Each file holds one row per
patch (``patch_id`` string, ``label`` string, ``pixels`` as ``fixed_size_list<float32>[C*H*W]`` in band, row,
column order) and a file-metadata key ``patches`` with JSON describing bands, height, width and classes. Plain
``pyarrow`` or ``pandas`` read it; :func:`read_split` and :func:`read_dataset` read *and validate* it, raising
:class:`PatchFormatError` with one line naming the file (and row) and what is wrong.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from data.atomic import check_replaceable, write_file_atomic, write_folder_atomic
from data.messages import brief_list, one_line
from data.storage import Location, is_uri, locate, shown

PATCH_ID = "patch_id"
LABEL = "label"
PIXELS = "pixels"
METADATA_KEY = "patches"
SPLITS = ("train", "val", "test")
PARQUET_SUFFIX = ".parquet"
# Everything a dataset folder holds; only a folder of these is ever replaced.
DATASET_FILES = tuple(f"{name}{PARQUET_SUFFIX}" for name in SPLITS)
PIXEL_DTYPE = np.float32
MIN_PATCH_SIZE = 3  # smallest patch height and width: the model's first 3x3 convolution must fit

# Names shown per list in a dataset's printed summary (a list of thousands of bands would flood the terminal).
SUMMARY_LISTED = 20

# Fractions carved from a single unsplit file (train, val, test), stratified by class.
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
DEFAULT_SPLIT_SEED = 0


class PatchFormatError(ValueError):
    """A dataset file or folder does not follow the patch format; the message names where and what."""


class PatchRowError(PatchFormatError):
    """One row of a file breaks the format.

    Args:
        path: The file (or what the rows came from).
        row: The row, counted from the first row of the table that was checked.
        problem: What is wrong with it, without the file and row.
    """

    def __init__(self, path: str | os.PathLike, row: int, problem: str) -> None:
        self.path, self.row, self.problem = str(path), int(row), problem
        super().__init__(f"{path}: row {row}: {problem}")

    def __reduce__(self) -> tuple:
        # Rebuilt from its fields, so that it crosses process boundaries (Ray tasks) with them.
        return type(self), (self.path, self.row, self.problem)


@dataclass(frozen=True)
class PatchFileInfo:
    """What a patch file's footer says, read without its rows.

    Attributes:
        metadata: The validated ``patches`` metadata.
        num_rows: Rows in the file.
        labelled: Whether the file has a ``label`` column.
    """

    metadata: PatchMetadata
    num_rows: int
    labelled: bool


@dataclass(frozen=True)
class PatchMetadata:
    """What a dataset's pixels mean: band names, patch size and class names (in index order).

    Attributes:
        bands: Band names, one per channel, in channel order.
        height: Patch height in pixels.
        width: Patch width in pixels.
        classes: Class names; a label's index in this tuple is its integer class.
        units: Optional unit per band (for example ``"DN"`` or ``"dB"``).
        nodata: Optional value that marks missing pixels in the source imagery.
    """

    bands: tuple[str, ...]
    height: int
    width: int
    classes: tuple[str, ...]
    units: tuple[str, ...] | None = None
    nodata: float | None = None

    @property
    def num_bands(self) -> int:
        """Number of channels C."""
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def values_per_patch(self) -> int:
        """Length of one ``pixels`` list: C * H * W."""
        return self.num_bands * self.height * self.width

    def to_json(self) -> str:
        """Serialise to the JSON stored under the ``patches`` file-metadata key."""
        body: dict = {
            "bands": list(self.bands),
            "height": int(self.height),
            "width": int(self.width),
            "classes": list(self.classes),
        }
        if self.units is not None:
            body["units"] = list(self.units)
        if self.nodata is not None:
            body["nodata"] = float(self.nodata)
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "metadata") -> PatchMetadata:
        """Parse and validate the ``patches`` metadata JSON.

        Args:
            text: The JSON text.
            where: Name of the file it came from, used in error messages.

        Raises:
            PatchFormatError: The JSON is malformed or describes an impossible dataset.
        """
        try:
            body = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PatchFormatError(f"{where}: metadata key '{METADATA_KEY}' is not valid JSON ({err})") from None
        if not isinstance(body, dict):
            raise PatchFormatError(f"{where}: metadata key '{METADATA_KEY}' must be a JSON object")
        missing = [key for key in ("bands", "height", "width", "classes") if key not in body]
        if missing:
            raise PatchFormatError(f"{where}: metadata '{METADATA_KEY}' lacks {', '.join(missing)}")
        bands, classes = body["bands"], body["classes"]
        for name, values in (("bands", bands), ("classes", classes)):
            if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
                raise PatchFormatError(f"{where}: metadata '{name}' must be a non-empty list of names")
            if len(set(values)) != len(values):
                raise PatchFormatError(f"{where}: metadata '{name}' has duplicate names")
        for name in ("height", "width"):
            value = body[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PatchFormatError(f"{where}: metadata '{name}' must be a positive integer, got {value!r}")
        if body["height"] < MIN_PATCH_SIZE or body["width"] < MIN_PATCH_SIZE:
            raise PatchFormatError(
                f"{where}: has {body['height']}x{body['width']} patches; height and width must be >= {MIN_PATCH_SIZE} "
                "for the model's first 3x3 convolution"
            )
        units = body.get("units")
        if units is not None and (
            not isinstance(units, list) or len(units) != len(bands) or not all(isinstance(u, str) for u in units)
        ):
            raise PatchFormatError(f"{where}: metadata 'units' must list one unit name per band ({len(bands)})")
        nodata = body.get("nodata")
        if nodata is not None and (
            not isinstance(nodata, (int, float)) or isinstance(nodata, bool) or not math.isfinite(nodata)
        ):
            raise PatchFormatError(f"{where}: metadata 'nodata' must be a finite number, got {nodata!r}")
        return cls(
            bands=tuple(bands),
            height=body["height"],
            width=body["width"],
            classes=tuple(classes),
            units=tuple(units) if units is not None else None,
            nodata=float(nodata) if nodata is not None else None,
        )


@dataclass
class PatchSplit:
    """One split held in memory.

    Attributes:
        patch_ids: Unique patch identifiers, shape (N,).
        pixels: Pixel values, shape (N, C, H, W), float32.
        labels: Integer class indices, shape (N,), or None for unlabelled data.
    """

    patch_ids: np.ndarray
    pixels: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.patch_ids)

    def take(self, indices: np.ndarray) -> PatchSplit:
        """Return the rows at ``indices`` as a new split."""
        return PatchSplit(
            patch_ids=self.patch_ids[indices],
            pixels=self.pixels[indices],
            labels=None if self.labels is None else self.labels[indices],
        )


@dataclass
class PatchDataset:
    """A whole dataset: its metadata and its train, val and test splits."""

    metadata: PatchMetadata
    splits: dict[str, PatchSplit] = field(default_factory=dict)

    @property
    def train(self) -> PatchSplit:
        """The training split."""
        return self.splits["train"]

    @property
    def val(self) -> PatchSplit:
        """The validation split."""
        return self.splits["val"]

    @property
    def test(self) -> PatchSplit:
        """The test split."""
        return self.splits["test"]

    def summary_lines(self) -> list[str]:
        """Indented lines describing the splits, bands, patch size and classes, for the entry scripts to print."""
        meta = self.metadata
        lines = [f"  {name}: {len(split)} patches" for name, split in self.splits.items()]
        lines.append(f"  bands ({meta.num_bands}): {brief_list(meta.bands, SUMMARY_LISTED)}")
        lines.append(f"  patch size: {meta.height} x {meta.width}")
        lines.append(f"  classes ({meta.num_classes}): {brief_list(meta.classes, SUMMARY_LISTED)}")
        return lines


def to_table(split: PatchSplit, metadata: PatchMetadata) -> pa.Table:
    """Build the Arrow table of a split, with the ``patches`` metadata attached.

    Everything the readers would reject is refused here too, so a writer never leaves an unreadable file.

    Raises:
        PatchFormatError: The arrays disagree with each other or with the metadata, the split is empty, a patch id
            is empty or repeated, a label is not a class index, or a pixel is not finite.
    """
    metadata = PatchMetadata.from_json(metadata.to_json(), where="metadata to write")
    pixels = np.asarray(split.pixels)
    expected = (metadata.num_bands, metadata.height, metadata.width)
    if pixels.ndim != 4 or pixels.shape[1:] != expected:
        raise PatchFormatError(f"pixels have shape {pixels.shape}, metadata says (N, {', '.join(map(str, expected))})")
    n = pixels.shape[0]
    if n == 0:
        raise PatchFormatError("a split to write has no patches")
    if len(split.patch_ids) != n or (split.labels is not None and len(split.labels) != n):
        raise PatchFormatError(f"patch_ids, labels and pixels disagree in length ({n} patches)")
    ids = np.asarray([str(i) for i in split.patch_ids], dtype=object)
    _check_ids(ids, "patches to write")
    if not np.issubdtype(pixels.dtype, np.number) or np.issubdtype(pixels.dtype, np.complexfloating):
        raise PatchFormatError(f"pixels must be real numbers, got dtype {pixels.dtype}")
    values = np.ascontiguousarray(pixels, dtype=PIXEL_DTYPE).reshape(-1)
    finite = np.isfinite(values).reshape(n, -1).all(axis=1)
    if not finite.all():
        raise PatchFormatError(f"patch {ids[_first_true(~finite)]!r}: pixels hold a non-finite value (NaN or inf)")
    columns = {
        PATCH_ID: pa.array(ids.tolist(), type=pa.string()),
        PIXELS: pa.FixedSizeListArray.from_arrays(pa.array(values, type=pa.float32()), metadata.values_per_patch),
    }
    if split.labels is not None:
        labels = np.asarray(split.labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise PatchFormatError(f"labels must be a 1-D array of class indices, got dtype {labels.dtype}")
        bad = (labels < 0) | (labels >= metadata.num_classes)
        if bad.any():
            row = _first_true(bad)
            raise PatchFormatError(
                f"patch {ids[row]!r}: label {labels[row]} is not a class index (0..{metadata.num_classes - 1})"
            )
        classes = np.asarray(metadata.classes, dtype=object)
        columns[LABEL] = pa.array(classes[labels.astype(np.int64)].tolist(), type=pa.string())
    table = pa.table({name: columns[name] for name in (PATCH_ID, LABEL, PIXELS) if name in columns})
    return table.replace_schema_metadata({METADATA_KEY: metadata.to_json()})


def write_split(path: str | os.PathLike, split: PatchSplit, metadata: PatchMetadata) -> None:
    """Write one split to a Parquet file atomically (temporary name in the same folder, then rename)."""
    write_table_atomic(Path(path), to_table(split, metadata))


def write_table_atomic(path: Path, table: pa.Table) -> None:
    """Write a Parquet file under a temporary name in the same folder, then rename it over ``path``."""
    write_file_atomic(path, lambda handle: pq.write_table(table, handle, compression="zstd"))


def write_dataset(folder: str | os.PathLike, dataset: PatchDataset, *, overwrite: bool = False) -> None:
    """Write a dataset folder atomically: all splits go to a temporary sibling folder that is then swapped in.

    With ``overwrite``, an existing dataset folder is moved aside, replaced, and only then deleted; a folder that
    holds anything but a dataset's files (:data:`DATASET_FILES`) is never replaced, so a mistyped path cannot wipe
    unrelated files.

    Raises:
        FileExistsError: ``folder`` exists and ``overwrite`` is false, or it is not a dataset folder.
        PatchFormatError: The dataset is not valid (unknown split names, no train split, ids shared by splits, or
            any problem :func:`to_table` finds).
    """
    folder = Path(folder)
    check_dataset_replaceable(folder, overwrite=overwrite)
    unknown = sorted(set(dataset.splits) - set(SPLITS))
    if unknown or "train" not in dataset.splits:
        raise PatchFormatError(f"{folder}: splits must include train and be among {', '.join(SPLITS)}, got {unknown}")
    check_ids_across_splits({name: split.patch_ids for name, split in dataset.splits.items()}, folder)
    with write_folder_atomic(folder, DATASET_FILES, "dataset", overwrite=overwrite) as tmp:
        for name, split in dataset.splits.items():
            write_split(tmp / f"{name}{PARQUET_SUFFIX}", split, dataset.metadata)


def check_dataset_replaceable(folder: str | os.PathLike, *, overwrite: bool) -> None:
    """Refuse, before any work, a dataset folder that exists (unless ``overwrite``) or holds other files.

    Raises:
        FileExistsError: One line naming the folder and what is in the way.
    """
    check_replaceable(folder, DATASET_FILES, "dataset", overwrite=overwrite)


def read_metadata(path: str | os.PathLike) -> PatchMetadata:
    """Read and validate only the ``patches`` metadata of a Parquet file (a path or an object-store URI)."""
    source, path = _source(path)
    schema = _read_schema(source, path)
    return _metadata_of(schema, path)


def _source(path: str | os.PathLike) -> tuple[Location, str]:
    """Where a file is (see :mod:`data.storage`) and how messages name it: the path as given, or the URI."""
    return locate(path), _named(path)


def _named(path: str | os.PathLike) -> str:
    """A file as messages name it: a local path as given (normalised), a URI as typed."""
    return shown(path) if is_uri(path) else str(Path(path))


def _read_schema(source: Location, path: str) -> pa.Schema:
    info = source.info()  # one request, also in an object store
    if info.type != pafs.FileType.File:
        raise PatchFormatError(f"{path}: no such file")
    try:
        if not info.size:
            raise PatchFormatError(f"{path}: file is empty (0 bytes), not a Parquet file")
        return pq.read_schema(source.path, filesystem=source.filesystem)
    except (pa.ArrowException, OSError, ValueError) as err:
        if isinstance(err, PatchFormatError):
            raise
        raise _corrupt(path, err) from None


def _metadata_of(schema: pa.Schema, path: str) -> PatchMetadata:
    raw = (schema.metadata or {}).get(METADATA_KEY.encode())
    if raw is None:
        raise PatchFormatError(f"{path}: file metadata lacks the '{METADATA_KEY}' key (bands, height, width, classes)")
    return PatchMetadata.from_json(raw, where=str(path))


def _corrupt(path: str, err: BaseException) -> PatchFormatError:
    return PatchFormatError(f"{path}: not a readable Parquet file, truncated or corrupt ({one_line(err)})")


def read_split(path: str | os.PathLike, *, require_labels: bool = True) -> tuple[PatchSplit, PatchMetadata]:
    """Read and validate one Parquet file of patches.

    Args:
        path: The Parquet file.
        require_labels: Whether a missing ``label`` column is an error (false for prediction input).

    Returns:
        The split (labels as class indices, or None when the file has no labels) and its metadata.

    Raises:
        PatchFormatError: Anything about the file is wrong; the message names the file and, where it applies,
            the first offending row.
    """
    metadata = read_file_info(path, require_labels=require_labels).metadata  # the footer's checks first
    source, path = _source(path)
    table = _read_table(source, path)
    ids = _read_ids(table, path)
    pixels, labels = check_rows(table, path, metadata)
    return PatchSplit(patch_ids=ids, pixels=pixels, labels=labels), metadata


def read_file_info(path: str | os.PathLike, *, require_labels: bool = True) -> PatchFileInfo:
    """Read and validate what a patch file's footer holds (metadata, columns, row count), not its rows.

    Raises:
        PatchFormatError: The file is missing, empty, unreadable, lacks its metadata or a column, or has no rows;
            the same messages as :func:`read_split`.
    """
    source, path = _source(path)
    schema = _read_schema(source, path)
    metadata = _metadata_of(schema, path)
    _check_columns(schema, path, require_labels)
    try:
        num_rows = pq.ParquetFile(source.path, filesystem=source.filesystem).metadata.num_rows
    except (pa.ArrowException, OSError, ValueError) as err:
        raise _corrupt(path, err) from None
    if num_rows == 0:
        raise PatchFormatError(f"{path}: file has no rows")
    return PatchFileInfo(metadata=metadata, num_rows=num_rows, labelled=LABEL in schema.names)


def read_patch_ids(path: str | os.PathLike) -> np.ndarray:
    """Read and validate only the ``patch_id`` column of a file: strings, none empty, none repeated.

    The ids are the one check that needs every row at once; they are about 1% of a patch's bytes.

    Raises:
        PatchFormatError: The column is damaged, not strings, or holds an empty or duplicate id (naming the row).
    """
    source, path = _source(path)
    return _read_ids(_read_table(source, path, columns=[PATCH_ID]), path)


def read_labels(path: str | os.PathLike, metadata: PatchMetadata) -> np.ndarray:
    """Read and validate only the ``label`` column of a file: class indices, every name one of ``metadata``'s classes.

    Raises:
        PatchFormatError: The column is damaged or not strings, or a label is unknown (naming the row).
    """
    source, path = _source(path)
    return _read_labels(_read_table(source, path, columns=[LABEL]), path, metadata)


def check_rows(
    table: pa.Table, path: str | os.PathLike, metadata: PatchMetadata
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate the pixels and (where the table has them) the labels of some rows of a patch file.

    Every check but the ids' works row by row, so a file can be checked in blocks; rows in messages count from the
    table's first row.

    Returns:
        The pixels, shape (N, C, H, W), float32, and the labels as class indices (None without a label column).

    Raises:
        PatchRowError: A row holds a bad value; ``row`` and ``problem`` say which and what.
        PatchFormatError: A column has the wrong type.
    """
    path = _named(path)
    pixels = _read_pixels(table, path, metadata)
    labels = _read_labels(table, path, metadata) if LABEL in table.column_names else None
    return pixels, labels


def _check_columns(schema: pa.Schema, path: str, require_labels: bool) -> None:
    required = [PATCH_ID, PIXELS] + ([LABEL] if require_labels else [])
    missing = [name for name in required if name not in schema.names]
    if missing:
        raise PatchFormatError(
            f"{path}: missing column {', '.join(map(repr, missing))}; found {brief_list(schema.names, quote=True)}"
        )


def _read_table(source: Location, path: str, columns: list[str] | None = None) -> pa.Table:
    try:
        table = pq.read_table(source.path, columns=columns, filesystem=source.filesystem)
        # Full validation catches what decoding lets through from a damaged file, such as invalid UTF-8 in strings.
        table.validate(full=True)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise _corrupt(path, err) from None
    return table


def _first_true(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _string_column(table: pa.Table, name: str, path: str, what: str) -> list:
    """Return a string column as Python values, decoding dictionary-encoded strings (as pandas writes categoricals)."""
    column = table.column(name)
    kind = column.type
    if pa.types.is_dictionary(kind) and _is_string(kind.value_type):
        column, kind = column.cast(kind.value_type), kind.value_type
    if not _is_string(kind):
        raise PatchFormatError(f"{path}: column '{name}' must be {what}, found {kind}")
    return column.to_pylist()


def _is_string(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _check_ids(ids: np.ndarray, where: str) -> None:
    empty = np.asarray([i is None or i == "" for i in ids], dtype=bool)
    if empty.any():
        raise PatchRowError(where, _first_true(empty), f"'{PATCH_ID}' is empty")
    _, first, counts = np.unique(ids.astype(str), return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = ids[first[counts > 1][0]]
        rows = np.flatnonzero(ids == dup)[:2].tolist()
        raise PatchRowError(where, rows[1], f"duplicate {PATCH_ID} {dup!r} (first seen in row {rows[0]})")


def _read_ids(table: pa.Table, path: str) -> np.ndarray:
    ids = np.asarray(_string_column(table, PATCH_ID, path, "strings"), dtype=object)
    _check_ids(ids, path)
    return ids


def _read_pixels(table: pa.Table, path: str, metadata: PatchMetadata) -> np.ndarray:
    column = table.column(PIXELS).combine_chunks()
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise PatchFormatError(f"{path}: column '{PIXELS}' must be a list of floats, found {kind}")
    if not (pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        raise PatchFormatError(f"{path}: column '{PIXELS}' must hold numbers, found {kind}")
    if column.null_count:
        row = _first_true(column.is_null().to_numpy(zero_copy_only=False))
        raise PatchRowError(path, row, f"'{PIXELS}' is null")
    expected = metadata.values_per_patch
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    wrong = lengths != expected
    if wrong.any():
        row = _first_true(wrong)
        raise PatchRowError(
            path,
            row,
            f"'{PIXELS}' has {lengths[row]} values, expected {expected} "
            f"({metadata.num_bands} bands x {metadata.height} x {metadata.width})",
        )
    flat = column.flatten()
    if flat.null_count:
        row = _first_true(flat.is_null().to_numpy(zero_copy_only=False)) // expected
        raise PatchRowError(path, row, f"'{PIXELS}' holds a null value")
    values = flat.to_numpy(zero_copy_only=False).astype(PIXEL_DTYPE, copy=False)
    pixels = values.reshape(len(table), metadata.num_bands, metadata.height, metadata.width)
    finite = np.isfinite(pixels).reshape(len(table), -1).all(axis=1)
    if not finite.all():
        row = _first_true(~finite)
        raise PatchRowError(path, row, f"'{PIXELS}' holds a non-finite value (NaN or inf)")
    return np.ascontiguousarray(pixels)


def _read_labels(table: pa.Table, path: str, metadata: PatchMetadata) -> np.ndarray:
    names = _string_column(table, LABEL, path, "class-name strings")
    index = {name: i for i, name in enumerate(metadata.classes)}
    labels = np.empty(len(names), dtype=np.int64)
    for row, name in enumerate(names):
        if name not in index:
            known = brief_list(metadata.classes)
            raise PatchRowError(path, row, f"unknown label {name!r}; classes are {known}")
        labels[row] = index[name]
    return labels


def split_counts(count: int, fractions: Sequence[float]) -> list[int]:
    """How many of ``count`` rows of one class each part gets in :func:`stratified_split`.

    Args:
        count: Rows of the class.
        fractions: Share of each part; they must be non-negative and sum to 1.

    Raises:
        ValueError: The fractions are negative or do not sum to 1.
    """
    if any(not math.isfinite(f) or f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {list(fractions)}")
    bounds = np.round(np.cumsum(fractions) * count).astype(int)
    bounds[-1] = count  # rounding must not lose or invent a row
    return np.diff(np.r_[0, bounds]).tolist()


def carve(pool: PatchSplit, fractions: Mapping[str, float], seed: int) -> dict[str, PatchSplit]:
    """``pool`` cut into named parts of the given fractions (summing to 1), stratified by label, seeded."""
    parts = stratified_split(pool.labels, list(fractions.values()), seed)
    return {name: pool.take(rows) for name, rows in zip(fractions, parts, strict=True)}


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Partition row indices into parts of the given fractions, class by class, with a fixed seed.

    Args:
        labels: Integer class of each row.
        fractions: Share of each part; they must be non-negative and sum to 1.
        seed: Seed of the shuffle, so the same input always gives the same parts.

    Returns:
        One sorted index array per fraction.

    Raises:
        ValueError: The fractions are negative or do not sum to 1.
    """
    split_counts(0, fractions)  # validate once, even when there are no labels
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        bounds = np.cumsum(split_counts(len(rows), fractions))
        for part, (start, stop) in enumerate(zip(np.r_[0, bounds[:-1]], bounds, strict=True)):
            parts[part].append(rows[start:stop])
    return [np.sort(np.concatenate(p)) if p else np.empty(0, dtype=np.int64) for p in parts]


def read_dataset(folder: str | os.PathLike, *, seed: int = DEFAULT_SPLIT_SEED) -> PatchDataset:
    """Read and validate a dataset folder.

    A folder with ``train.parquet`` (and usually ``val.parquet`` and ``test.parquet``) is read as given; a missing
    ``val`` or ``test`` split is carved from ``train``. A folder holding a single other Parquet file is split,
    stratified by class, with ``seed``. Every split must agree on the metadata.

    Raises:
        PatchFormatError: The folder or any file in it is not a valid dataset.
    """
    present = split_files(folder)
    dataset: PatchDataset | None = None
    for name, path in present.items():
        split, metadata = read_split(path)
        if dataset is None:
            dataset = PatchDataset(metadata, {})
        else:
            check_split_metadata(path, metadata, dataset.metadata, present["train"])
        dataset.splits[name] = split
    assert dataset is not None
    check_ids_across_splits({name: split.patch_ids for name, split in dataset.splits.items()}, folder)
    return _carve(dataset, seed, present["train"])


def child(folder: str | os.PathLike, name: str) -> str:
    """The file ``name`` in ``folder`` (a path or a URI), as messages and readers take it."""
    return f"{shown(folder).rstrip('/')}/{name}" if is_uri(folder) else str(Path(folder) / name)


def split_files(folder: str | os.PathLike) -> dict[str, str]:
    """The files of a dataset folder (a path or URI) by split: those of ``train``/``val``/``test`` that are there.

    A folder holding a single other Parquet file gives it as ``train``, whose ``val`` and ``test`` are carved.

    Raises:
        PatchFormatError: It is not a folder, has val or test but no train, or holds no split file and not exactly
            one other Parquet file.
    """
    location, folder = _source(folder)
    if not location.is_dir():
        raise PatchFormatError(f"{folder}: not a dataset folder (expected train.parquet, val.parquet, test.parquet)")
    present = {name: f"{name}{PARQUET_SUFFIX}" for name in SPLITS}
    present = {name: child(folder, file) for name, file in present.items() if location.join(file).is_file()}
    if not present:
        files = [child(folder, name) for name in location.names() if name.endswith(PARQUET_SUFFIX)]
        if len(files) != 1:
            raise PatchFormatError(
                f"{folder}: expected train.parquet/val.parquet/test.parquet or exactly one Parquet file, "
                f"found {len(files)}"
            )
        return {"train": files[0]}
    if "train" not in present:
        raise PatchFormatError(f"{folder}: has {', '.join(sorted(present))} but no train.parquet")
    return present


def check_split_metadata(
    path: str | os.PathLike, metadata: PatchMetadata, train: PatchMetadata, train_path: str | os.PathLike
) -> None:
    """Refuse a split whose metadata differs from the training split's.

    Raises:
        PatchFormatError: Naming the file and the fields that differ.
    """
    if metadata != train:
        raise PatchFormatError(
            f"{path}: metadata disagrees with {locate(train_path).name} ({_difference(train, metadata)})"
        )


def _difference(a: PatchMetadata, b: PatchMetadata) -> str:
    fields = ("bands", "height", "width", "classes", "units", "nodata")
    return "; ".join(
        f"{f}: {_shown(getattr(a, f))} vs {_shown(getattr(b, f))}" for f in fields if getattr(a, f) != getattr(b, f)
    )


def _shown(value: object) -> str:
    return f"({brief_list(value)})" if isinstance(value, tuple) else str(value)


def check_ids_across_splits(ids: Mapping[str, Sequence[str]], folder: str | os.PathLike) -> None:
    """Refuse a patch id that appears in two splits (``ids``: each split's ids, by split name).

    Raises:
        PatchFormatError: Naming the folder, the id and both splits.
    """
    seen: dict[str, str] = {}
    for name, split_ids in ids.items():
        for pid in split_ids:
            if pid in seen:
                raise PatchFormatError(f"{folder}: {PATCH_ID} {pid!r} appears in both {seen[pid]} and {name}")
            seen[pid] = name


def _carve(dataset: PatchDataset, seed: int, source: str) -> PatchDataset:
    """Carve missing val/test splits out of train, stratified, keeping the given ones untouched."""
    missing = [name for name in ("val", "test") if name not in dataset.splits]
    if not missing:
        return dataset
    train = dataset.splits["train"]
    dataset.splits.update(
        {name: train.take(rows) for name, rows in carve_rows(train.labels, missing, seed, source).items()}
    )
    return dataset


def carve_rows(labels: np.ndarray, missing: Sequence[str], seed: int, source: str) -> dict[str, np.ndarray]:
    """Rows of the training file that stay ``train`` and that each missing split (``val``, ``test``) takes.

    Stratified by class with ``seed`` (:func:`stratified_split`), in the shares of :data:`DEFAULT_SPLIT_FRACTIONS`:
    a split that is present keeps its share in ``train``. Only the labels are needed, so a large file is carved from
    its label column alone.

    Args:
        labels: Class index of every row of the training file.
        missing: The splits to carve, among ``val`` and ``test``.
        seed: Seed of the shuffle.
        source: The training file, for messages.

    Raises:
        PatchFormatError: A carved split would be empty.
    """
    train_share, val_share, test_share = DEFAULT_SPLIT_FRACTIONS
    shares = {"val": val_share, "test": test_share}
    fractions = [train_share + sum(shares[n] for n in shares if n not in missing)] + [shares[n] for n in missing]
    total = sum(fractions)
    names = ["train", *missing]
    rows = dict(zip(names, stratified_split(labels, [f / total for f in fractions], seed), strict=True))
    for name, part in rows.items():
        if len(part) == 0:
            raise PatchFormatError(
                f"{source}: {len(labels)} patches are too few to carve a non-empty {name} split from them"
            )
    return rows
