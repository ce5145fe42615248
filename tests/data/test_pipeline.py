"""The Ray Data pipeline's pieces: normalisation, augmentation groups, and the Ray feed the workers read."""

import warnings

import numpy as np
import pytest
import torch
from builders import pixel_band_stats, ray_inputs

from data import DEFAULT_DATASET_DIR
from data.folder import read_dataset
from data.pipeline import (
    AUGMENTATIONS,
    LABEL_COLUMN,
    PIXELS_COLUMN,
    D4Collate,
    augmentation_elements,
    d4_transform,
    normalise,
)

# Group sizes on square and on non-square patches: no quarter turns without a square, so "d4" is "flips" there.
GROUP_SIZES = {"d4": (8, 4), "flips": (4, 4), "none": (1, 1)}


@pytest.fixture(scope="module")
def dataset():
    return read_dataset(DEFAULT_DATASET_DIR)


def test_every_split_is_normalised_with_the_training_statistics(dataset):
    stats = pixel_band_stats(dataset.train.pixels)
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
    from ray.util.annotations import RayDeprecationWarning

    _, built = ray_inputs(DEFAULT_DATASET_DIR)
    assert built["train"].count() == len(dataset.train.labels) and built["val"].count() == len(dataset.val.labels)
    collate = D4Collate(seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RayDeprecationWarning)
        # As the training workers read it (workflows/training/shard_cache.py): numpy batches, augmented beside the
        # model.
        batches = [collate(b) for b in built["train"].iter_batches(batch_size=64, batch_format="numpy")]
    pixels = torch.cat([b[PIXELS_COLUMN] for b in batches]).numpy()
    labels = torch.cat([b[LABEL_COLUMN] for b in batches]).numpy()
    assert pixels.shape == dataset.train.pixels.shape
    np.testing.assert_array_equal(np.bincount(labels), np.bincount(dataset.train.labels))
    # Flips and rotations move pixels within a patch, so per-band statistics stay those of normalised data.
    np.testing.assert_allclose(pixels.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(pixels.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
