"""The Parquet patch format: the one place that names its columns, dtypes, metadata keys and folder layout.

A dataset is a folder with one entry per split, ``train``, ``val`` and ``test``. A split is either one file,
``<split>.parquet``, or a folder ``<split>/`` of part files (``*.parquet``, read in name order, as
``ray.data.Dataset.write_parquet`` writes them); never both. A folder holding no split but exactly one other Parquet
file is carved into train, val and test, stratified by class with a fixed seed; a missing ``val`` or ``test`` is
carved from ``train`` the same way.

Each file holds one row per patch (``patch_id`` string, ``label`` string, ``pixels`` as
``fixed_size_list<float32>[C*H*W]`` in band, row, column order) and a file-metadata key ``patches`` with JSON
describing bands, height, width and classes; every file of a dataset carries the same. Plain ``pyarrow`` or
``pandas`` read it. Checking is split in two so that no reader needs all pixels at once: :func:`open_dataset` checks
a folder from the files' footers and id columns and returns a :class:`DatasetSource`; :func:`first_row_problem`
checks the pixels and labels of every block a reader decodes (Ray Data in :mod:`data.pipeline`, or
:func:`iter_split` in this process). :func:`read_split` and :func:`read_dataset` read and validate into memory. Every
problem is a :class:`PatchFormatError` with one line naming the file (and row) and what is wrong.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data.atomic import check_replaceable, write_file_atomic, write_folder_atomic
from data.messages import brief_list, one_line

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

# Rows decoded at a time when a split is read in this process (iter_split): about 29 MB of 14 x 8 x 8 patches.
BATCH_ROWS = 8192

# Names shown per list in a dataset's printed summary (a list of thousands of bands would flood the terminal).
SUMMARY_LISTED = 20

# Fractions carved from a single unsplit file (train, val, test), stratified by class.
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
DEFAULT_SPLIT_SEED = 0


class PatchFormatError(ValueError):
    """A dataset file or folder does not follow the patch format; the message names where and what."""


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
        return _summary_lines(self.metadata, {name: len(split) for name, split in self.splits.items()})


@dataclass(frozen=True)
class SplitSource:
    """Where one split's rows are, without reading them.

    Attributes:
        files: The split's Parquet files, in read order.
        rows: Number of patches in the split.
        keep: For a split carved out of its files' rows, the patch ids it keeps; None when it has every row.
    """

    files: tuple[Path, ...]
    rows: int
    keep: pa.Array | None = None


@dataclass(frozen=True)
class DatasetSource:
    """A dataset checked by :func:`open_dataset`: metadata and, per split, its files and row count. No pixels.

    Attributes:
        folder: The dataset folder.
        metadata: The metadata every file carries.
        splits: ``train``, ``val`` and ``test``, in that order.
    """

    folder: Path
    metadata: PatchMetadata
    splits: Mapping[str, SplitSource]

    def rows(self, name: str) -> int:
        """Number of patches in a split."""
        return self.splits[name].rows

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file of the dataset once (a carved file feeds several splits), in split order."""
        return tuple(dict.fromkeys(path for split in self.splits.values() for path in split.files))

    def summary_lines(self) -> list[str]:
        """Indented lines describing the splits, bands, patch size and classes, for the entry scripts to print."""
        return _summary_lines(self.metadata, {name: split.rows for name, split in self.splits.items()})


def _summary_lines(meta: PatchMetadata, counts: Mapping[str, int]) -> list[str]:
    lines = [f"  {name}: {count} patches" for name, count in counts.items()]
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
    _check_ids_across_splits(dataset, folder)
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
    """Read and validate only the ``patches`` metadata of a Parquet file."""
    path = Path(path)
    schema, _ = _read_footer(path)
    return _metadata_of(schema, path)


def _read_footer(path: Path) -> tuple[pa.Schema, int]:
    """The Arrow schema (with the file metadata) and the row count of a Parquet file, from its footer alone."""
    if not path.is_file():
        raise PatchFormatError(f"{path}: no such file")
    try:
        if path.stat().st_size == 0:
            raise PatchFormatError(f"{path}: file is empty (0 bytes), not a Parquet file")
        with pq.ParquetFile(path) as parquet:
            return parquet.schema_arrow, parquet.metadata.num_rows
    except (pa.ArrowException, OSError, ValueError) as err:
        raise _corrupt(path, err) from None


