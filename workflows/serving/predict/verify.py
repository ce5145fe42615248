"""The written predictions against their input: part files put in input order, then every row checked once.

The confusion matrix is counted on the way.

The driver reads only the ``patch_id`` and label columns, batch by batch, through the file system layer (the input a
path or a URI), so its memory does not grow with the data.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data.format import LABEL, PARQUET_SUFFIX, PATCH_ID, PatchFileInfo
from data.storage import Location, locate
from workflows.serving.predict.predictor import PREDICTED_LABEL

# Rows per batch of the driver's reads of ids and labels (a few hundred KB).
CHECK_ROWS = 16_384


def _parquet(location: Location) -> pq.ParquetFile:
    return pq.ParquetFile(location.path, filesystem=location.filesystem)


def put_in_input_order(source: str, parts: list[Location]) -> list[Location]:
    """Rename the part files so that their names sort in input order; returns them in that order.

    Ray 2.60 numbers its write tasks in the order they start, not in input order, so with an input of several row
    groups the task holding the last rows can be numbered first (``preserve_order`` notwithstanding). Each part holds
    a run of consecutive input rows, so the input position of its first row orders the parts;
    :func:`check_predictions` then checks every row. Only the parts' first ids are looked up, in one pass over the
    input's ``patch_id`` column, batch by batch.
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


def check_predictions(source: str, info: PatchFileInfo, parts: list[Location], classes: list[str]) -> np.ndarray | None:
    """Check the part files hold every input row once, in order; count the confusion matrix when labelled.

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
