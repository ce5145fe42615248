"""Tests of workflows/serving/predict/verify.py: parts Ray Data numbered out of input order are renamed into it."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from data.storage import locate
from workflows.serving.predict.output import PART_FILE, stored_parts
from workflows.serving.predict.verify import put_in_input_order


def test_parts_written_out_of_input_order_are_renamed_into_it(tmp_path):
    ids = [f"p{i:03d}" for i in range(30)]
    pq.write_table(pa.table({"patch_id": ids}), tmp_path / "in.parquet")
    staging = tmp_path / "staging"
    staging.mkdir()
    # As Ray 2.60 named them at 200,000 patches: the task holding the last rows first.
    runs = {"ds_abc1_000000-0.parquet": ids[20:], "ds_abc1_000001-0.parquet": ids[:8]}
    runs["ds_abc1_000002-0.parquet"] = ids[8:20]
    for name, run in runs.items():
        pq.write_table(pa.table({"patch_id": run}), staging / name)
    parts = stored_parts(locate(staging))
    ordered = put_in_input_order(str(tmp_path / "in.parquet"), parts)
    again = stored_parts(locate(staging))
    assert [p.name for p in again] == [p.name for p in ordered]
    assert all(PART_FILE.fullmatch(p.name) for p in again)
    read = [pq.read_table(p.path).column(0).to_pylist() for p in again]
    assert sum(read, []) == ids
    assert put_in_input_order(str(tmp_path / "in.parquet"), again) == again  # in order: nothing renamed