def _metadata_of(schema: pa.Schema, path: Path) -> PatchMetadata:
    raw = (schema.metadata or {}).get(METADATA_KEY.encode())
    if raw is None:
        raise PatchFormatError(f"{path}: file metadata lacks the '{METADATA_KEY}' key (bands, height, width, classes)")
    return PatchMetadata.from_json(raw, where=str(path))


def _corrupt(path: Path | str, err: BaseException) -> PatchFormatError:
    return PatchFormatError(f"{path}: not a readable Parquet file, truncated or corrupt ({one_line(err)})")


def corrupt_file_error(path: Path | str, err: BaseException) -> PatchFormatError:
    """The one-line error for a file that a reader failed to decode (``err`` is what the reader raised)."""
    return _corrupt(path, err)


def check_columns(schema: pa.Schema, path: Path | str, *, require_labels: bool = True) -> None:
    """Check a file's columns and their types from its schema alone.

    Args:
        schema: The file's Arrow schema.
        path: The file, named in the error.
        require_labels: Whether a missing ``label`` column is an error (false for prediction input).

    Raises:
        PatchFormatError: A column is missing or of the wrong type.
    """
    required = [PATCH_ID, PIXELS] + ([LABEL] if require_labels else [])
    missing = [name for name in required if name not in schema.names]
    if missing:
        raise PatchFormatError(
            f"{path}: missing column {', '.join(map(repr, missing))}; found {brief_list(schema.names, quote=True)}"
        )
    _check_string_type(schema.field(PATCH_ID).type, PATCH_ID, path, "strings")
    _check_pixel_type(schema.field(PIXELS).type, path)
    if LABEL in schema.names:
        _check_string_type(schema.field(LABEL).type, LABEL, path, "class-name strings")


