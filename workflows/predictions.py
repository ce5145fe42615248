"""The predictions' Parquet output: its columns, part files in input order, and the Ray pieces that write them.

:class:`PredictionSink` is the Ray Data datasink of the model actors' output: each write task writes one part file
and returns the confusion counts of its labelled rows (the driver adds up K x K counts, never rows).
:func:`join_parts` joins part files into one file in a Ray task, and :class:`ProgressWatcher` reports the rows the
write tasks have finished. The module imports no torch, so the write tasks' workers start light.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data import Datasink
from ray.data.block import BlockAccessor

# Output columns of the predictions, and the schema-metadata key that says where they came from.
PREDICTED_LABEL = "predicted_label"
PROBABILITY_PREFIX = "prob_"
OUTPUT_METADATA_KEY = "predictions"
# Part files of a predictions folder, in input order: part-00000.parquet, part-00001.parquet, ...
PART_FILE_PATTERN = re.compile(r"part-[0-9]{5,}\.parquet")
# Columns that travel from the actors to the write tasks only, for the confusion matrix; never written.
TRUE_INDEX, PREDICTED_INDEX = "__true_index", "__predicted_index"
# Files of the write tasks before they are put in input order.
TASK_FILE_PREFIX = "task-"
# How often the progress watcher looks at the part files written so far.
PROGRESS_POLL_S = 0.5
# Logical CPUs of each read and write task. They are light beside the forward passes and interleave with them; at
# a whole CPU each they could not start while a pool of one actor per CPU holds every CPU of the cluster.
IO_TASK_CPUS = 0.0


def confusion_counts(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs, shape (K, K), rows the truth (as scikit-learn orders them)."""
    pairs = np.asarray(truth, dtype=np.int64) * num_classes + np.asarray(predicted, dtype=np.int64)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def probability_column(class_name: str) -> str:
    """Name of the output column holding the probability of one class."""
    return f"{PROBABILITY_PREFIX}{class_name}"


def part_file(index: int) -> str:
    """Name of the part file a write task writes (its index follows the input order)."""
    return f"part-{index:05d}.parquet"


@dataclass(frozen=True)
class PartWritten:
    """What one write task wrote: its part file, rows, and the confusion counts of its rows (None: unlabelled)."""

    file: str
    rows: int
    confusion: np.ndarray | None


class PredictionSink(Datasink):
    """Ray Data datasink (``Dataset.write_datasink``) of predictions: one Parquet part file per write task.

    Each task writes a hidden temporary file and renames it to ``task-<id>.parquet`` once complete, so a watcher
    can count finished rows; when all are written, :meth:`on_write_complete` renames them ``part-00000.parquet``,
    ``part-00001.parquet``, ... in input order (the order Ray Data returns the tasks' results in, with
    ``preserve_order``). The true and predicted class indices, when the actors sent them, become the task's
    confusion counts and are not written.

    Args:
        folder: Where the part files go (a temporary folder that the caller renames when everything is written).
        num_classes: K of the confusion counts.
        file_metadata: Schema metadata of every part file.
        rows_per_file: Rows Ray Data gathers for each write task; None: whatever each block holds.
    """

    def __init__(
        self, folder: str, num_classes: int, file_metadata: dict[str, str], rows_per_file: int | None = None
    ) -> None:
        self.folder, self.num_classes = folder, num_classes
        self.file_metadata, self.rows_per_file = file_metadata, rows_per_file
        self.written: list[PartWritten] = []

    @property
    def min_rows_per_write(self) -> int | None:
        """Rows gathered for each write call: the part file's size."""
        return self.rows_per_file

    def write(self, blocks: Iterable[Any], ctx: Any) -> PartWritten:
        """Write one file from the task's blocks; returns its record."""
        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        tables = [table for table in tables if table.num_rows]
        if not tables:
            return PartWritten("", 0, None)
        table = pa.concat_tables(tables)
        confusion = None
        if TRUE_INDEX in table.column_names:
            truth, predicted = table.column(TRUE_INDEX).to_numpy(), table.column(PREDICTED_INDEX).to_numpy()
            confusion = confusion_counts(truth, predicted, self.num_classes)
            table = table.drop_columns([TRUE_INDEX, PREDICTED_INDEX])
        name = f"{TASK_FILE_PREFIX}{uuid.uuid4().hex}.parquet"
        folder = Path(self.folder)
        pq.write_table(table.replace_schema_metadata(self.file_metadata), folder / f".{name}", compression="zstd")
        (folder / f".{name}").rename(folder / name)
        return PartWritten(name, table.num_rows, confusion)

    def on_write_complete(self, write_result: Any) -> None:
        """Name the tasks' files in input order and keep their records (on the driver)."""
        folder = Path(self.folder)
        records = [record for record in write_result.write_returns if record.rows]
        for index, record in enumerate(records):
            (folder / record.file).rename(folder / part_file(index))
        self.written = [dataclasses.replace(r, file=part_file(i)) for i, r in enumerate(records)]


@ray.remote(num_cpus=IO_TASK_CPUS)
def _join(files: list[str], joined: str) -> int:
    """Write the part files as one Parquet file, a part at a time (one row group each); returns its rows."""
    rows = 0
    with pq.ParquetWriter(joined, pq.read_schema(files[0]), compression="zstd") as writer:
        for path in files:
            table = pq.read_table(path)
            writer.write_table(table)
            rows += table.num_rows
    return rows


def join_parts(folder: Path, parts: Sequence[PartWritten], name: str = "joined.parquet") -> Path:
    """Join a folder's part files into one file beside them, in a Ray task (the driver reads no predictions).

    Returns:
        The joined file.
    """
    joined = folder / name
    ray.get(_join.remote([str(folder / part.file) for part in parts], str(joined)))
    return joined


class ProgressWatcher(threading.Thread):
    """Reports the rows of the write tasks' files finished so far (read from their footers) until stopped."""

    def __init__(self, folder: Path, report: Callable[[int], None]) -> None:
        super().__init__(name="prediction-progress", daemon=True)
        self.folder, self.report, self.stopped = folder, report, threading.Event()
        self.rows: dict[str, int] = {}
        self.reported = 0

    def run(self) -> None:
        """Poll until stopped."""
        while not self.stopped.wait(PROGRESS_POLL_S):
            self.poll()

    def stop(self) -> None:
        """Stop polling and wait for the thread."""
        self.stopped.set()
        self.join()

    def poll(self) -> None:
        """Read the footers of new files and report when there were any."""
        new = [p for p in self.folder.glob(f"{TASK_FILE_PREFIX}*.parquet") if p.name not in self.rows]
        for path in sorted(new):
            try:
                self.rows[path.name] = pq.read_metadata(path).num_rows
            except (OSError, pa.ArrowException):
                continue  # renamed meanwhile: the caller reports the end itself
        done = sum(self.rows.values())
        if done != self.reported:
            self.reported = done
            self.report(done)
