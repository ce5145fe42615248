"""Ray Data reads of a dataset folder: footer checks, exact streamed statistics, per-block row checks, the datasets."""

import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from builders import pixel_band_stats
from ray.data.dataset import MaterializedDataset

from data import DEFAULT_DATASET_DIR
from data.folder import read_dataset
from data.format import PatchFormatError, PatchRowError
from data.pipeline import LABEL_COLUMN, MIN_STD, PIXELS_COLUMN, normalise
from data.streaming import (
    FOOTER_ACTORS,
    FOOTER_ACTORS_SETTING,
    combine_moments,
    open_dataset_files,
    read_parquet,
    split_batches,
    stream_ray_datasets,
    streamed_band_stats,
)
from data.synthetic import generate
from data.writing import write_split


@pytest.fixture(scope="module")
def dataset():
    return read_dataset(DEFAULT_DATASET_DIR)


def _copy_default(folder):
    folder.mkdir()
    for name in ("train", "val", "test"):
        shutil.copy(DEFAULT_DATASET_DIR / f"{name}.parquet", folder)
    return folder


def _block_moments(blocks):
    """Each block's values per band, per-band mean and sum of squared deviations, as the streamed scan finds them."""
    counts = np.array([b.shape[0] * b.shape[2] * b.shape[3] for b in blocks])
    means = np.stack([b.mean(axis=(0, 2, 3)) for b in blocks])
    m2s = np.stack([((b - b.mean(axis=(0, 2, 3))[None, :, None, None]) ** 2).sum(axis=(0, 2, 3)) for b in blocks])
    return counts, means, m2s


def test_moments_combine_to_the_statistics_of_all_values():
    rng = np.random.default_rng(0)
    pixels = rng.normal(1000.0, 3.0, size=(50, 3, 4, 4))  # a large mean: sums of squares would lose the spread
    stats = combine_moments(*_block_moments(np.split(pixels, [7, 8, 30])))  # uneven blocks
    expected = pixel_band_stats(pixels)
    np.testing.assert_allclose(stats.mean, expected.mean, rtol=1e-12)
    np.testing.assert_allclose(stats.std, expected.std, rtol=1e-9)


