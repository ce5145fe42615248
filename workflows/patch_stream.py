"""Patch files as streamed model input: the checks the driver makes before reading, and every block's validation.

The driver reads the files' footers and ``patch_id`` columns only (a duplicate id can sit in any two blocks); the
pixels and labels of every block are checked where the model actors decode them (:class:`BlockCheck`), with
:func:`data.format.first_row_problem`, and the message names the file and the row *of the file*, as
:func:`data.format.read_split`'s do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data
from ray.exceptions import RayTaskError

from data.format import (
    LABEL,
    PARQUET_SUFFIX,
    PATCH_ID,
    PatchFormatError,
    PatchMetadata,
    _id_problem,
    check_columns,
    corrupt_file_error,
    decode_labels,
    decode_pixels,
    first_row_problem,
    open_dataset,
    patch_ids_of,
    read_metadata,
)

# Ray Data's older Parquet reader (DataContext.use_datasource_v2 = False). The newer one starts with a ListFiles task
# that needs a whole CPU, which a pool of one model actor per CPU never frees: predict.py hung there (Ray 2.60, 2
# CPUs, 2026-12-02). data.pipeline chose the older reader too, for its speed.
USE_DATASOURCE_V2 = False
# Column of the file each row came from, when a split has several (read_parquet(include_paths=True)).
PATH_COLUMN = "path"


class DecodedBlock(NamedTuple):
    """One validated block: ids as Arrow strings (B,), raw pixels (B, C, H, W) float32, class indices (B,) or None."""

    patch_ids: pa.Array
    pixels: np.ndarray
    labels: np.ndarray | None


@dataclass(frozen=True)
class BlockCheck:
    """How the model actors check and decode blocks of raw format rows; small and picklable.

    Attributes:
        where: What messages name: the input file, or a name for data without a file (an in-memory split).
        metadata: The input's metadata (bands, patch size, classes).
        labelled: Whether the rows carry labels (required, and decoded into class indices).
        files: Each file the rows may come from, as Ray names it (its ``path`` column) and as messages show it; a
            message then names the row of that file. Empty: rows are named by their patch id.
        keep: Patch ids of the rows to keep (a split carved out of its files' rows); None keeps every row.
    """

    where: str
    metadata: PatchMetadata
    labelled: bool
    files: Mapping[str, str] = field(default_factory=dict)
    keep: pa.Array | None = None

    def decode(self, block: pa.Table) -> DecodedBlock:
        """Validate one block and decode it, keeping the input's row order.

        Raises:
            PatchFormatError: One line naming the file and its row (or the data and the row's patch id).
        """
        parts = [self._decoded(where, rows, file) for where, rows, file in self._by_file(block)]
        if len(parts) == 1:
            return parts[0]
        return DecodedBlock(
            pa.concat_arrays([p.patch_ids for p in parts]),
            np.concatenate([p.pixels for p in parts]),
            None if parts[0].labels is None else np.concatenate([p.labels for p in parts]),
        )

    def _by_file(self, block: pa.Table) -> Iterator[tuple[str, pa.Table, str | None]]:
        """The block's rows by the file they came from (a block seldom spans two): shown name, rows, file."""
        if PATH_COLUMN not in block.column_names:
            file = next(iter(self.files), None) if len(self.files) == 1 else None
            yield self.where, block, file
            return
        paths = block.column(PATH_COLUMN)
        rows = block.drop_columns([PATH_COLUMN])
        for path in pc.unique(paths).to_pylist():  # in order of first appearance: the input order
            yield self.files.get(path, path), rows.filter(pc.equal(paths, path)), path

    def _decoded(self, where: str, rows: pa.Table, file: str | None) -> DecodedBlock:
        check_columns(rows.schema, where, require_labels=self.labelled)
        try:
            rows.validate(full=True)  # what decoding lets through from a damaged file, such as invalid UTF-8
        except pa.ArrowException as err:
            raise corrupt_file_error(where, err) from None
        if self.keep is not None:
            rows = rows.filter(pc.is_in(patch_ids_of(rows), value_set=self.keep))
        problem = first_row_problem(rows, self.metadata)
        if problem is not None:
            row, what = problem
            if file is None:
                raise PatchFormatError(f"{where}: patch {patch_ids_of(rows)[row].as_py()!r}: {what}")
            raise PatchFormatError(f"{where}: row {_row_in_file(file, rows, row)}: {what}")
        labels = decode_labels(rows, self.metadata) if self.labelled else None
        return DecodedBlock(patch_ids_of(rows), decode_pixels(rows, self.metadata), labels)


def _row_in_file(file: str, rows: pa.Table, row: int) -> int:
    """The row of its file that row ``row`` of a block is, found by its (checked, unique) patch id."""
    return pc.index(patch_ids_of(pq.read_table(file, columns=[PATCH_ID])), patch_ids_of(rows)[row]).as_py()


@dataclass(frozen=True)
class PatchSource:
    """One split to stream, checked as far as the driver can without reading its pixels.

    Attributes:
        files: Its Parquet files, in read order.
        metadata: Their metadata.
        rows: Patches in the split.
        labelled: Whether its rows carry labels.
        keep: Patch ids of the split's rows when it is carved out of its files' rows; None: every row.
    """

    files: tuple[Path, ...]
    metadata: PatchMetadata
    rows: int
    labelled: bool
    keep: pa.Array | None = None

    @property
    def where(self) -> str:
        """How messages name the input: its file, or the folder of its files."""
        return str(self.files[0] if len(self.files) == 1 else self.files[0].parent)

    def check(self) -> BlockCheck:
        """What the model actors run on every block of this source."""
        files = {_ray_path(path): str(path) for path in self.files}
        return BlockCheck(self.where, self.metadata, self.labelled, files=files, keep=self.keep)

    def dataset(self, **read_args) -> ray.data.Dataset:
        """The files as a lazy Ray dataset of raw format rows (``read_args`` go to ``ray.data.read_parquet``)."""
        context = ray.data.DataContext.get_current()
        chosen, context.use_datasource_v2 = context.use_datasource_v2, USE_DATASOURCE_V2
        try:
            paths = [_ray_path(path) for path in self.files]
            return ray.data.read_parquet(paths, include_paths=len(paths) > 1, **read_args)
        finally:
            context.use_datasource_v2 = chosen


def _ray_path(path: Path) -> str:
    """How a file is named to Ray and in its ``path`` column: absolute, so every worker finds it."""
    return str(Path(path).resolve())


def open_file(path: str | os.PathLike) -> PatchSource:
    """Check one Parquet file of patches (labels optional) before streaming it: footer, columns, rows and ids.

    Raises:
        PatchFormatError: The file is missing, empty, corrupt or not in the patch format; one line naming it.
    """
    path = Path(path)
    metadata = read_metadata(path)
    try:
        parquet = pq.ParquetFile(path)
        schema, rows = parquet.schema_arrow, parquet.metadata.num_rows
        check_columns(schema, path, require_labels=False)
        ids = parquet.read(columns=[PATCH_ID])
        ids.validate(full=True)
    except (pa.ArrowException, OSError) as err:
        raise corrupt_file_error(path, err) from None
    if rows == 0:
        raise PatchFormatError(f"{path}: file has no rows")
    problem = _id_problem(patch_ids_of(ids))
    if problem is not None:
        raise PatchFormatError(f"{path}: row {problem[0]}: {problem[1]}")
    return PatchSource((path,), metadata, rows, labelled=LABEL in schema.names)


def open_source(path: str | os.PathLike, split: str) -> PatchSource:
    """The patches to classify: a Parquet file as it is (labels optional), or one split of a dataset folder.

    A folder's ``<split>.parquet`` is checked alone, so it may lack labels; any other split (a folder of part
    files, or one carved out of the training rows) comes from :func:`data.format.open_dataset`, which checks the
    whole dataset.

    Raises:
        PatchFormatError: The input is missing or not in the patch format.
    """
    path = Path(path)
    if not path.is_dir():
        return open_file(path)
    split_file = path / f"{split}{PARQUET_SUFFIX}"
    if split_file.is_file():
        return open_file(split_file)
    dataset = open_dataset(path)
    source = dataset.splits[split]
    return PatchSource(source.files, dataset.metadata, source.rows, labelled=True, keep=source.keep)


def input_error(err: Exception, where: str | os.PathLike) -> Exception:
    """The error a user can act on behind a failed Ray Data run over patch input, else ``err`` itself.

    A block's :class:`PatchFormatError` comes back as its one line (Ray Data appends advice on retries to it); an
    Arrow or I/O error of a read task becomes data.format's message for a damaged file.
    """
    cause = getattr(err, "cause", None) if isinstance(err, RayTaskError) else None
    if isinstance(cause, PatchFormatError):
        text = str(cause.args[0]) if cause.args else str(cause)
        return PatchFormatError(text.split("\n", 1)[0])
    if isinstance(cause, (pa.ArrowException, OSError)):
        return corrupt_file_error(where, cause)
    return err
