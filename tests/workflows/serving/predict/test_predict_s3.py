"""Tests of workflows/serving/predict with object-store input and output, against moto's S3 server on 127.0.0.1.

The tests that need no Ray come first; the module's Ray cluster starts after the S3 server, so its workers inherit
the AWS_* variables that point them at it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from builders import make_checkpoint

from data.format import PatchRowError
from data.reading import read_split
from data.storage import Location, locate
from data.synthetic import generate
from data.writing import to_table, write_dataset, write_split
from workflows import predict as script
from workflows.serving.bundle import export_bundle
from workflows.serving.predict import PredictConfig, pipeline, predict_run, run
from workflows.serving.predict.output import stored_parts
from workflows.serving.predict.predictor import OUTPUT_METADATA_KEY

DATA_SEED = 5
PATCHES = 90
ROW_GROUP = 30  # three row groups: several blocks, and several part files with PART_ROWS below
PART_ROWS = 25


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    return s3_server.bucket("predictions")


def _upload(path: Path, uri: str) -> str:
    locate(uri).write_bytes(path.read_bytes())
    return uri


@pytest.fixture(scope="module")
def files(bucket, tmp_path_factory) -> dict[str, Path | str]:
    """A local bundle; a labelled file, an unlabelled file and a dataset folder, each locally and in the bucket."""
    root = tmp_path_factory.mktemp("predict_s3")
    dataset = generate({"train": 40, "test": PATCHES}, seed=DATA_SEED)
    labelled = root / "patches.parquet"
    pq.write_table(to_table(dataset.test, dataset.metadata), labelled, row_group_size=ROW_GROUP)
    unlabelled = root / "unlabelled.parquet"
    write_split(unlabelled, dataclasses.replace(dataset.test, labels=None), dataset.metadata)
    write_dataset(root / "dataset", dataset)  # train and test: val is carved when read, test is streamed as it is
    for name in ("train", "test"):
        _upload(root / "dataset" / f"{name}.parquet", f"{bucket}/in/dataset/{name}.parquet")
    return {
        "bundle": export_bundle(make_checkpoint(root / "checkpoint"), root / "bundle"),
        "labelled": labelled,
        "s3_labelled": _upload(labelled, f"{bucket}/in/patches.parquet"),
        "s3_unlabelled": _upload(unlabelled, f"{bucket}/in/unlabelled.parquet"),
        "s3_dataset": f"{bucket}/in/dataset",
        "test_ids": dataset.test.patch_ids.tolist(),
    }


@pytest.fixture
def small_parts(monkeypatch):
    """Blocks of about a row group and parts of PART_ROWS rows, so a folder output holds several part files."""
    monkeypatch.setattr(pipeline, "BLOCK_BYTES", ROW_GROUP * 14 * 8 * 8 * 4)
    monkeypatch.setattr(pipeline, "PART_ROWS", PART_ROWS)


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the run gets as far as connecting to Ray."""

    def connect(*args, **kwargs):
        raise AssertionError("Ray was started before the problem was found")

    monkeypatch.setattr(run, "connect", connect)


def read_stored(location: Location) -> pa.Table:
    """A Parquet file in the store, without its schema metadata (which names the input)."""
    table = pq.read_table(location.path, filesystem=location.filesystem)
    return table.replace_schema_metadata(None)


def run_main(capsys, *args: str | Path) -> tuple[int, str]:
    code = script.main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, expected: str) -> None:
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: {expected}"), err


def test_help_says_input_and_output_take_uris():
    text = " ".join(script.build_parser().format_help().split())
    assert "object-store URI (s3://bucket/prefix" in text and "AWS_ENDPOINT_URL" in text
    assert "a local path, not a URI" in text  # --model


def test_a_missing_bucket_is_one_line_before_ray_starts(files, bucket, tmp_path, capsys, no_ray):
    out = tmp_path / "out.parquet"
    missing = "s3://no-such-bucket/p.parquet"
    code, err = run_main(capsys, "--model", files["bundle"], "--input", missing, "--output", out)
    assert_one_line(code, err, "--input s3://no-such-bucket/p.parquet: bucket 'no-such-bucket' does not exist")
    code, err = run_main(
        capsys, "--model", files["bundle"], "--input", files["s3_labelled"], "--output", "s3://no-such-bucket/preds"
    )
    assert_one_line(code, err, "--output s3://no-such-bucket/preds: bucket 'no-such-bucket' does not exist")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_model_uri_is_refused_in_one_line(files, bucket, tmp_path, capsys, no_ray):
    code, err = run_main(
        capsys, "--model", f"{bucket}/bundle", "--input", files["s3_labelled"], "--output", tmp_path / "p.parquet"
    )
    assert_one_line(code, err, f"--model {bucket}/bundle: must be a local bundle folder")


def test_stored_outputs_that_would_replace_the_input_or_other_files_are_refused(files, bucket, no_ray):
    config = PredictConfig(model=files["bundle"], input=files["s3_labelled"], output=files["s3_labelled"])
    with pytest.raises(FileExistsError, match=r"^--output s3://predictions/in/patches.parquet: is the input file"):
        predict_run(dataclasses.replace(config, overwrite=True))
    inside = dataclasses.replace(config, input=files["s3_dataset"], output=f"{files['s3_dataset']}/preds")
    with pytest.raises(FileExistsError, match="inside the --input dataset folder s3://predictions/in/dataset"):
        predict_run(inside)
    notes = locate(f"{bucket}/other/notes.txt")
    notes.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match=r"^s3://predictions/other: is a folder holding notes.txt, not only"):
        predict_run(dataclasses.replace(config, output=f"{bucket}/other", overwrite=True))
    with pytest.raises(FileExistsError, match=r"^--output s3://predictions: holds the --input s3://predictions/in/"):
        predict_run(dataclasses.replace(config, output=bucket))
    with pytest.raises(ValueError, match=r"^--output s3://predictions: is a whole bucket"):
        predict_run(dataclasses.replace(config, input=files["labelled"], output=bucket))
    assert notes.read_bytes() == b"mine"