def test_combined_statistics_are_per_band_with_a_floor_for_constant_bands():
    rng = np.random.default_rng(0)
    pixels = rng.normal(loc=[[[[100.0]], [[-3.0]], [[7.0]]]], scale=[[[[5.0]], [[0.5]], [[0.0]]]], size=(40, 3, 4, 4))
    stats = combine_moments(*_block_moments(np.split(pixels, [13])))
    np.testing.assert_allclose(stats.mean, pixels.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(stats.std[:2], pixels.std(axis=(0, 2, 3))[:2])
    assert stats.std[2] == MIN_STD  # a constant band does not divide by zero


def test_footers_describe_the_folder(dataset):
    files = open_dataset_files(DEFAULT_DATASET_DIR)
    assert files.metadata == dataset.metadata and files.rows == {}
    assert {name: files.num_rows(name) for name in files.files} == {n: len(s) for n, s in dataset.splits.items()}


def _one_file_folder(tmp_path, name="patches.parquet"):
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(DEFAULT_DATASET_DIR / "train.parquet", folder / name)
    return folder


@pytest.mark.parametrize("name", ["patches.parquet", "train.parquet"])
def test_splits_are_carved_as_the_reader_carves_them_from_the_labels_alone(tmp_path, name):
    folder = _one_file_folder(tmp_path, name)
    files = open_dataset_files(folder)
    carved = read_dataset(folder)
    assert set(files.files) == {"train", "val", "test"} and len(set(files.files.values())) == 1
    for split in ("train", "val", "test"):
        assert files.num_rows(split) == len(carved.splits[split])
        assert files.ids[split].to_pylist() == carved.splits[split].patch_ids.tolist()
        pixels, labels = (np.concatenate(part) for part in zip(*split_batches(files, split, rows=64), strict=True))
        np.testing.assert_array_equal(pixels, carved.splits[split].pixels)
        np.testing.assert_array_equal(labels, carved.splits[split].labels)


def test_a_folder_with_train_and_test_has_only_val_carved(dataset, tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("train", "test"):
        shutil.copy(DEFAULT_DATASET_DIR / f"{name}.parquet", folder)
    files = open_dataset_files(folder)
    assert set(files.rows) == {"train", "val"} and files.files["test"] == str(folder / "test.parquet")
    assert files.num_rows("test") == len(dataset.test)
    assert files.num_rows("train") + files.num_rows("val") == len(dataset.train)


def test_too_few_patches_to_carve_is_one_line(tmp_path):
    small = generate({"train": 7}, seed=2)
    folder = tmp_path / "small"
    folder.mkdir()
    write_split(folder / "train.parquet", small.train, small.metadata)
    with pytest.raises(PatchFormatError, match=r"train\.parquet: 7 patches are too few to carve a non-empty"):
        open_dataset_files(folder)


def test_carved_splits_in_ray_data_hold_their_rows_and_the_training_statistics(ray_cluster, tmp_path):
    folder = _one_file_folder(tmp_path)
    files = open_dataset_files(folder)
    carved = read_dataset(folder)
    stats, counts = streamed_band_stats(files)
    expected = pixel_band_stats(carved.train.pixels)
    np.testing.assert_allclose(stats.mean, expected.mean, rtol=1e-10)
    np.testing.assert_allclose(stats.std, expected.std, rtol=1e-8)
    assert counts.sum() == len(carved.train)
    built = stream_ray_datasets(files, stats, object_store_bytes=1.0)  # streamed: filtered on every pass
    for name in ("train", "val"):
        labels = sorted(r[LABEL_COLUMN] for r in built[name].take_all())
        assert labels == sorted(carved.splits[name].labels.tolist())


def test_an_id_in_two_splits_is_refused_from_the_ids_alone(dataset, tmp_path):
    folder = _copy_default(tmp_path / "d")
    val = dataset.val
    val.patch_ids[3] = dataset.train.patch_ids[0]
    write_split(folder / "val.parquet", val, dataset.metadata)
    with pytest.raises(PatchFormatError, match="appears in both train and val"):
        open_dataset_files(folder)


def test_streamed_statistics_equal_those_of_the_pixels_in_memory(ray_cluster, dataset):
    stats, labels = streamed_band_stats(open_dataset_files(DEFAULT_DATASET_DIR))
    expected = pixel_band_stats(dataset.train.pixels)
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
    stats = pixel_band_stats(dataset.train.pixels)
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


def test_a_bad_label_in_a_file_to_carve_is_found_before_ray_starts(tmp_path):
    folder = _one_file_folder(tmp_path)
    path = folder / "patches.parquet"
    table = pq.read_table(path)
    labels = table.column("label").to_pylist()
    labels[400] = "moon"
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels)), path)
    with pytest.raises(PatchRowError, match=r"patches\.parquet: row 400: unknown label 'moon'"):
        open_dataset_files(folder)


def _footer_readers() -> int:
    """Ray Data's footer-reading actors this cluster has started so far, in any state (read from Ray's GCS)."""
    from ray._private import state

    return sum(1 for actor in state.actors().values() if actor["ActorClassName"] == "FooterReader")


def test_each_read_starts_one_footer_reader(ray_cluster, dataset, monkeypatch):
    # Ray's default pool (32 actors a read, killed after the listing) showed a normal run as 93 failed tasks.
    monkeypatch.delenv(FOOTER_ACTORS_SETTING, raising=False)
    files = open_dataset_files(DEFAULT_DATASET_DIR)
    before = _footer_readers()
    stats, _ = streamed_band_stats(files)  # one read
    stream_ray_datasets(files, stats)  # two reads
    assert _footer_readers() - before == 3 * FOOTER_ACTORS
    assert FOOTER_ACTORS_SETTING not in os.environ  # set for the planning of each read only


def test_a_footer_reader_count_the_user_set_is_kept(monkeypatch):
    seen = []
    monkeypatch.setattr(
        "ray.data.read_parquet", lambda path, **options: seen.append(os.environ.get(FOOTER_ACTORS_SETTING))
    )
    read_parquet("x.parquet")
    monkeypatch.setenv(FOOTER_ACTORS_SETTING, "7")
    read_parquet("x.parquet")
    assert seen == [str(FOOTER_ACTORS), "7"]


def test_ray_reads_the_footer_reader_setting_where_a_read_is_planned(monkeypatch):
    # Pins Ray 2.60: its Parquet file indexer takes the pool size from the environment when it is built, which
    # ray.data.read_parquet does in the calling process.
    from ray.data._internal.datasource_v2.formats.parquet.footer_file_indexer import FooterFileIndexer

    monkeypatch.setenv(FOOTER_ACTORS_SETTING, "1")
    assert FooterFileIndexer(ignore_missing_paths=False)._num_actors == 1
