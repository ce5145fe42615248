"""The Ray Data pipeline: validated reads, streaming statistics, normalisation, materialising, augmentation."""

import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import ray
import torch

from data import DEFAULT_DATASET_DIR, pipeline
from data.format import (
    DEFAULT_SPLIT_FRACTIONS,
    LABEL,
    PATCH_ID,
    PIXELS,
    PatchFormatError,
    PatchMetadata,
    PatchSplit,
    open_dataset,
    read_dataset,
    read_split,
    stratified_split,
    to_table,
)
from data.pipeline import (
    AUGMENTATIONS,
    LABEL_COLUMN,
    MATERIALISE_SHARE,
    MIN_STD,
    PIXELS_COLUMN,
    BandMoments,
    D4Collate,
    augmentation_elements,
    band_stats,
    build_ray_datasets,
    compute_band_stats,
    d4_transform,
    materialised_splits,
    normalise,
    raw_split,
)
from data.synthetic import generate

# Group sizes on square and on non-square patches: no quarter turns without a square, so "d4" is "flips" there.
GROUP_SIZES = {"d4": (8, 4), "flips": (4, 4), "none": (1, 1)}


@pytest.fixture(scope="module")
def dataset():
    return read_dataset(DEFAULT_DATASET_DIR)


def test_band_stats_are_per_band_with_a_floor_for_constant_bands():
    rng = np.random.default_rng(0)
    pixels = rng.normal(loc=[[[[100.0]], [[-3.0]], [[7.0]]]], scale=[[[[5.0]], [[0.5]], [[0.0]]]], size=(40, 3, 4, 4))
    stats = compute_band_stats(pixels)
    np.testing.assert_allclose(stats.mean, pixels.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(stats.std[:2], pixels.std(axis=(0, 2, 3))[:2])
    assert stats.std[2] == MIN_STD  # a constant band does not divide by zero


def test_every_split_is_normalised_with_the_training_statistics(dataset):
    stats = compute_band_stats(dataset.train.pixels)
    train = normalise(dataset.train.pixels, stats)
    np.testing.assert_allclose(train.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(train.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    val = normalise(dataset.val.pixels, stats)
    expected = (dataset.val.pixels - stats.mean.reshape(1, -1, 1, 1)) / stats.std.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(val, expected, rtol=1e-5, atol=1e-5)
    assert val.dtype == np.float32 and val.shape == dataset.val.pixels.shape


def test_the_eight_square_elements_are_distinct_rearrangements_of_the_patch():
    patch = np.arange(2 * 5 * 5, dtype=np.float32).reshape(1, 2, 5, 5)  # no symmetry: every element differs
    views = [d4_transform(patch, np.array([k]))[0] for k in range(8)]
    np.testing.assert_array_equal(views[0], patch[0])
    assert len({view.tobytes() for view in views}) == 8
    for view in views:
        for band in range(2):  # each band's pixels are moved, never mixed with another band's
            np.testing.assert_array_equal(np.sort(view[band], axis=None), np.sort(patch[0, band], axis=None))


def test_non_square_patches_keep_their_shape_with_four_distinct_elements():
    patch = np.arange(3 * 4, dtype=np.float32).reshape(1, 1, 3, 4)
    views = [d4_transform(patch, np.array([k]))[0] for k in augmentation_elements("d4", square=False)]
    assert all(view.shape == (1, 3, 4) for view in views)
    assert len({view.tobytes() for view in views}) == 4


def test_quarter_turns_of_non_square_patches_are_refused_in_one_line():
    patch = np.zeros((2, 1, 3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"\[1\] do not apply to non-square \(3x4\) patches; use \[0, 2, 4, 6\]"):
        d4_transform(patch, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\[8\] do not apply to square"):
        d4_transform(np.zeros((1, 1, 3, 3)), np.array([8]))


@pytest.mark.parametrize("name", AUGMENTATIONS)
@pytest.mark.parametrize("height, width", [(5, 5), (3, 4)])
def test_groups_have_their_size_and_move_pixels_within_each_band(name, height, width):
    square = height == width
    elements = augmentation_elements(name, square=square)
    assert len(elements) == GROUP_SIZES[name][0 if square else 1] and elements[0] == 0  # the identity first
    patch = np.arange(2 * height * width, dtype=np.float32).reshape(1, 2, height, width)  # no symmetry
    views = [d4_transform(patch, np.array([k]))[0] for k in elements]
    assert len({view.tobytes() for view in views}) == len(elements)
    for view in views:
        assert view.shape == patch.shape[1:]
        for band in range(2):  # each band's pixels are moved, never mixed with another band's
            np.testing.assert_array_equal(np.sort(view[band], axis=None), np.sort(patch[0, band], axis=None))


@pytest.mark.parametrize("square", [True, False])
def test_flips_keep_the_axes(square):
    patch = np.arange(2 * 4 * (4 if square else 5), dtype=np.float32).reshape(1, 2, 4, -1)
    image = patch[0]
    axis_keeping = [image, image[:, ::-1], image[:, :, ::-1], image[:, ::-1, ::-1]]  # never a transpose
    views = [d4_transform(patch, np.array([k]))[0] for k in augmentation_elements("flips", square=square)]
    for view in views:
        assert any(np.array_equal(view, kept) for kept in axis_keeping)
    assert {view.tobytes() for view in views} == {np.ascontiguousarray(kept).tobytes() for kept in axis_keeping}


def test_unknown_group_is_refused_in_one_line():
    for make in (lambda: augmentation_elements("rot90"), lambda: D4Collate(seed=0, augment="rot90")):
        with pytest.raises(ValueError, match=r"^augmentation must be one of d4, flips, none, got 'rot90'$"):
            make()


def test_each_patch_gets_its_own_element():
    patches = np.repeat(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4), 3, axis=0)
    moved = d4_transform(patches, np.array([0, 1, 4]))
    np.testing.assert_array_equal(moved[0], patches[0])
    np.testing.assert_array_equal(moved[1, 0], np.rot90(patches[1, 0]))
    np.testing.assert_array_equal(moved[2, 0], patches[2, 0, :, ::-1])


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_collate_is_seeded_and_keeps_labels(name):
    rng = np.random.default_rng(1)
    batch = {PIXELS_COLUMN: rng.normal(size=(32, 3, 6, 6)), LABEL_COLUMN: rng.integers(0, 7, size=32)}
    first, again = D4Collate(seed=5, augment=name)(batch), D4Collate(seed=5, augment=name)(batch)
    other = D4Collate(seed=6, augment=name)(batch)
    assert first[PIXELS_COLUMN].dtype == torch.float32 and first[LABEL_COLUMN].dtype == torch.int64
    assert torch.equal(first[PIXELS_COLUMN], again[PIXELS_COLUMN])
    assert torch.equal(first[PIXELS_COLUMN], other[PIXELS_COLUMN]) == (name == "none")
    assert torch.equal(first[LABEL_COLUMN], torch.from_numpy(batch[LABEL_COLUMN]))


@pytest.mark.parametrize("name", AUGMENTATIONS)
@pytest.mark.parametrize("height, width", [(4, 4), (3, 4)])
def test_collate_draws_every_element_of_its_group_and_nothing_else(name, height, width):
    patch = np.arange(height * width, dtype=np.float32).reshape(1, 1, height, width)  # no symmetry
    elements = augmentation_elements(name, square=height == width)
    views = {d4_transform(patch, np.array([k]))[0].tobytes(): k for k in elements}
    batch = {PIXELS_COLUMN: np.repeat(patch, 200, axis=0), LABEL_COLUMN: np.zeros(200, dtype=np.int64)}
    moved = D4Collate(seed=7, augment=name)(batch)[PIXELS_COLUMN].numpy()
    drawn = {views[view.tobytes()] for view in moved}  # a KeyError would be a view outside the group
    assert drawn == set(elements.tolist())


def test_ray_feed_is_normalised_augmented_and_free_of_deprecation_warnings(ray_cluster, dataset):
    from ray.data.collate_fn import NumpyBatchCollateFn
    from ray.util.annotations import RayDeprecationWarning

    from data.collate import RayD4Collate

    stats = band_stats(open_dataset(DEFAULT_DATASET_DIR))
    built = build_ray_datasets(open_dataset(DEFAULT_DATASET_DIR), stats)
    assert built["train"].count() == len(dataset.train.labels) and built["val"].count() == len(dataset.val.labels)
    collate = RayD4Collate(seed=3)
    assert isinstance(collate, NumpyBatchCollateFn)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RayDeprecationWarning)  # as a plain callable as collate_fn does
        batches = list(built["train"].iter_torch_batches(batch_size=64, collate_fn=collate))
    pixels = torch.cat([b[PIXELS_COLUMN] for b in batches]).numpy()
    labels = torch.cat([b[LABEL_COLUMN] for b in batches]).numpy()
    assert pixels.shape == dataset.train.pixels.shape
    np.testing.assert_array_equal(np.bincount(labels), np.bincount(dataset.train.labels))
    # Flips and rotations move pixels within a patch, so per-band statistics stay those of normalised data.
    np.testing.assert_allclose(pixels.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(pixels.std(axis=(0, 2, 3)), 1.0, atol=1e-4)


# --- Ray Data: reading, validating, statistics, normalisation ------------------------------------------------------

COUNTS = {"train": 140, "val": 35, "test": 42}
SEED = 7
ROW_GROUP = 64  # small row groups, so a file is read as several blocks


def write_patches(path: Path, split: PatchSplit, metadata: PatchMetadata, row_group: int = ROW_GROUP) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(to_table(split, metadata), path, row_group_size=row_group)
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A small generated dataset in memory, and on disk with train as a folder of three part files."""
    dataset = generate(COUNTS, seed=SEED)
    folder = tmp_path_factory.mktemp("pipeline") / "parts"
    for name, split in dataset.splits.items():
        if name == "train":
            for part, rows in enumerate(np.array_split(np.arange(len(split)), 3)):
                write_patches(folder / "train" / f"part-{part}.parquet", split.take(rows), dataset.metadata)
        else:
            write_patches(folder / f"{name}.parquet", split, dataset.metadata)
    return dataset, folder


def test_streaming_statistics_equal_numpy_over_every_file_of_the_split(ray_cluster, generated):
    dataset, folder = generated
    source = open_dataset(folder)
    assert [len(split.files) for split in source.splits.values()] == [3, 1, 1]
    stats = band_stats(source)
    pixels = dataset.train.pixels.astype(np.float64)
    np.testing.assert_allclose(stats.mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(stats.std, pixels.std(axis=(0, 2, 3)), rtol=1e-10)


def test_moments_merge_exactly_and_floor_constant_bands():
    rng = np.random.default_rng(3)
    pixels = rng.normal(loc=5000.0, scale=[[[[40.0]], [[1.0]], [[0.0]]]], size=(50, 3, 4, 4))
    merged = BandMoments.empty(3)
    for part in np.array_split(pixels, [1, 7, 30]):  # uneven blocks, one of a single patch
        merged = merged.merge(BandMoments.of(part))
    stats = merged.band_stats()
    np.testing.assert_allclose(stats.mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-14)
    np.testing.assert_allclose(stats.std[:2], pixels.std(axis=(0, 2, 3))[:2], rtol=1e-10)
    assert stats.std[2] == MIN_STD


def deep_bad_copy(folder: Path, tmp_path: Path, split: str, row: int, column: str, value) -> Path:
    """A copy of a single-file dataset with one value changed in one row of one split's file."""
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    path = bad / f"{split}.parquet"
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    if column == PIXELS:
        values[row][5] = value
    else:
        values[row] = value
    table = table.set_column(
        table.column_names.index(column), column, pa.array(values, type=table.schema.field(column).type)
    )
    pq.write_table(table, path, row_group_size=ROW_GROUP)
    return bad


@pytest.fixture(scope="module")
def single_files(tmp_path_factory):
    dataset = generate({"train": 700, "val": 35, "test": 140}, seed=SEED)
    folder = tmp_path_factory.mktemp("single") / "ds"
    for name, split in dataset.splits.items():
        write_patches(folder / f"{name}.parquet", split, dataset.metadata)
    return folder


@pytest.mark.parametrize(
    ("split", "row", "column", "value", "problem"),
    [
        ("train", 613, PIXELS, float("nan"), "'pixels' holds a non-finite value (NaN or inf)"),
        ("test", 131, LABEL, "zebra", "unknown label 'zebra'"),
    ],
)
def test_a_bad_row_deep_in_a_multi_block_file_is_found_with_the_format_error(
    ray_cluster, single_files, tmp_path, monkeypatch, split, row, column, value, problem
):
    bad = deep_bad_copy(single_files, tmp_path, split, row, column, value)
    path = bad / f"{split}.parquet"
    monkeypatch.setattr(ray.data.DataContext.get_current(), "use_datasource_v2", pipeline.USE_DATASOURCE_V2)
    assert ray.data.read_parquet(str(path)).materialize().num_blocks() > 1  # the bad row is not in the first block
    with pytest.raises(PatchFormatError) as caught:
        read_split(path)
    expected = str(caught.value)
    assert expected.startswith(f"{path}: row {row}: {problem}")
    source = open_dataset(bad)  # footers and ids only: it cannot see the bad pixel or label
    with pytest.raises(PatchFormatError) as caught:
        band_stats(source)
    assert type(caught.value) is PatchFormatError and str(caught.value) == expected


def test_carved_splits_are_the_in_memory_carve_and_ray_reads_exactly_them(ray_cluster, generated, tmp_path):
    dataset, _ = generated
    whole = dataset.train
    write_patches(tmp_path / "one" / "patches.parquet", whole, dataset.metadata)
    source = open_dataset(tmp_path / "one", seed=3)
    parts = stratified_split(whole.labels, DEFAULT_SPLIT_FRACTIONS, seed=3)  # today's carve, pinned
    expected = {
        name: whole.patch_ids[rows].tolist() for name, rows in zip(("train", "val", "test"), parts, strict=True)
    }
    assert {name: source.rows(name) for name in expected} == {name: len(ids) for name, ids in expected.items()}
    for name, ids in expected.items():
        assert sorted(raw_split(source, name).to_pandas()[PATCH_ID]) == sorted(ids)  # Ray Data keeps no order
    stats = band_stats(source)
    np.testing.assert_allclose(stats.mean, whole.pixels[parts[0]].astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-12)
    built = build_ray_datasets(source, stats, splits=("val",))
    assert built["val"].count() == len(expected["val"])


def test_raw_split_rows_are_the_format_rows(ray_cluster, generated):
    dataset, folder = generated
    rows = raw_split(open_dataset(folder), "test")
    table = rows.take_batch(batch_size=len(dataset.test) + 1, batch_format="pyarrow")
    assert table.column_names == [PATCH_ID, LABEL, PIXELS]
    assert table.schema.field(PIXELS).type == pa.list_(pa.float32(), dataset.metadata.values_per_patch)
    table = table.take(pc.sort_indices(table, [(PATCH_ID, "ascending")]))  # Ray Data keeps no order
    assert table.column(PATCH_ID).to_pylist() == dataset.test.patch_ids.tolist()  # generated ids sort in order
    classes = np.asarray(dataset.metadata.classes)
    assert table.column(LABEL).to_pylist() == classes[dataset.test.labels].tolist()
    pixels = np.asarray(table.column(PIXELS).combine_chunks().flatten()).reshape(dataset.test.pixels.shape)
    np.testing.assert_array_equal(pixels, dataset.test.pixels)


def test_materialised_splits_fit_in_their_share_of_the_object_store():
    sizes = {"train": 600, "val": 100}
    assert materialised_splits(sizes, store_bytes=2000, share=0.4) == ("train", "val")  # 700 <= 800
    assert materialised_splits(sizes, store_bytes=1600, share=0.4) == ("train",)  # then 40 left: val streams
    assert materialised_splits(sizes, store_bytes=1000, share=0.4) == ("val",)  # train does not fit in 400
    assert materialised_splits(sizes, store_bytes=200, share=0.4) == ()
    assert 0 < MATERIALISE_SHARE < 0.5  # Ray Data's own executions may fill half of the store


def shard_counts(ds, workers: int) -> list[int]:
    """Rows each of ``workers`` consumers of ``streaming_split(equal=True)`` gets, as Ray Train's DataConfig splits."""
    shards = ds.streaming_split(workers, equal=True)
    counts = [0] * workers

    def consume(index: int) -> None:
        for batch in shards[index].iter_batches(batch_size=16):
            counts[index] += len(batch[LABEL_COLUMN])

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts


@pytest.mark.parametrize("materialise", [True, False], ids=["materialised", "streamed"])
def test_feed_is_normalised_and_shards_are_equal(ray_cluster, generated, monkeypatch, materialise):
    from ray.data.dataset import MaterializedDataset

    dataset, folder = generated
    if not materialise:
        monkeypatch.setattr(pipeline, "MATERIALISE_SHARE", 0.0)
    source = open_dataset(folder)
    stats = band_stats(source)
    built = build_ray_datasets(source, stats)
    assert isinstance(built["val"], MaterializedDataset) == materialise
    val = built["val"].to_pandas()
    expected = normalise(dataset.val.pixels, stats)
    np.testing.assert_allclose(np.stack(val[PIXELS_COLUMN].to_numpy()), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(val[LABEL_COLUMN].to_numpy(), dataset.val.labels)
    counts = shard_counts(built["train"], 3)
    assert len(set(counts)) == 1 and sum(counts) >= len(dataset.train) - 2  # equal shards; at most 2 rows dropped
