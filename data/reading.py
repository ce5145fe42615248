"""Reading one patch file and validating it: its footer, its columns and its rows.

Every problem is a :class:`data.format.PatchFormatError` in one line naming the file (a path as given, or the URI)
and, for a bad value, a :class:`data.format.PatchRowError` naming the row. The footer (:func:`read_file_info`) and
the ids (:func:`read_patch_ids`) are read on their own, so a large file is checked without holding its pixels;
:func:`check_rows` checks any block of rows.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from data.format import (
    LABEL,
    METADATA_KEY,
    PATCH_ID,
    PIXEL_DTYPE,
    PIXELS,
    PatchFileInfo,
    PatchFormatError,
    PatchMetadata,
    PatchRowError,
    PatchSplit,
)
from data.messages import brief_list, one_line
from data.storage import Location, locate, path_or_uri


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
    path = str(path_or_uri(path))
    pixels = _read_pixels(table, path, metadata)
    labels = _read_labels(table, path, metadata) if LABEL in table.column_names else None
    return pixels, labels


def check_ids(ids: np.ndarray, where: str) -> None:
    """Refuse an empty or repeated patch id among ``ids`` (``where``: the file, or what the ids came from).

    Raises:
        PatchRowError: Naming the row of the first empty id, or of the second occurrence of a repeated one.
    """
    empty = np.asarray([i is None or i == "" for i in ids], dtype=bool)
    if empty.any():
        raise PatchRowError(where, _first_true(empty), f"'{PATCH_ID}' is empty")
    _, first, counts = np.unique(ids.astype(str), return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = ids[first[counts > 1][0]]
        rows = np.flatnonzero(ids == dup)[:2].tolist()
        raise PatchRowError(where, rows[1], f"duplicate {PATCH_ID} {dup!r} (first seen in row {rows[0]})")


def _source(path: str | os.PathLike) -> tuple[Location, str]:
    """Where a file is (see :mod:`data.storage`) and how messages name it: the path as given, or the URI."""
    return locate(path), str(path_or_uri(path))


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


def _read_ids(table: pa.Table, path: str) -> np.ndarray:
    ids = np.asarray(_string_column(table, PATCH_ID, path, "strings"), dtype=object)
    check_ids(ids, path)
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