def _check_pixel_type(kind: pa.DataType, path: Path | str) -> None:
    """A list of numbers, of any list type (the length is checked row by row)."""
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise PatchFormatError(f"{path}: column '{PIXELS}' must be a list of floats, found {kind}")
    if not (pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        raise PatchFormatError(f"{path}: column '{PIXELS}' must hold numbers, found {kind}")


def _check_string_type(kind: pa.DataType, name: str, path: Path | str, what: str) -> None:
    """Strings, or dictionary-encoded strings (as pandas writes categoricals)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise PatchFormatError(f"{path}: column '{name}' must be {what}, found {kind}")


def _strings(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A string column as one plain ``string`` array (dictionary-encoded and large strings decoded)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column.cast(pa.string())


def patch_ids_of(table: pa.Table) -> pa.Array:
    """The ``patch_id`` column of a table of patches as one plain string array."""
    return _strings(table.column(PATCH_ID))


def label_names_of(table: pa.Table) -> pa.Array:
    """The ``label`` column of a table of patches as one plain string array."""
    return _strings(table.column(LABEL))


def _first_true(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _bools(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=bool)


def first_row_problem(table: pa.Table, metadata: PatchMetadata) -> tuple[int, str] | None:
    """The first row of a table of patches whose pixels or label break the format, and what is wrong with it.

    Each row's ``pixels`` must be non-null, of ``C*H*W`` values, none of them null or non-finite; its ``label`` (when
    the table has that column) must be one of the class names. The columns' types must have passed
    :func:`check_columns`. The readers run this on every block they read and name the file and row in the error.

    Returns:
        The row's index in ``table`` and the problem (for example ``"'pixels' holds a null value"``), or None when
        every row is valid.
    """
    found = [_pixel_problem(table.column(PIXELS).combine_chunks(), metadata)]
    if LABEL in table.column_names:
        found.append(_label_problem(table.column(LABEL), metadata))
    found = [problem for problem in found if problem is not None]
    return min(found, key=lambda problem: problem[0]) if found else None


def _pixel_problem(column: pa.Array, metadata: PatchMetadata) -> tuple[int, str] | None:
    """The first row whose pixels are null, of the wrong length, or hold a null or non-finite value."""
    expected = metadata.values_per_patch
    problems: list[tuple[int, str]] = []  # in the order a row is checked in, so ties keep the first check
    if column.null_count:
        problems.append((_first_true(_bools(column.is_null())), f"'{PIXELS}' is null"))
    lengths = None
    if not (pa.types.is_fixed_size_list(column.type) and column.type.list_size == expected):
        lengths = pc.list_value_length(column).fill_null(expected).to_numpy(zero_copy_only=False)
        wrong = lengths != expected
        if wrong.any():
            row = _first_true(wrong)
            problems.append(
                (
                    row,
                    f"'{PIXELS}' has {lengths[row]} values, expected {expected} "
                    f"({metadata.num_bands} bands x {metadata.height} x {metadata.width})",
                )
            )
    flat = pc.list_flatten(column)
    regular = not problems  # every row holds exactly `expected` values, so a value's row is its index // expected
    parents = None if regular else pc.list_parent_indices(column).to_numpy(zero_copy_only=False)

    def row_of(value: int) -> int:
        return value // expected if parents is None else int(parents[value])

    if flat.null_count:
        problems.append((row_of(_first_true(_bools(flat.is_null()))), f"'{PIXELS}' holds a null value"))
    if pa.types.is_floating(flat.type):
        finite = np.isfinite(flat.to_numpy(zero_copy_only=False))  # nulls come back as NaN; their check came first
        if not finite.all():
            problems.append((row_of(_first_true(~finite)), f"'{PIXELS}' holds a non-finite value (NaN or inf)"))
    return min(problems, key=lambda problem: problem[0]) if problems else None


def _label_problem(column: pa.ChunkedArray, metadata: PatchMetadata) -> tuple[int, str] | None:
    """The first row whose label is not one of the class names."""
    names = _strings(column)
    index = pc.index_in(names, value_set=pa.array(metadata.classes, type=pa.string()))
    if not index.null_count:
        return None
    row = _first_true(_bools(index.is_null()))
    return row, f"unknown label {names[row].as_py()!r}; classes are {brief_list(metadata.classes)}"


def decode_pixels(table: pa.Table, metadata: PatchMetadata) -> np.ndarray:
    """The pixels of a table that passed :func:`first_row_problem`, shape (N, C, H, W), float32."""
    values = pc.list_flatten(table.column(PIXELS).combine_chunks()).to_numpy(zero_copy_only=False)
    return values.astype(PIXEL_DTYPE, copy=False).reshape(len(table), *metadata_shape(metadata))


def decode_labels(table: pa.Table, metadata: PatchMetadata) -> np.ndarray:
    """The labels of a table that passed :func:`first_row_problem` as class indices, shape (N,), int64."""
    index = pc.index_in(_strings(table.column(LABEL)), value_set=pa.array(metadata.classes, type=pa.string()))
    return index.to_numpy(zero_copy_only=False).astype(np.int64)


def metadata_shape(metadata: PatchMetadata) -> tuple[int, int, int]:
    """The shape of one patch, (C, H, W)."""
    return metadata.num_bands, metadata.height, metadata.width


def decode_rows(table: pa.Table, where: str, metadata: PatchMetadata, first_row: int = 0) -> PatchSplit:
    """Validate and decode a table of patches whose ids were already checked.

    Args:
        table: Rows of one file.
        where: The file, named in the error.
        metadata: The file's metadata.
        first_row: Row of the file that the table's first row is, for the error.

    Raises:
        PatchFormatError: A row is invalid; the message names the file and the row in it.
    """
    problem = first_row_problem(table, metadata)
    if problem is not None:
        raise PatchFormatError(f"{where}: row {first_row + problem[0]}: {problem[1]}")
    return PatchSplit(
        patch_ids=np.asarray(patch_ids_of(table).to_pylist(), dtype=object),
        pixels=decode_pixels(table, metadata),
        labels=decode_labels(table, metadata) if LABEL in table.column_names else None,
    )


def _id_problem(ids: pa.Array) -> tuple[int, str] | None:
    """The first empty id, else the second row of the smallest repeated id; with what is wrong."""
    empty = _bools(pc.fill_null(pc.equal(ids, ""), True))
    if empty.any():
        return _first_true(empty), f"'{PATCH_ID}' is empty"
    counts = pc.value_counts(ids)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if not len(repeated):
        return None
    dup = pc.min_max(repeated)["min"].as_py()
    rows = np.flatnonzero(_bools(pc.equal(ids, dup)))[:2].tolist()
    return rows[1], f"duplicate {PATCH_ID} {dup!r} (first seen in row {rows[0]})"


def _check_ids(ids: np.ndarray, where: str) -> None:
    problem = _id_problem(pa.array([None if i is None else str(i) for i in ids], type=pa.string()))
    if problem is not None:
        raise PatchFormatError(f"{where}: row {problem[0]}: {problem[1]}")


def _first_shared_id(groups: Sequence[tuple[str, pa.Array]]) -> tuple[str, str, str] | None:
    """The first id (in group order) that an earlier group holds too: the id and the two groups' names.

    Each group's own ids must be unique already.
    """
    if not groups:
        return None
    ids = pa.concat_arrays([group for _, group in groups])
    counts = pc.value_counts(ids)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if not len(repeated):
        return None
    bounds = np.cumsum([len(group) for _, group in groups])
    owner: dict[str, int] = {}
    for position in np.flatnonzero(_bools(pc.is_in(ids, value_set=repeated))).tolist():
        pid = ids[position].as_py()
        group = int(np.searchsorted(bounds, position, side="right"))
        if pid in owner:
            return pid, groups[owner[pid]][0], groups[group][0]
        owner[pid] = group
    return None


def read_split(path: str | os.PathLike, *, require_labels: bool = True) -> tuple[PatchSplit, PatchMetadata]:
    """Read and validate one Parquet file of patches into memory.

    Args:
        path: The Parquet file.
        require_labels: Whether a missing ``label`` column is an error (false for prediction input).

    Returns:
        The split (labels as class indices, or None when the file has no labels) and its metadata.

    Raises:
        PatchFormatError: Anything about the file is wrong; the message names the file and, where it applies,
            the first offending row.
    """
    path = Path(path)
    schema, _ = _read_footer(path)
    metadata = _metadata_of(schema, path)
    check_columns(schema, path, require_labels=require_labels)
    try:
        table = pq.read_table(path)
        # Full validation catches what decoding lets through from a damaged file, such as invalid UTF-8 in strings.
        table.validate(full=True)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise _corrupt(path, err) from None
    if table.num_rows == 0:
        raise PatchFormatError(f"{path}: file has no rows")
    problem = _id_problem(patch_ids_of(table))
    if problem is not None:
        raise PatchFormatError(f"{path}: row {problem[0]}: {problem[1]}")
    split = decode_rows(table, str(path), metadata)
    split.pixels = np.array(split.pixels)  # writable, and no longer tied to the Arrow buffers
    return split, metadata


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


def open_dataset(folder: str | os.PathLike, *, seed: int = DEFAULT_SPLIT_SEED) -> DatasetSource:
    """Check a dataset folder without reading its pixels, and say where each split's rows are.

    Reads every file's footer (columns, row count, metadata, which must agree across all files) and its
    ``patch_id`` column (non-empty and unique across the dataset). A missing ``val`` or ``test`` split is carved
    from ``train``, and a folder holding a single other Parquet file is split, stratified by class, with ``seed``:
    for those the ``label`` column is read too. The pixels and labels of every row are checked where the rows are
    read (:func:`first_row_problem`).

    Raises:
        PatchFormatError: The folder or any file in it is not a valid dataset.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PatchFormatError(f"{folder}: not a dataset folder (expected train.parquet, val.parquet, test.parquet)")
    entries = _split_entries(folder)
    if not entries:
        files = sorted(p for p in folder.glob(f"*{PARQUET_SUFFIX}") if p.is_file())
        if len(files) != 1:
            raise PatchFormatError(
                f"{folder}: expected train.parquet/val.parquet/test.parquet or exactly one Parquet file, "
                f"found {len(files)}"
            )
        entries = {"train": (files[0],)}
        carved_from: Path = files[0]
    elif "train" not in entries:
        raise PatchFormatError(f"{folder}: has {', '.join(sorted(entries))} but no train.parquet")
    else:
        train_files = entries["train"]
        carved_from = train_files[0] if len(train_files) == 1 else folder / "train"
    metadata, rows = _check_footers(folder, entries)
    missing = [name for name in ("val", "test") if name not in entries]
    ids = _check_ids_of(folder, entries, metadata, with_labels=bool(missing))
    splits = {name: SplitSource(files, sum(rows[path] for path in files)) for name, files in entries.items()}
    if missing:
        splits.update(_carve_sources(entries["train"], ids, missing, seed, carved_from))
    return DatasetSource(folder, metadata, {name: splits[name] for name in SPLITS if name in splits})


