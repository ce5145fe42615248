"""Tests of the streamed input's checks: driver-side file checks, and per-block messages that name the file's row."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray.exceptions import RayTaskError

from data.format import PatchFormatError, read_dataset, read_split, to_table, write_split
from data.synthetic import generate
from workflows.patch_stream import PATH_COLUMN, BlockCheck, input_error, open_file, open_source

DATA_SEED = 5
ROWS = 90
BLOCK = 16  # rows per block here: a bad row far into the file lies in a later block


def split_and_metadata(rows: int = ROWS, labelled: bool = True):
    dataset = generate({"test": rows}, seed=DATA_SEED)
    split = dataset.test if labelled else dataclasses.replace(dataset.test, labels=None)
    return split, dataset.metadata


def blocks_of(path: Path) -> list[pa.Table]:
    """The file's rows in blocks of ``BLOCK``, as Ray Data hands them to an actor."""
    table = pq.read_table(path)
    return [table.slice(start, BLOCK) for start in range(0, table.num_rows, BLOCK)]


def decode_all(check: BlockCheck, path: Path) -> list:
    return [check.decode(block) for block in blocks_of(path)]


def damaged_file(tmp_path: Path, row: int, damage) -> Path:
    """A file whose row ``row`` is changed by ``damage(table_dict, row)``, written without the writer's checks."""
    split, metadata = split_and_metadata()
    table = to_table(split, metadata)
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    damage(columns, row)
    values = metadata.values_per_patch
    flat = pa.array(np.concatenate(columns["pixels"]).astype(np.float32))
    body = {
        "patch_id": pa.array(columns["patch_id"], pa.string()),
        "label": pa.array(columns["label"], pa.string()),
        "pixels": pa.FixedSizeListArray.from_arrays(flat, values),
    }
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(body).replace_schema_metadata(table.schema.metadata), path)
    return path


def nan_pixel(columns, row):
    columns["pixels"][row] = [float("nan"), *columns["pixels"][row][1:]]


def unknown_label(columns, row):
    columns["label"][row] = "volcano"


@pytest.mark.parametrize("damage", [nan_pixel, unknown_label], ids=["nan", "label"])
def test_a_bad_row_in_a_later_block_is_named_by_its_row_in_the_file(tmp_path, damage):
    path = damaged_file(tmp_path, 37, damage)
    with pytest.raises(PatchFormatError) as in_memory:
        read_split(path)
    source = open_file(path)  # the ids are fine: the driver's checks pass
    assert source.rows == ROWS and source.labelled
    with pytest.raises(PatchFormatError) as streamed:
        decode_all(source.check(), path)
    assert str(streamed.value) == str(in_memory.value)
    assert f"{path}: row 37: " in str(streamed.value) and "\n" not in str(streamed.value)


def test_blocks_decode_to_the_in_memory_split(tmp_path):
    split, metadata = split_and_metadata()
    write_split(tmp_path / "ok.parquet", split, metadata)
    source = open_file(tmp_path / "ok.parquet")
    decoded = decode_all(source.check(), tmp_path / "ok.parquet")
    np.testing.assert_array_equal(np.concatenate([d.pixels for d in decoded]), split.pixels)
    np.testing.assert_array_equal(np.concatenate([d.labels for d in decoded]), split.labels)
    assert sum((d.patch_ids.to_pylist() for d in decoded), []) == split.patch_ids.tolist()


def test_unlabelled_files_decode_without_labels(tmp_path):
    split, metadata = split_and_metadata(labelled=False)
    write_split(tmp_path / "u.parquet", split, metadata)
    source = open_file(tmp_path / "u.parquet")
    assert not source.labelled
    assert all(block.labels is None for block in decode_all(source.check(), tmp_path / "u.parquet"))


def test_rows_without_a_file_are_named_by_patch_id():
    split, metadata = split_and_metadata(rows=20)
    table = to_table(split, metadata)
    labels = table.column("label").to_pylist()
    labels[7] = "volcano"
    table = table.set_column(table.column_names.index("label"), "label", pa.array(labels))
    check = BlockCheck("test split", metadata, labelled=True)
    with pytest.raises(PatchFormatError, match=rf"^test split: patch '{split.patch_ids[7]}': unknown label 'volcano'"):
        check.decode(table.slice(5))
    with pytest.raises(PatchFormatError, match="test split: missing column 'label'"):
        check.decode(table.drop_columns(["label"]))


