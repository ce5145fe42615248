"""Ray Data reads of a dataset folder: footer checks, exact streamed statistics, per-block row checks, the datasets."""

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray.data.dataset import MaterializedDataset

from data import DEFAULT_DATASET_DIR
from data.format import PatchFormatError, PatchRowError, read_dataset, write_split
from data.pipeline import LABEL_COLUMN, PIXELS_COLUMN, compute_band_stats, normalise
from data.streaming import (
    combine_moments,
    open_dataset_files,
    split_batches,
    stream_ray_datasets,
    streamed_band_stats,
)
from data.synthetic import generate


@pytest.fixture(scope="module")
def dataset():
    return read_dataset(DEFAULT_DATASET_DIR)


def _copy_default(folder):
    folder.mkdir()
    for name in ("train", "val", "test"):
        shutil.copy(DEFAULT_DATASET_DIR / f"{name}.parquet", folder)
    return folder


def test_moments_combine_to_the_statistics_of_all_values():
    rng = np.random.default_rng(0)
    pixels = rng.normal(1000.0, 3.0, size=(50, 3, 4, 4))  # a large mean: sums of squares would lose the spread
    blocks = np.split(pixels, [7, 8, 30])  # uneven blocks
    counts = np.array([b.shape[0] * 16 for b in blocks])
    means = np.stack([b.mean(axis=(0, 2, 3)) for b in blocks])
    m2s = np.stack([((b - b.mean(axis=(0, 2, 3))[None, :, None, None]) ** 2).sum(axis=(0, 2, 3)) for b in blocks])
    stats = combine_moments(counts, means, m2s)
    expected = compute_band_stats(pixels)
    np.testing.assert_allclose(stats.mean, expected.mean, rtol=1e-12)
    np.testing.assert_allclose(stats.std, expected.std, rtol=1e-9)


def test_footers_describe_the_folder_and_a_folder_to_carve_is_left_to_the_reader(dataset, tmp_path):
    files = open_dataset_files(DEFAULT_DATASET_DIR)
    assert files.metadata == dataset.metadata
    assert {name: files.num_rows(name) for name in files.files} == {n: len(s) for n, s in dataset.splits.items()}
    only_train = tmp_path / "one"
    only_train.mkdir()
    shutil.copy(DEFAULT_DATASET_DIR / "train.parquet", only_train)
    assert open_dataset_files(only_train) is None


def test_an_id_in_two_splits_is_refused_from_the_ids_alone(dataset, tmp_path):
    folder = _copy_default(tmp_path / "d")
    val = dataset.val
    val.patch_ids[3] = dataset.train.patch_ids[0]
    write_split(folder / "val.parquet", val, dataset.metadata)
    with pytest.raises(PatchFormatError, match="appears in both train and val"):
        open_dataset_files(folder)


def test_streamed_statistics_equal_those_of_the_pixels_in_memory(ray_cluster, dataset):
    stats, labels = streamed_band_stats(open_dataset_files(DEFAULT_DATASET_DIR))
    expected = compute_band_stats(dataset.train.pixels)
    np.testing.assert_allclose(stats.mean, expected.mean, rtol=1e-10)
    np.testing.assert_allclose(stats.std, expected.std, rtol=1e-8)
    assert labels.tolist() == np.bincount(dataset.train.labels, minlength=dataset.metadata.num_classes).tolist()


def test_a_bad_row_deep_in_a_file_is_named_by_file_and_row(ray_cluster, tmp_path):
    big = generate({"train": 6000, "val": 10, "test": 10}, seed=3)
    folder = tmp_path / "bad"
    folder.mkdir()
    for name, split in big.splits.items():
        write_split(folder / f"{name}.parquet", split, big.metadata)
    path = folder / "train.parquet"
    table = pq.read_table(path)
    labels = table.column("label").to_pylist()
    labels[5123] = "moon"
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels)), path)
    files = open_dataset_files(folder)
    with pytest.raises(PatchRowError, match=r"train\.parquet: row 5123: unknown label 'moon'") as err:
        streamed_band_stats(files)
    assert (err.value.path, err.value.row) == (str(path), 5123)
    with pytest.raises(PatchRowError, match="row 5123"):
        list(split_batches(files, "train", rows=1000))


@pytest.mark.parametrize("object_store_bytes", [None, 1.0], ids=["materialised", "streamed"])
def test_datasets_hold_every_row_normalised_once(ray_cluster, dataset, object_store_bytes):
    files = open_dataset_files(DEFAULT_DATASET_DIR)
    stats = compute_band_stats(dataset.train.pixels)
    built = stream_ray_datasets(files, stats, object_store_bytes=object_store_bytes)
    for name in ("train", "val"):
        rows = built[name].take_all()
        pixels = np.stack([r[PIXELS_COLUMN] for r in rows])
        labels = np.array([r[LABEL_COLUMN] for r in rows])
        expected = normalise(dataset.splits[name].pixels, stats)
        order = np.lexsort(pixels.reshape(len(rows), -1)[:, :4].T)
        wanted = np.lexsort(expected.reshape(len(rows), -1)[:, :4].T)
        np.testing.assert_allclose(pixels[order], expected[wanted], rtol=1e-5, atol=1e-5)
        assert labels[order].tolist() == dataset.splits[name].labels[wanted].tolist()
    materialised = object_store_bytes is None
    assert isinstance(built["val"], MaterializedDataset) == materialised


def test_split_batches_give_the_split_in_order(dataset):
    files = open_dataset_files(DEFAULT_DATASET_DIR)
    parts = list(split_batches(files, "train", rows=100))
    assert [len(p) for p, _ in parts] == [100] * 5 + [88]
    np.testing.assert_array_equal(np.concatenate([p for p, _ in parts]), dataset.train.pixels)
    np.testing.assert_array_equal(np.concatenate([y for _, y in parts]), dataset.train.labels)
    assert pq.ParquetFile(files.files["train"]).metadata.num_rows == 588