def _split_entries(folder: Path) -> dict[str, tuple[Path, ...]]:
    """Each split's files: ``<split>.parquet``, or the part files of a ``<split>/`` folder in name order."""
    entries = {}
    for name in SPLITS:
        single, parts = folder / f"{name}{PARQUET_SUFFIX}", folder / name
        if single.is_file() and parts.is_dir():
            raise PatchFormatError(f"{folder}: has both {single.name} and {name}/; a split is one file or one folder")
        if single.is_file():
            entries[name] = (single,)
        elif parts.is_dir():
            found = sorted(p for p in parts.glob(f"*{PARQUET_SUFFIX}") if p.is_file() and not p.name.startswith("."))
            if not found:
                raise PatchFormatError(f"{parts}: a split folder must hold {PARQUET_SUFFIX} part files, found none")
            entries[name] = tuple(found)
    return entries


def _check_footers(folder: Path, entries: Mapping[str, tuple[Path, ...]]) -> tuple[PatchMetadata, dict[Path, int]]:
    """The metadata all files share and each file's row count, from the footers; checks their columns."""
    first = entries["train"][0].relative_to(folder)
    metadata: PatchMetadata | None = None
    rows = {}
    for files in entries.values():
        for path in files:
            schema, rows[path] = _read_footer(path)
            found = _metadata_of(schema, path)
            if metadata is None:
                metadata = found
            elif found != metadata:
                raise PatchFormatError(f"{path}: metadata disagrees with {first} ({_difference(metadata, found)})")
            check_columns(schema, path)
            if rows[path] == 0:
                raise PatchFormatError(f"{path}: file has no rows")
    assert metadata is not None
    return metadata, rows


