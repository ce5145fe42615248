"""Tests of the Parquet patch format: round trip, atomic writes, and one-line errors for every kind of bad file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.folder import read_dataset
from data.format import LABEL, METADATA_KEY, PATCH_ID, PIXELS, PatchDataset, PatchFormatError, PatchMetadata, PatchSplit
from data.reading import read_file_info, read_split
from data.splitting import split_counts, stratified_split
from data.writing import to_table, write_dataset, write_split

META = PatchMetadata(bands=("blue", "green", "red", "vv"), height=3, width=4, classes=("a", "b", "c"))


def make_split(n: int = 30, seed: int = 0, prefix: str = "p", meta: PatchMetadata = META) -> PatchSplit:
    rng = np.random.default_rng(seed)
    return PatchSplit(
        patch_ids=np.asarray([f"{prefix}-{i:04d}" for i in range(n)], dtype=object),
        pixels=rng.normal(size=(n, meta.num_bands, meta.height, meta.width)).astype(np.float32),
        labels=np.arange(n) % meta.num_classes,
    )


def make_dataset() -> PatchDataset:
    return PatchDataset(
        META, {"train": make_split(30, 0, "tr"), "val": make_split(9, 1, "va"), "test": make_split(9, 2, "te")}
    )


def write_table(path: Path, table: pa.Table, meta: PatchMetadata | None = META) -> Path:
    if meta is not None:
        table = table.replace_schema_metadata({METADATA_KEY: meta.to_json()})
    pq.write_table(table, path)
    return path


def assert_one_line_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_round_trip_keeps_everything(tmp_path):
    dataset = make_dataset()
    write_dataset(tmp_path / "ds", dataset)
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["test.parquet", "train.parquet", "val.parquet"]
    back = read_dataset(tmp_path / "ds")
    assert back.metadata == META
    for name, split in dataset.splits.items():
        got = back.splits[name]
        assert got.patch_ids.tolist() == split.patch_ids.tolist()
        np.testing.assert_array_equal(got.pixels, split.pixels)
        np.testing.assert_array_equal(got.labels, split.labels)
        assert got.pixels.dtype == np.float32 and got.pixels.shape == split.pixels.shape


def test_round_trip_metadata_with_units_and_nodata(tmp_path):
    meta = PatchMetadata(("b1", "b2"), 3, 3, ("x", "y"), units=("DN", "dB"), nodata=-9999.0)
    write_split(tmp_path / "t.parquet", make_split(4, meta=meta), meta)
    assert read_file_info(tmp_path / "t.parquet").metadata == meta


def test_plain_pyarrow_reads_the_file(tmp_path):
    write_split(tmp_path / "t.parquet", make_split(5), META)
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.column_names == [PATCH_ID, LABEL, PIXELS]
    assert table.schema.field(PIXELS).type == pa.list_(pa.float32(), META.values_per_patch)
    assert json.loads(table.schema.metadata[METADATA_KEY.encode()])["bands"] == list(META.bands)


def test_unlabelled_file_reads_without_labels(tmp_path):
    split = make_split(5)
    split.labels = None
    write_split(tmp_path / "p.parquet", split, META)
    got, _ = read_split(tmp_path / "p.parquet", require_labels=False)
    assert got.labels is None
    with pytest.raises(PatchFormatError) as excinfo:
        read_split(tmp_path / "p.parquet")
    assert_one_line_error(excinfo, "p.parquet", "missing column", LABEL)


def test_dictionary_encoded_labels_are_accepted(tmp_path):
    table = to_table(make_split(6), META)
    table = table.set_column(1, LABEL, table.column(LABEL).dictionary_encode())
    got, _ = read_split(write_table(tmp_path / "d.parquet", table))
    np.testing.assert_array_equal(got.labels, np.arange(6) % 3)


@pytest.mark.parametrize("column", [PATCH_ID, LABEL, PIXELS])
def test_missing_column(tmp_path, column):
    table = to_table(make_split(5), META).drop_columns([column])
    path = write_table(tmp_path / "m.parquet", table)
    with pytest.raises(PatchFormatError) as excinfo:
        read_split(path)
    assert_one_line_error(excinfo, str(path), "missing column", repr(column))


def test_wrong_pixel_count(tmp_path):
    table = to_table(make_split(5), META)
    rows = [list(v) for v in table.column(PIXELS).to_pylist()]
    rows[3] = rows[3][:-1]
    table = table.set_column(2, PIXELS, pa.array(rows, type=pa.list_(pa.float32())))
    path = write_table(tmp_path / "w.parquet", table)
    with pytest.raises(PatchFormatError) as excinfo:
        read_split(path)
    assert_one_line_error(excinfo, str(path), "row 3", f"{META.values_per_patch - 1} values", "expected 48")


def test_metadata_disagreeing_with_pixel_length(tmp_path):
    other = PatchMetadata(META.bands, META.height + 1, META.width, META.classes)
    path = write_table(tmp_path / "s.parquet", to_table(make_split(5), META), meta=other)
    with pytest.raises(PatchFormatError) as excinfo:
        read_split(path)
    assert_one_line_error(excinfo, str(path), "row 0", "expected 64")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixel(tmp_path, bad):
    table = to_table(make_split(6), META)
    rows = table.column(PIXELS).to_pylist()
    rows[4][7] = bad
    table = table.set_column(2, PIXELS, pa.array(rows, type=pa.list_(pa.float32(), META.values_per_patch)))
    path = write_table(tmp_path / "n.parquet", table)
    with pytest.raises(PatchFormatError) as excinfo:
        read_split(path)
    assert_one_line_error(excinfo, str(path), "row 4", "non-finite")


def test_unknown_label(tmp_path):
    table = to_table(make_split(6), META)
    labels = table.column(LABEL).to_pylist()
    labels[2] = "zebra"
    table = table.set_column(1, LABEL, pa.array(labels, type=pa.string()))
    path = write_table(tmp_path / "u.parquet", table)
    with pytest.raises(PatchFormatError) as excinfo:
        read_split(path)
    assert_one_line_error(excinfo, str(path), "row 2", "'zebra'", "a, b, c")


def test_duplicate_id(tmp_path):
    table = to_table(make_split(6), META)
    ids = table.column(PATCH_ID).to_pylist()
    ids[5] = ids[1]
    table = table.set_column(0, PATCH_ID, pa.array(ids, type=pa.string()))
    path = write_table(tmp_path / "dup.parquet", table)
    with pytest.raises(PatchFormatError) as excinfo:
        read_split(path)
    assert_one_line_error(excinfo, str(path), "row 5", "duplicate", "row 1")


def test_duplicate_id_across_splits(tmp_path):
    dataset = make_dataset()
    write_dataset(tmp_path / "ds", dataset)
    val = dataset.val
    val.patch_ids = val.patch_ids.copy()
    val.patch_ids[0] = dataset.train.patch_ids[0]
    write_split(tmp_path / "ds" / "val.parquet", val, META)
    with pytest.raises(PatchFormatError) as excinfo:
        read_dataset(tmp_path / "ds")
    assert_one_line_error(excinfo, str(tmp_path / "ds"), "'tr-0000'", "train", "val")


def test_empty_file(tmp_path):
    path = tmp_path / "e.parquet"
    path.write_bytes(b"")
    with pytest.raises(PatchFormatError) as excinfo:
        read_split(path)
    assert_one_line_error(excinfo, str(path), "empty")


def test_file_without_rows(tmp_path):
    table = to_table(make_split(3), META).slice(0, 0)
    path = write_table(tmp_path / "z.parquet", table)
    with pytest.raises(PatchFormatError) as excinfo:
        read_split(path)
    assert_one_line_error(excinfo, str(path), "no rows")


def test_truncated_file(tmp_path):
    write_split(tmp_path / "v.parquet", make_split(30), META)
    raw = (tmp_path / "v.parquet").read_bytes()
    path = tmp_path / "half.parquet"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(PatchFormatError) as excinfo:
        read_split(path)
    assert_one_line_error(excinfo, str(path), "truncated or corrupt")


def test_flipped_bytes_in_footer(tmp_path):
    write_split(tmp_path / "v.parquet", make_split(30), META)
    raw = bytearray((tmp_path / "v.parquet").read_bytes())
    for i in range(len(raw) - 60, len(raw) - 8):  # inside the footer, before its length and magic
        raw[i] ^= 0xFF
    path = tmp_path / "flip.parquet"
    path.write_bytes(bytes(raw))
    with pytest.raises(PatchFormatError) as excinfo:
        read_split(path)
    assert_one_line_error(excinfo, str(path))


def test_flipped_bytes_in_data(tmp_path):
    write_split(tmp_path / "v.parquet", make_split(30), META)
    raw = bytearray((tmp_path / "v.parquet").read_bytes())
    for i in range(200, 400):  # inside the column chunks (zstd-compressed pages)
        raw[i] ^= 0xFF
    path = tmp_path / "flip.parquet"
    path.write_bytes(bytes(raw))
    with pytest.raises(PatchFormatError) as excinfo:
        read_split(path)
    assert_one_line_error(excinfo, str(path))


def test_not_parquet_at_all(tmp_path):
    path = tmp_path / "text.parquet"
    path.write_text("patch_id,label\n1,a\n")
    with pytest.raises(PatchFormatError) as excinfo:
        read_split(path)
    assert_one_line_error(excinfo, str(path), "not a readable Parquet file")


def test_missing_file(tmp_path):
    with pytest.raises(PatchFormatError) as excinfo:
        read_split(tmp_path / "nothing.parquet")
    assert_one_line_error(excinfo, "nothing.parquet", "no such file")


def test_missing_metadata_key(tmp_path):
    path = write_table(tmp_path / "nometa.parquet", to_table(make_split(3), META).replace_schema_metadata({}), None)
    with pytest.raises(PatchFormatError) as excinfo:
        read_split(path)
    assert_one_line_error(excinfo, str(path), f"lacks the '{METADATA_KEY}' key")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"bands": ["a"], "height": 3, "width": 3}, "lacks classes"),
        ({"bands": ["a"], "height": 3, "classes": ["x", "y"]}, "lacks width"),
        ({"bands": [], "height": 3, "width": 3, "classes": ["x"]}, "'bands' must be a non-empty list"),
        ({"bands": ["a", "a"], "height": 3, "width": 3, "classes": ["x"]}, "duplicate"),
        ({"bands": ["a"], "height": "3", "width": 3, "classes": ["x"]}, "'height' must be a positive integer"),
        ({"bands": ["a"], "height": 3, "width": 3, "classes": ["x"], "nodata": "NaN"}, "'nodata'"),
        ({"bands": ["a"], "height": 3, "width": 3, "classes": ["x"], "units": ["dB", "DN"]}, "'units'"),
        (["not", "an", "object"], "must be a JSON object"),
    ],
)
def test_bad_metadata_keys(tmp_path, body, fragment):
    table = to_table(make_split(3), META).replace_schema_metadata({METADATA_KEY: json.dumps(body)})
    path = write_table(tmp_path / "badmeta.parquet", table, None)
    with pytest.raises(PatchFormatError) as excinfo:
        read_split(path)
    assert_one_line_error(excinfo, str(path), fragment)


def test_metadata_not_json(tmp_path):
    table = to_table(make_split(3), META).replace_schema_metadata({METADATA_KEY: "{bands: oops"})
    path = write_table(tmp_path / "badjson.parquet", table, None)
    with pytest.raises(PatchFormatError) as excinfo:
        read_split(path)
    assert_one_line_error(excinfo, str(path), "not valid JSON")


def test_metadata_disagreeing_between_splits(tmp_path):
    write_dataset(tmp_path / "ds", make_dataset())
    other = PatchMetadata(("blue", "green", "red", "vh"), META.height, META.width, META.classes)
    write_split(tmp_path / "ds" / "test.parquet", make_split(9, 2, "te", meta=other), other)
    with pytest.raises(PatchFormatError) as excinfo:
        read_dataset(tmp_path / "ds")
    assert_one_line_error(excinfo, "test.parquet", "disagrees with train.parquet", "bands")


def test_single_file_folder_is_split_stratified_and_deterministically(tmp_path):
    whole = make_split(60)
    write_split(tmp_path / "only" / "patches.parquet", whole, META)
    first = read_dataset(tmp_path / "only", seed=3)
    again = read_dataset(tmp_path / "only", seed=3)
    other = read_dataset(tmp_path / "only", seed=4)
    ids = {name: split.patch_ids.tolist() for name, split in first.splits.items()}
    assert ids == {name: split.patch_ids.tolist() for name, split in again.splits.items()}
    assert ids != {name: split.patch_ids.tolist() for name, split in other.splits.items()}
    assert sum(len(split) for split in first.splits.values()) == 60
    assert set().union(*map(set, ids.values())) == set(whole.patch_ids.tolist())
    for split in first.splits.values():  # every class in every split, in the same proportion
        counts = np.bincount(split.labels, minlength=META.num_classes)
        assert counts.min() == counts.max() > 0
    assert [len(first.splits[n]) for n in ("train", "val", "test")] == [42, 9, 9]


def test_missing_val_is_carved_from_train(tmp_path):
    dataset = make_dataset()
    del dataset.splits["val"]
    write_dataset(tmp_path / "ds", dataset)
    back = read_dataset(tmp_path / "ds")
    assert set(back.splits) == {"train", "val", "test"}
    assert back.test.patch_ids.tolist() == dataset.test.patch_ids.tolist()
    assert len(back.train) + len(back.val) == 30 and len(back.val) > 0


def test_carving_too_few_rows_names_the_file(tmp_path):
    write_split(tmp_path / "tiny" / "p.parquet", make_split(3), META)
    with pytest.raises(PatchFormatError) as excinfo:
        read_dataset(tmp_path / "tiny")
    assert_one_line_error(excinfo, "p.parquet", "too few")


def test_folder_errors(tmp_path):
    with pytest.raises(PatchFormatError, match="not a dataset folder"):
        read_dataset(tmp_path / "absent")
    (tmp_path / "two").mkdir()
    write_split(tmp_path / "two" / "a.parquet", make_split(9), META)
    write_split(tmp_path / "two" / "b.parquet", make_split(9), META)
    with pytest.raises(PatchFormatError, match="exactly one Parquet file, found 2"):
        read_dataset(tmp_path / "two")
    (tmp_path / "notrain").mkdir()
    write_split(tmp_path / "notrain" / "val.parquet", make_split(9), META)
    with pytest.raises(PatchFormatError, match="no train.parquet"):
        read_dataset(tmp_path / "notrain")


def test_stratified_split_is_seeded_and_complete():
    labels = np.repeat(np.arange(4), 20)
    parts = stratified_split(labels, (0.7, 0.15, 0.15), seed=1)
    assert [len(p) for p in parts] == [4 * c for c in split_counts(20, (0.7, 0.15, 0.15))]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(80))
    again = stratified_split(labels, (0.7, 0.15, 0.15), seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(labels, (0.5, 0.2), seed=1)
    with pytest.raises(ValueError, match="non-negative"):
        stratified_split(labels, (1.2, -0.2), seed=1)


def test_writer_is_atomic_and_refuses_existing_folder(tmp_path):
    write_dataset(tmp_path / "ds", make_dataset())
    with pytest.raises(FileExistsError):
        write_dataset(tmp_path / "ds", make_dataset())
    bad = make_dataset()
    bad.test.pixels[1, 0, 0, 0] = np.nan
    with pytest.raises(PatchFormatError, match="non-finite"):
        write_dataset(tmp_path / "ds", bad, overwrite=True)
    assert read_dataset(tmp_path / "ds").metadata == META  # the old dataset is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary folders left behind
    replacement = make_dataset()
    replacement.train.pixels[:] = 1.0
    write_dataset(tmp_path / "ds", replacement, overwrite=True)
    assert (read_dataset(tmp_path / "ds").train.pixels == 1.0).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_overwrite_refuses_a_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        write_dataset(tmp_path / "home", make_dataset(), overwrite=True)
    assert (tmp_path / "home" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda s: s.labels.__setitem__(0, 3), "not a class index"),
        (lambda s: s.patch_ids.__setitem__(2, s.patch_ids[1]), "duplicate"),
        (lambda s: s.pixels.__setitem__((0, 0, 0, 0), np.inf), "non-finite"),
    ],
)
def test_writer_refuses_what_readers_reject(tmp_path, mutate, fragment):
    split = make_split(5)
    mutate(split)
    with pytest.raises(PatchFormatError, match=fragment):
        write_split(tmp_path / "x.parquet", split, META)
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_empty_split_and_unknown_split_names(tmp_path):
    with pytest.raises(PatchFormatError, match="no patches"):
        write_split(tmp_path / "x.parquet", make_split(0), META)
    dataset = make_dataset()
    dataset.splits["holdout"] = dataset.splits.pop("test")
    with pytest.raises(PatchFormatError, match="holdout"):
        write_dataset(tmp_path / "ds", dataset)
    assert not (tmp_path / "ds").exists()