@pytest.mark.slow  # three runs: about 35 s here
def test_s3_input_to_s3_file_and_folder_equal_the_local_run(files, bucket, tmp_path, ray_cluster, small_parts):
    config = PredictConfig(model=files["bundle"], input=files["labelled"], output=tmp_path / "local.parquet")
    local = predict_run(config)
    expected = pq.read_table(tmp_path / "local.parquet").replace_schema_metadata(None)
    stored = dataclasses.replace(config, input=files["s3_labelled"], output=f"{bucket}/out/one.parquet")
    one = predict_run(stored)
    folder = predict_run(dataclasses.replace(stored, output=f"{bucket}/out/parts"))
    assert one.output == f"{bucket}/out/one.parquet" and folder.patches == one.patches == PATCHES
    assert read_stored(locate(one.output)).equals(expected)  # all rows, in input order, same values
    parts = stored_parts(locate(folder.output))
    assert len(parts) == -(-PATCHES // PART_ROWS) and locate(folder.output).names() == [p.name for p in parts]
    assert pa.concat_tables([read_stored(part) for part in parts]).equals(expected)
    assert (one.accuracy, one.macro_f1) == (folder.accuracy, folder.macro_f1) == (local.accuracy, local.macro_f1)
    schema = pq.read_schema(locate(one.output).path, filesystem=locate(one.output).filesystem)
    assert json.loads(schema.metadata[OUTPUT_METADATA_KEY.encode()])["input"] == files["s3_labelled"]
    assert locate(f"{bucket}/out").names() == ["one.parquet", "parts"]  # no temporary prefix left


def test_unlabelled_s3_input(files, bucket, ray_cluster):
    config = PredictConfig(
        model=files["bundle"], input=files["s3_unlabelled"], output=f"{bucket}/unlabelled/p.parquet", tta=False
    )
    result = predict_run(config)
    assert result.accuracy is None and result.patches == PATCHES
    table = read_stored(locate(result.output))
    assert table.column("patch_id").to_pylist() == files["test_ids"]
    probabilities = np.stack([table.column(name).to_numpy() for name in table.column_names[2:]], axis=1)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_a_split_of_an_s3_dataset_folder_to_a_local_folder(files, tmp_path, ray_cluster):
    result = predict_run(PredictConfig(model=files["bundle"], input=files["s3_dataset"], output=tmp_path / "parts"))
    assert result.accuracy is not None
    parts = stored_parts(locate(tmp_path / "parts"))
    assert pa.concat_tables([pq.read_table(p.path) for p in parts]).column("patch_id").to_pylist() == files["test_ids"]


@pytest.mark.slow  # two runs: about 35 s here
def test_an_existing_s3_output_is_refused_without_overwrite_and_replaced_with_it(files, bucket, ray_cluster):
    config = PredictConfig(model=files["bundle"], input=files["s3_labelled"], output=f"{bucket}/ow/p.parquet")
    precious = locate(config.output)
    precious.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match=r"^s3://predictions/ow/p.parquet: already exists; pass --overwrite"):
        predict_run(config)
    assert precious.read_bytes() == b"precious"
    predict_run(dataclasses.replace(config, overwrite=True))
    assert read_stored(precious).num_rows == PATCHES
    # A folder of part files from an earlier run: refused, then replaced, the older part gone.
    folder = dataclasses.replace(config, output=f"{bucket}/ow/parts")
    older = locate(folder.output).join("0a1b_000000-0.parquet")
    older.write_bytes(b"an older part")
    with pytest.raises(FileExistsError, match=r"^s3://predictions/ow/parts: already exists"):
        predict_run(folder)
    predict_run(dataclasses.replace(folder, overwrite=True))
    parts = stored_parts(locate(folder.output))
    assert older.name not in [p.name for p in parts] and not older.exists()
    assert sum(read_stored(p).num_rows for p in parts) == PATCHES
    assert locate(f"{bucket}/ow").names() == ["p.parquet", "parts"]


# One output kind a test: the exception a test holds keeps the failed run's actor pool alive (through the traceback's
# frames), and with 2 CPUs a second run in the same test would wait for its CPU for good.
@pytest.mark.parametrize("output", ["preds.parquet", "preds"], ids=["file", "folder"])
def test_a_bad_row_in_s3_names_the_uri_and_row_and_leaves_nothing(files, bucket, ray_cluster, small_parts, output):
    dataset = generate({"test": 60}, seed=DATA_SEED)
    table = to_table(dataset.test, dataset.metadata)
    labels = table.column("label").to_pylist()
    labels[-3] = "nope"
    bad = locate(f"{bucket}/bad/in.parquet")
    broken = table.set_column(table.column_names.index("label"), "label", pa.array(labels))
    pq.write_table(broken, bad.path, filesystem=bad.filesystem, row_group_size=20)
    with pytest.raises(PatchRowError) as expected:
        read_split(bad.uri)
    out = locate(f"{bucket}/bad/{output}-out")
    with pytest.raises(PatchRowError) as caught:
        predict_run(PredictConfig(model=files["bundle"], input=bad.uri, output=out.join(output).uri))
    assert str(caught.value) == str(expected.value)
    assert str(caught.value).startswith(f"{bad.uri}: row 57: unknown label 'nope'")
    assert not out.exists()  # neither the output nor its temporary prefix (nor an empty folder marker)
