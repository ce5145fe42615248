"""Locations on disk and in an object store: datasets read from S3 (moto on 127.0.0.1), one-line store errors."""

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from data import DEFAULT_DATASET_DIR
from data.folder import read_dataset
from data.format import PatchFormatError, PatchRowError
from data.reading import read_split
from data.storage import (
    Location,
    StorageError,
    _checked,
    check_reachable,
    is_uri,
    local_staging,
    locate,
    move_files,
    shown,
)
from data.streaming import open_dataset_files, split_batches, stream_ray_datasets, streamed_band_stats
from data.synthetic import generate
from data.writing import to_table


@pytest.fixture(scope="module")
def bucket(s3_server):
    return s3_server.bucket("patches")


def _upload_default(uri: str) -> None:
    target = locate(uri)
    pafs.copy_files(
        str(DEFAULT_DATASET_DIR),
        target.path,
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=target.filesystem,
    )


@pytest.mark.parametrize(
    ("value", "uri"),
    [("s3://b/x", True), ("gs://b/x", True), ("results/run", False), ("C:/data", False), ("file:///tmp/x", False)],
)
def test_what_counts_as_an_object_store_uri(value, uri):
    assert is_uri(value) is uri


def test_a_local_location_is_absolute_and_a_pathlib_folded_uri_is_shown_as_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = locate("results/run")
    assert here.local and here.uri == str(tmp_path / "results" / "run")
    assert here.join("a", "b.json").path == str(tmp_path / "results" / "run" / "a" / "b.json")
    from pathlib import Path

    assert shown(Path("s3://bucket/run")) == "s3://bucket/run"


def test_a_dataset_in_s3_is_read_like_a_folder(bucket, tmp_path):
    _upload_default(f"{bucket}/default")
    files = open_dataset_files(f"{bucket}/default")
    assert files is not None
    assert files.files["train"] == f"{bucket}/default/train.parquet"
    assert files.num_rows("train") == 588
    local = read_dataset(DEFAULT_DATASET_DIR)
    remote = read_dataset(f"{bucket}/default")
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(remote.splits[name].pixels, local.splits[name].pixels)
        np.testing.assert_array_equal(remote.splits[name].labels, local.splits[name].labels)
    pixels = np.concatenate([p for p, _ in split_batches(files, "train", rows=100)])
    np.testing.assert_array_equal(pixels, local.train.pixels)


def test_a_bad_row_in_s3_is_named_by_its_uri_and_row(bucket):
    data = generate({"train": 14}, seed=1)
    table = to_table(data.train, data.metadata)
    labels = table.column("label").to_pylist()
    labels[9] = "moon"
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels))
    target = locate(f"{bucket}/bad/train.parquet")
    pq.write_table(table, target.path, filesystem=target.filesystem)
    with pytest.raises(PatchRowError, match=rf"^{bucket}/bad/train.parquet: row 9: unknown label 'moon'"):
        read_split(f"{bucket}/bad/train.parquet")


def test_a_missing_file_or_bucket_is_one_clear_line(bucket):
    with pytest.raises(PatchFormatError, match=rf"^{bucket}/nothing/train.parquet: no such file$"):
        read_split(f"{bucket}/nothing/train.parquet")
    with pytest.raises(StorageError, match=r"^--data s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist"):
        check_reachable(locate("s3://no-such-bucket/x"), "--data")
    check_reachable(locate(f"{bucket}/x"), "--data")  # an existing bucket passes


def test_access_refused_by_the_store_is_one_line():
    location = locate("s3://locked/run")

    def refuse():
        raise OSError("When reading information for key 'run' in bucket 'locked': AWS Error ACCESS_DENIED ...")

    with pytest.raises(StorageError, match=r"^--results s3://locked/run: access denied \(check the credentials"):
        _checked(location, refuse, "--results")


def test_staged_files_reach_the_store_even_when_the_job_fails(bucket):
    target = locate(f"{bucket}/staged")
    with pytest.raises(RuntimeError, match="boom"), local_staging(target, "stage-") as folder:
        (folder / "written.json").write_text("{}")
        raise RuntimeError("boom")
    assert target.join("written.json").read_bytes() == b"{}"
    assert not folder.exists()


def test_local_staging_of_a_local_folder_is_the_folder(tmp_path):
    with local_staging(Location(pafs.LocalFileSystem(), str(tmp_path), str(tmp_path)), "x-") as folder:
        assert folder == tmp_path


@pytest.mark.slow
def test_ray_data_reads_checks_and_normalises_a_dataset_in_s3(bucket, ray_cluster):
    _upload_default(f"{bucket}/ray")
    files = open_dataset_files(f"{bucket}/ray")
    local = open_dataset_files(DEFAULT_DATASET_DIR)
    stats, counts = streamed_band_stats(files)
    expected, _ = streamed_band_stats(local)
    np.testing.assert_allclose(stats.mean, expected.mean, rtol=1e-10)
    assert counts.sum() == 588
    datasets = stream_ray_datasets(files, stats, splits=("val",))
    assert datasets["val"].count() == 350


@pytest.mark.parametrize("where", ["local", "s3"])
def test_move_files_moves_every_file_below_a_prefix_and_replaces_same_names(bucket, tmp_path, where):
    root = locate(f"{bucket}/move" if where == "s3" else tmp_path / "move")
    source, target = root.join("from"), root.join("to")
    for name, body in [("a.parquet", b"A"), ("deep/b.parquet", b"B")]:
        source.join(name).write_bytes(body)
    target.join("a.parquet").write_bytes(b"old")
    target.join("kept.txt").write_bytes(b"K")
    assert move_files(source, target) == ["a.parquet", "deep/b.parquet"]
    assert target.join("a.parquet").read_bytes() == b"A" and target.join("deep/b.parquet").read_bytes() == b"B"
    assert target.join("kept.txt").read_bytes() == b"K"
    assert target.files() == ["a.parquet", "kept.txt"] and target.names() == ["a.parquet", "deep", "kept.txt"]
    assert not source.is_file() and source.files() == []
    assert move_files(root.join("nothing"), target) == []  # a missing source moves nothing


def test_move_between_file_systems_is_refused(bucket, tmp_path):
    local = locate(tmp_path / "a.parquet")
    local.write_bytes(b"A")
    with pytest.raises(StorageError, match="another file system"):
        local.move(locate(f"{bucket}/a.parquet"))
