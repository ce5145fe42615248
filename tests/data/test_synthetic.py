"""Tests of the synthetic generator, of the committed default dataset it defines, and of the small-patch proxy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import data.synthetic as synthetic
from data import DEFAULT_DATASET_DIR
from data.folder import read_dataset
from data.landcover import (
    CLASSES,
    DEFAULT_COUNTS,
    OPTICAL_BANDS,
    OPTICAL_RANGE,
    RADAR_RANGE,
    SMALL_PATCH_CLASSES,
    SMALL_PATCH_COUNTS,
    default_metadata,
    small_patch_metadata,
)
from data.synthetic import DEFAULT_PRESET, PRESETS, SMALL_PATCH_PRESET, generate, generate_small_patch

SMALL = {"train": 70, "val": 21, "test": 35}


@pytest.fixture(scope="module")
def default_dataset():
    return generate()


def test_committed_default_dataset_is_the_generator_output(default_dataset):
    committed = read_dataset(DEFAULT_DATASET_DIR)
    assert committed.metadata == default_dataset.metadata == default_metadata()
    assert list(committed.splits) == list(default_dataset.splits)
    for name, split in default_dataset.splits.items():
        stored = committed.splits[name]
        np.testing.assert_array_equal(stored.patch_ids, split.patch_ids)
        np.testing.assert_array_equal(stored.labels, split.labels)
        np.testing.assert_array_equal(stored.pixels, split.pixels)


def test_committed_train_split_has_the_original_size_for_plain_pandas():
    frame = pd.read_parquet(DEFAULT_DATASET_DIR / "train.parquet")
    assert len(frame) == DEFAULT_COUNTS["train"] == 588  # the original problem's training set
    assert sorted(frame["label"].unique()) == sorted(CLASSES)


def test_same_seed_same_data_other_seed_other_data():
    first, again, other = generate(SMALL, seed=1), generate(SMALL, seed=1), generate(SMALL, seed=2)
    for name in SMALL:
        np.testing.assert_array_equal(first.splits[name].pixels, again.splits[name].pixels)
        np.testing.assert_array_equal(first.splits[name].labels, again.splits[name].labels)
        assert not np.array_equal(first.splits[name].pixels, other.splits[name].pixels)


def test_one_split_count_does_not_change_another_split():
    base = generate({"train": 14, "test": 21}, seed=3)
    bigger = generate({"train": 140, "test": 21}, seed=3)
    np.testing.assert_array_equal(base.test.pixels, bigger.test.pixels)


@pytest.mark.parametrize("n", [7, 10, 70, 71])
def test_classes_are_balanced(n):
    labels = generate({"train": n}).train.labels
    counts = np.bincount(labels, minlength=len(CLASSES))
    assert counts.max() - counts.min() <= 1 and counts.sum() == n
    assert not np.array_equal(labels, np.sort(labels))  # shuffled, not in class blocks


def test_default_splits_are_balanced(default_dataset):
    for name, split in default_dataset.splits.items():
        assert len(split) == DEFAULT_COUNTS[name]
        counts = np.bincount(split.labels, minlength=len(CLASSES))
        assert (counts == DEFAULT_COUNTS[name] // len(CLASSES)).all()


def test_ids_are_unique_across_splits(default_dataset):
    ids = np.concatenate([s.patch_ids for s in default_dataset.splits.values()])
    assert len(set(ids)) == len(ids)


def test_values_are_finite_and_on_physical_scales(default_dataset):
    n_opt = len(OPTICAL_BANDS)
    assert default_metadata().units == ("DN",) * n_opt + ("dB",) * (default_metadata().num_bands - n_opt)
    for split in default_dataset.splits.values():
        pixels = split.pixels
        assert pixels.dtype == np.float32 and np.isfinite(pixels).all()
        optical, radar = pixels[:, :n_opt], pixels[:, n_opt:]
        assert OPTICAL_RANGE[0] <= optical.min() and optical.max() <= OPTICAL_RANGE[1]
        assert RADAR_RANGE[0] <= radar.min() and radar.max() <= RADAR_RANGE[1]
        np.testing.assert_array_equal(optical, np.round(optical))  # whole digital numbers
        # Reflectance in the thousands beside backscatter in tens of negative dB: scales differ wildly.
        assert np.median(optical) > 300 and np.median(radar) < -5


def high_frequency_energy(pixels: np.ndarray, band: int) -> np.ndarray:
    """Root mean square of a discrete Laplacian of one band, per patch."""
    b = pixels[:, band]
    lap = 4 * b[:, 1:-1, 1:-1] - b[:, :-2, 1:-1] - b[:, 2:, 1:-1] - b[:, 1:-1, :-2] - b[:, 1:-1, 2:]
    return np.sqrt((lap**2).mean(axis=(1, 2)))


def test_texture_separates_classes_with_close_mean_spectra(default_dataset):
    split = default_dataset.train
    red = OPTICAL_BANDS.index("B04")
    energy = high_frequency_energy(split.pixels, red)
    median = {name: np.median(energy[split.labels == i]) for i, name in enumerate(CLASSES)}
    assert median["cropland"] > 2 * median["grassland"]  # rows against a smooth meadow
    assert median["urban"] > 2 * median["bare_soil"]  # blocks against smooth soil
    assert median["wetland"] > median["water"]  # pools and marsh against open water


def test_other_sizes_and_chunking(monkeypatch):
    monkeypatch.setattr(synthetic, "CHUNK", 16)
    for size in (3, 5, 16):
        dataset = generate({"train": 40}, seed=4, size=size)
        assert dataset.metadata.height == dataset.metadata.width == size
        assert dataset.train.pixels.shape == (40, dataset.metadata.num_bands, size, size)
        assert np.isfinite(dataset.train.pixels).all()


def test_rejects_empty_split_and_tiny_patches():
    with pytest.raises(ValueError, match="count must be positive"):
        generate({"train": 0})
    with pytest.raises(ValueError, match="at least 2"):
        generate({"train": 7}, size=1)


@pytest.fixture(scope="module")
def proxy():
    return generate_small_patch()


def test_presets_name_the_default_dataset_and_the_proxy(default_dataset, proxy):
    default = PRESETS[DEFAULT_PRESET]
    made = default.generate(default.counts, default.seed)
    np.testing.assert_array_equal(made.test.pixels, default_dataset.test.pixels)
    small = PRESETS[SMALL_PATCH_PRESET]
    assert small.counts == SMALL_PATCH_COUNTS and small.generate(small.counts, small.seed).metadata == proxy.metadata


def test_proxy_has_the_shape_of_small_real_data(proxy):
    meta = proxy.metadata
    assert meta == small_patch_metadata()
    assert (meta.num_bands, meta.height, meta.width, meta.num_classes) == (5, 5, 5, 6)
    assert {name: len(split) for name, split in proxy.splits.items()} == SMALL_PATCH_COUNTS
    assert len(proxy.train) == 588 and len(proxy.val) >= 300 and len(proxy.test) >= 2000
    for name, split in proxy.splits.items():
        counts = np.bincount(split.labels, minlength=len(SMALL_PATCH_CLASSES))
        assert (counts == SMALL_PATCH_COUNTS[name] // len(SMALL_PATCH_CLASSES)).all()
        assert split.pixels.shape == (len(split), 5, 5, 5) and split.pixels.dtype == np.float32
        assert OPTICAL_RANGE[0] <= split.pixels.min() and split.pixels.max() <= OPTICAL_RANGE[1]
        np.testing.assert_array_equal(split.pixels, np.round(split.pixels))  # whole digital numbers
    ids = np.concatenate([s.patch_ids for s in proxy.splits.values()])
    assert len(set(ids)) == len(ids)


def test_proxy_is_deterministic_from_its_seed():
    first, again, other = (generate_small_patch(SMALL, seed=s) for s in (1, 1, 2))
    for name in SMALL:
        np.testing.assert_array_equal(first.splits[name].pixels, again.splits[name].pixels)
        np.testing.assert_array_equal(first.splits[name].labels, again.splits[name].labels)
        assert not np.array_equal(first.splits[name].pixels, other.splits[name].pixels)


def test_proxy_has_no_spatial_texture_but_mixed_pixels_in_some_classes(proxy):
    pixels, labels = proxy.train.pixels.astype(np.float64), proxy.train.labels
    deviation = pixels - pixels.mean(axis=(2, 3), keepdims=True)
    neighbours = np.corrcoef(deviation[..., :-1].ravel(), deviation[..., 1:].ravel())[0, 1]
    assert abs(neighbours) < 0.05  # a pixel says nothing about the one beside it beyond the patch's spectrum
    spread = {name: np.median(pixels[labels == i].std(axis=(2, 3))) for i, name in enumerate(SMALL_PATCH_CLASSES)}
    assert spread["cropland"] > 2 * spread["grassland"] and spread["urban"] > 2 * spread["bare_soil"]
