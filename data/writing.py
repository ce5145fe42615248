"""Writing patch files and dataset folders, atomically and only when the readers would accept what is written.

A file goes to a temporary name in its folder and is renamed over its target; a dataset folder is written whole to a
temporary sibling and swapped in (:mod:`data.atomic`), so a crash never leaves half a file or half a dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.atomic import check_replaceable, write_file_atomic, write_folder_atomic
from data.folder import check_ids_across_splits
from data.format import (
    DATASET_FILES,
    LABEL,
    METADATA_KEY,
    PARQUET_SUFFIX,
    PATCH_ID,
    PIXEL_DTYPE,
    PIXELS,
    SPLITS,
    PatchDataset,
    PatchFormatError,
    PatchMetadata,
    PatchSplit,
)
from data.reading import check_ids


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
    check_ids(ids, "patches to write")
    if not np.issubdtype(pixels.dtype, np.number) or np.issubdtype(pixels.dtype, np.complexfloating):
        raise PatchFormatError(f"pixels must be real numbers, got dtype {pixels.dtype}")
    values = np.ascontiguousarray(pixels, dtype=PIXEL_DTYPE).reshape(-1)
    finite = np.isfinite(values).reshape(n, -1).all(axis=1)
    if not finite.all():
        raise PatchFormatError(f"patch {ids[int(np.argmax(~finite))]!r}: pixels hold a non-finite value (NaN or inf)")
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
            row = int(np.argmax(bad))
            raise PatchFormatError(
                f"patch {ids[row]!r}: label {labels[row]} is not a class index (0..{metadata.num_classes - 1})"
            )
        classes = np.asarray(metadata.classes, dtype=object)
        columns[LABEL] = pa.array(classes[labels.astype(np.int64)].tolist(), type=pa.string())
    table = pa.table({name: columns[name] for name in (PATCH_ID, LABEL, PIXELS) if name in columns})
    return table.replace_schema_metadata({METADATA_KEY: metadata.to_json()})


def write_split(path: str | os.PathLike, split: PatchSplit, metadata: PatchMetadata) -> None:
    """Write one split to a Parquet file atomically (temporary name in the same folder, then rename)."""
    table = to_table(split, metadata)  # refused before a temporary file exists
    write_file_atomic(Path(path), lambda handle: pq.write_table(table, handle, compression="zstd"))


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