def _check_ids_of(
    folder: Path, entries: Mapping[str, tuple[Path, ...]], metadata: PatchMetadata, *, with_labels: bool
) -> dict[Path, pa.Table]:
    """Read each file's ids (and the training files' labels when ``with_labels``) and check them.

    Returns:
        By file: a table with ``patch_id`` and, where read, ``label`` as class indices.
    """
    tables = {}
    for name, files in entries.items():
        for path in files:
            columns = [PATCH_ID, LABEL] if with_labels and name == "train" else [PATCH_ID]
            try:
                table = pq.read_table(path, columns=columns)
                table.validate(full=True)
            except (pa.ArrowException, OSError, ValueError) as err:
                raise _corrupt(path, err) from None
            ids = patch_ids_of(table)
            problem = _id_problem(ids)
            if problem is not None:
                raise PatchFormatError(f"{path}: row {problem[0]}: {problem[1]}")
            kept = {PATCH_ID: ids}
            if LABEL in columns:
                problem = _label_problem(table.column(LABEL), metadata)
                if problem is not None:
                    raise PatchFormatError(f"{path}: row {problem[0]}: {problem[1]}")
                kept[LABEL] = pa.array(decode_labels(table, metadata))
            tables[path] = pa.table(kept)
    groups = [
        ((name, path), tables[path].column(PATCH_ID).combine_chunks())
        for name, files in entries.items()
        for path in files
    ]
    shared = _first_shared_id(groups)
    if shared is not None:
        pid, (split_a, file_a), (split_b, file_b) = shared
        where = (split_a, split_b) if split_a != split_b else (file_a.relative_to(folder), file_b.relative_to(folder))
        raise PatchFormatError(f"{folder}: {PATCH_ID} {pid!r} appears in both {where[0]} and {where[1]}")
    return tables


def _carve_parts(labels: np.ndarray, missing: Sequence[str], seed: int, source: Path) -> list[np.ndarray]:
    """Rows of train and of each missing split (val and/or test), stratified by class, with a fixed seed."""
    train_share, val_share, test_share = DEFAULT_SPLIT_FRACTIONS
    shares = {"val": val_share, "test": test_share}
    fractions = [train_share + sum(shares[n] for n in ("val", "test") if n not in missing)]
    fractions += [shares[n] for n in missing]
    total = sum(fractions)
    parts = stratified_split(labels, [f / total for f in fractions], seed)
    for name, rows in zip(["train", *missing], parts, strict=True):
        if len(rows) == 0:
            raise PatchFormatError(
                f"{source}: {len(labels)} patches are too few to carve a non-empty {name} split from them"
            )
    return parts


