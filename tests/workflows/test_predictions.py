"""Tests of the predictions' output: confusion counts, the datasink that writes part files in input order, the join of
parts into one file, and the progress watcher."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workflows.predictions import (
    PREDICTED_INDEX,
    PREDICTED_LABEL,
    TASK_FILE_PREFIX,
    TRUE_INDEX,
    PartWritten,
    PredictionSink,
    ProgressWatcher,
    confusion_counts,
    part_file,
)


def test_confusion_counts_rows_are_the_truth():
    counts = confusion_counts(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0]), 4)
    assert counts.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    assert confusion_counts(np.zeros(0), np.zeros(0), 2).tolist() == [[0, 0], [0, 0]]


def test_the_sink_counts_confusion_drops_the_indices_and_names_parts_in_input_order(tmp_path):
    sink = PredictionSink(str(tmp_path), 3, {"predictions": "{}"}, rows_per_file=4)
    assert sink.min_rows_per_write == 4

    def block(ids, truth, predicted):
        return pa.table(
            {"patch_id": ids, PREDICTED_LABEL: ["x"] * len(ids), TRUE_INDEX: truth, PREDICTED_INDEX: predicted}
        )

    first = sink.write([block(["a", "b"], [0, 1], [0, 2]), block(["c"], [2], [2])], None)
    second = sink.write([block(["d"], [1], [1])], None)
    assert sink.write([block([], [], [])], None).rows == 0
    assert first.confusion.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]
    sink.on_write_complete(SimpleNamespace(write_returns=[first, PartWritten("", 0, None), second]))
    assert [part.file for part in sink.written] == [part_file(0), part_file(1)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [part_file(0), part_file(1)]
    table = pq.read_table(tmp_path / part_file(0))
    assert table.column_names == ["patch_id", PREDICTED_LABEL] and table.column("patch_id").to_pylist() == [
        "a",
        "b",
        "c",
    ]
    assert table.schema.metadata == {b"predictions": b"{}"}


def test_the_watcher_reports_the_rows_of_finished_task_files(tmp_path):
    reported = []
    watcher = ProgressWatcher(tmp_path, reported.append)
    pq.write_table(pa.table({"a": [1, 2, 3]}), tmp_path / f"{TASK_FILE_PREFIX}x.parquet")
    pq.write_table(pa.table({"a": [1]}), tmp_path / f".{TASK_FILE_PREFIX}y.parquet")  # still being written
    watcher.poll()
    watcher.poll()  # nothing new: no second report
    assert reported == [3]
