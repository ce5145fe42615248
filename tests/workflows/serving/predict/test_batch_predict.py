"""Tests of workflows/serving/predict (whole runs): streamed metrics, folder output, a bad row deep in a file, a driver
without pixels."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.data
from builders import make_checkpoint

from data.format import PIXELS, PatchFormatError
from data.reading import read_split
from data.storage import locate
from data.synthetic import generate
from data.writing import to_table
from workflows.serving.bundle import export_bundle
from workflows.serving.evaluate import classification_metrics, confusion_metrics
from workflows.serving.predict import PredictConfig, pipeline, predict_run, run
from workflows.serving.predict.output import stored_parts

DATA_SEED = 5
PATCHES = 120
ROW_GROUP = 30  # four row groups: a bad row in the last one is far from the first block


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A bundle and a labelled Parquet file of several row groups."""
    root = tmp_path_factory.mktemp("serving_predict")
    dataset = generate({"test": PATCHES}, seed=DATA_SEED)
    data = root / "patches.parquet"
    pq.write_table(to_table(dataset.test, dataset.metadata), data, row_group_size=ROW_GROUP)
    return {"bundle": export_bundle(make_checkpoint(root / "checkpoint"), root / "bundle"), "data": data}


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of about a row group and parts of 25 rows, so a small file flows as many blocks into many parts."""
    monkeypatch.setattr(pipeline, "BLOCK_BYTES", ROW_GROUP * 14 * 8 * 8 * 4)
    monkeypatch.setattr(pipeline, "PART_ROWS", 25)


def part_files(folder: Path) -> list[Path]:
    """The part files of a local folder output, in input order."""
    return [Path(part.path) for part in stored_parts(locate(folder))]


def test_confusion_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(5)]
    truth, predicted = rng.integers(0, 4, 200), rng.integers(0, 5, 200)  # class 4 never true, class 0..3 all seen
    confusion = np.zeros((5, 5), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    expected = classification_metrics(truth, predicted, classes)
    got = confusion_metrics(confusion)
    assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert got["macro_f1"] == pytest.approx(expected["macro_f1"], abs=1e-12)


def test_folder_output_holds_the_single_file_in_parts(files, tmp_path, ray_cluster, small_blocks):
    config = PredictConfig(model=files["bundle"], input=files["data"], output=tmp_path / "one.parquet", batch_size=16)
    single = predict_run(config)
    folder = predict_run(dataclasses.replace(config, output=tmp_path / "parts"))
    parts = part_files(tmp_path / "parts")
    assert len(parts) > 1 and sorted(p.name for p in (tmp_path / "parts").iterdir()) == sorted(p.name for p in parts)
    whole = pq.read_table(tmp_path / "one.parquet")
    joined = pa.concat_tables([pq.read_table(p) for p in parts])
    assert joined.equals(whole)  # all rows, in input order, same values
    assert whole.column("patch_id").to_pylist() == read_split(files["data"])[0].patch_ids.tolist()
    assert pq.read_schema(parts[0]).metadata == whole.schema.metadata  # the 'predictions' key in every part
    assert (folder.accuracy, folder.macro_f1) == (single.accuracy, single.macro_f1) and folder.patches == PATCHES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.parquet", "parts"]  # no temporary folder left
    # Replacing a predictions folder needs --overwrite, and then works.
    with pytest.raises(FileExistsError, match="already exists"):
        predict_run(dataclasses.replace(config, output=tmp_path / "parts"))
    predict_run(dataclasses.replace(config, output=tmp_path / "parts", overwrite=True))
    assert pa.concat_tables([pq.read_table(p) for p in part_files(tmp_path / "parts")]).equals(whole)


@pytest.mark.parametrize("output", ["preds.parquet", "preds"], ids=["file", "folder"])
def test_a_bad_row_deep_in_the_file_leaves_nothing(files, tmp_path, ray_cluster, small_blocks, output):
    dataset = generate({"test": PATCHES}, seed=DATA_SEED)
    pixels = dataset.test.pixels.copy()
    bad_row = PATCHES - 7  # in the last row group
    table = to_table(dataclasses.replace(dataset.test, pixels=pixels), dataset.metadata)
    values = table.column(PIXELS).combine_chunks().flatten().to_numpy().copy()
    values[bad_row * pixels[0].size + 3] = np.nan
    flat = pa.FixedSizeListArray.from_arrays(pa.array(values), pixels[0].size)
    broken = table.set_column(table.column_names.index(PIXELS), PIXELS, flat)
    path = tmp_path / "in" / "broken.parquet"
    path.parent.mkdir()
    pq.write_table(broken, path, row_group_size=ROW_GROUP)
    with pytest.raises(PatchFormatError) as expected:
        read_split(path)
    out = tmp_path / "out" / output
    with pytest.raises(PatchFormatError) as caught:
        predict_run(PredictConfig(model=files["bundle"], input=path, output=out, batch_size=16))
    assert (
        str(caught.value)
        == str(expected.value)
        == f"{path}: row {bad_row}: 'pixels' holds a non-finite value (NaN or inf)"
    )
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_the_driver_reads_no_pixels_and_gathers_no_predictions(files, tmp_path, ray_cluster, monkeypatch):
    """The driver may read footers and id/label columns; any read of pixels or gathering of rows fails the run."""
    real_read_table = pq.read_table

    def read_table(source, *args, columns=None, **kwargs):
        assert columns is not None and PIXELS not in columns, "the driver read the pixels"
        return real_read_table(source, *args, columns=columns, **kwargs)

    def gathered(*args, **kwargs):
        raise AssertionError("the driver gathered the dataset's rows")

    monkeypatch.setattr(pq, "read_table", read_table)
    for name in ("iter_batches", "iter_rows", "take_all", "take", "to_pandas"):  # write_parquet itself materialises
        monkeypatch.setattr(ray.data.Dataset, name, gathered)
    monkeypatch.setattr(run, "read_dataset", gathered)
    result = predict_run(PredictConfig(model=files["bundle"], input=files["data"], output=tmp_path / "p.parquet"))
    assert result.patches == PATCHES and result.accuracy is not None
    monkeypatch.undo()
    assert pq.read_table(tmp_path / "p.parquet").num_rows == PATCHES