def test_a_block_spanning_two_files_names_each_files_row(tmp_path):
    split, metadata = split_and_metadata()
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_split(first, split.take(np.arange(0, 40)), metadata)
    table = to_table(split.take(np.arange(40, ROWS)), metadata)
    pixels = table.column("pixels").to_pylist()
    pixels[3] = [float("inf")] * metadata.values_per_patch
    flat = pa.array(np.concatenate(pixels).astype(np.float32))
    table = table.set_column(2, "pixels", pa.FixedSizeListArray.from_arrays(flat, metadata.values_per_patch))
    pq.write_table(table, second)
    check = BlockCheck(str(tmp_path), metadata, labelled=True, files={str(first): "A", str(second): "B"})

    def block(*parts):  # rows of the files with their path column, as read_parquet(include_paths=True) gives them
        tables = [pq.read_table(path).slice(start, n) for path, start, n in parts]
        tables = [
            t.append_column(PATH_COLUMN, pa.array([str(path)] * len(t)))
            for t, (path, _, _) in zip(tables, parts, strict=True)
        ]
        return pa.concat_tables(tables)

    good = check.decode(block((first, 30, 10), (second, 0, 2)))
    assert good.patch_ids.to_pylist() == split.patch_ids[30:42].tolist()
    np.testing.assert_array_equal(good.pixels, split.pixels[30:42])
    with pytest.raises(PatchFormatError, match=r"^B: row 3: 'pixels' holds a non-finite value"):
        check.decode(block((first, 38, 2), (second, 1, 5)))


def test_the_driver_checks_ids_and_footers_as_read_split_does(tmp_path):
    split, metadata = split_and_metadata(rows=30)
    ids = split.patch_ids.copy()
    ids[21] = ids[4]
    table = to_table(dataclasses.replace(split, patch_ids=np.arange(30).astype(str)), metadata)
    table = table.set_column(0, "patch_id", pa.array(ids.tolist()))
    pq.write_table(table, tmp_path / "dup.parquet")
    with pytest.raises(PatchFormatError) as in_memory:
        read_split(tmp_path / "dup.parquet")
    with pytest.raises(PatchFormatError) as streamed:
        open_file(tmp_path / "dup.parquet")
    assert str(streamed.value) == str(in_memory.value) and "row 21" in str(streamed.value)
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(PatchFormatError, match="file is empty"):
        open_file(tmp_path / "empty.parquet")
    pq.write_table(table.drop_columns(["pixels"]), tmp_path / "nopixels.parquet")
    with pytest.raises(PatchFormatError, match="missing column 'pixels'"):
        open_file(tmp_path / "nopixels.parquet")
    pq.write_table(table.slice(0, 0), tmp_path / "norows.parquet")
    with pytest.raises(PatchFormatError, match="file has no rows"):
        open_file(tmp_path / "norows.parquet")


def test_a_missing_split_is_carved_as_read_dataset_carves_it(tmp_path):
    dataset = generate({"train": 70}, seed=DATA_SEED)
    folder = tmp_path / "ds"
    folder.mkdir()
    write_split(folder / "train.parquet", dataset.train, dataset.metadata)
    expected = read_dataset(folder).test
    source = open_source(folder, "test")
    assert source.rows == len(expected) and source.files == (folder / "train.parquet",)
    decoded = [source.check().decode(block) for block in blocks_of(folder / "train.parquet")]
    assert sum((d.patch_ids.to_pylist() for d in decoded), []) == expected.patch_ids.tolist()
    np.testing.assert_array_equal(np.concatenate([d.pixels for d in decoded]), expected.pixels)


def test_ray_errors_become_the_one_line_a_user_acts_on(tmp_path):
    cause = PatchFormatError("x.parquet: row 3: 'pixels' is null\nFailed to apply UDF transform after 1/1 attempts.")
    error = input_error(RayTaskError("submit", "Traceback ...", cause), "x.parquet")
    assert isinstance(error, PatchFormatError) and str(error) == "x.parquet: row 3: 'pixels' is null"
    damaged = input_error(RayTaskError("read", "Traceback ...", pa.ArrowInvalid("bad page")), "x.parquet")
    assert str(damaged).startswith("x.parquet: not a readable Parquet file, truncated or corrupt (bad page")
    other = RuntimeError("something else")
    assert input_error(other, "x.parquet") is other