def _carve_sources(
    files: tuple[Path, ...], tables: Mapping[Path, pa.Table], missing: list[str], seed: int, source: Path
) -> dict[str, SplitSource]:
    """Carve the missing val/test splits out of the training files' rows: each keeps the ids of its rows."""
    whole = pa.concat_tables([tables[path] for path in files])
    ids = whole.column(PATCH_ID).combine_chunks()
    parts = _carve_parts(whole.column(LABEL).to_numpy(), missing, seed, source)
    return {
        name: SplitSource(files, len(rows), keep=ids.take(pa.array(rows)))
        for name, rows in zip(["train", *missing], parts, strict=True)
    }


def _difference(a: PatchMetadata, b: PatchMetadata) -> str:
    fields = ("bands", "height", "width", "classes", "units", "nodata")
    return "; ".join(
        f"{f}: {_shown(getattr(a, f))} vs {_shown(getattr(b, f))}" for f in fields if getattr(a, f) != getattr(b, f)
    )


def _shown(value: object) -> str:
    return f"({brief_list(value)})" if isinstance(value, tuple) else str(value)


def _check_ids_across_splits(dataset: PatchDataset, folder: Path) -> None:
    groups = [
        (name, pa.array([str(i) for i in split.patch_ids], type=pa.string())) for name, split in dataset.splits.items()
    ]
    shared = _first_shared_id(groups)
    if shared is not None:
        pid, first, second = shared
        raise PatchFormatError(f"{folder}: {PATCH_ID} {pid!r} appears in both {first} and {second}")


def iter_split(source: DatasetSource, name: str, batch_rows: int = BATCH_ROWS) -> Iterator[PatchSplit]:
    """Read one split in this process, batch by batch, validating every row; memory holds one batch at a time.

    Args:
        source: The dataset, from :func:`open_dataset`.
        name: The split.
        batch_rows: Rows read at a time (fewer are yielded from a carved split, which keeps only its own rows).

    Raises:
        PatchFormatError: A row is invalid or a file cannot be decoded; the message names the file and row.
    """
    split = source.splits[name]
    for path in split.files:
        first_row = 0
        for table in _file_batches(path, batch_rows):
            rows = decode_rows(table, str(path), source.metadata, first_row)
            first_row += len(table)
            if split.keep is not None:
                rows = rows.take(np.flatnonzero(_bools(pc.is_in(patch_ids_of(table), value_set=split.keep))))
            if len(rows):
                yield rows


def _file_batches(path: Path, batch_rows: int) -> Iterator[pa.Table]:
    """The rows of a Parquet file, ``batch_rows`` at a time, each fully validated by Arrow."""
    try:
        with pq.ParquetFile(path) as parquet:
            for batch in parquet.iter_batches(batch_size=batch_rows):
                table = pa.Table.from_batches([batch])
                table.validate(full=True)
                yield table
    except PatchFormatError:
        raise
    except (pa.ArrowException, OSError, ValueError) as err:
        raise _corrupt(path, err) from None


def check_file_decodes(path: Path) -> None:
    """Decode a whole Parquet file in this process, a batch at a time, and say if Arrow cannot.

    Raises:
        PatchFormatError: The file is truncated or corrupt; the message names it.
    """
    for _ in _file_batches(Path(path), BATCH_ROWS):
        pass


def load_split(source: DatasetSource, name: str) -> PatchSplit:
    """One split, validated, in memory (for small splits: the whole pixel array is held)."""
    chunks = list(iter_split(source, name))
    return PatchSplit(
        patch_ids=np.concatenate([c.patch_ids for c in chunks]),
        pixels=np.concatenate([c.pixels for c in chunks]),
        labels=np.concatenate([c.labels for c in chunks]),
    )


def read_dataset(folder: str | os.PathLike, *, seed: int = DEFAULT_SPLIT_SEED) -> PatchDataset:
    """Read and validate a whole dataset folder into memory (:func:`open_dataset`, then every split).

    For datasets that fit in memory: tests, benchmarks and the in-process tools. Training reads with Ray Data
    (:mod:`data.pipeline`) instead.

    Raises:
        PatchFormatError: The folder or any file in it is not a valid dataset.
    """
    source = open_dataset(folder, seed=seed)
    return PatchDataset(source.metadata, {name: load_split(source, name) for name in source.splits})
