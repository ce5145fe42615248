"""Tests of the .npz importer: happy paths of many shapes and label kinds, and a one-line error per bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.folder import read_dataset
from data.format import PatchFormatError
from data.importer import NpzImportError, import_npz, import_npz_to_folder, load_npz


def arrays(n: int = 70, c: int = 14, h: int = 8, w: int = 8, k: int = 7, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, c, h, w)), "y": np.arange(n) % k}


def save(tmp_path: Path, name: str = "in.npz", **data: np.ndarray) -> Path:
    path = tmp_path / name
    np.savez(path, **data)
    return path


def expect_error(path: Path, *fragments: str, **kwargs) -> str:
    with pytest.raises(NpzImportError) as excinfo:
        import_npz(path, **kwargs)
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_default_shape_round_trips_through_folder(tmp_path):
    data = arrays()
    names = [f"B{i}" for i in range(14)]
    path = save(tmp_path, **data, band_names=np.asarray(names))
    written = import_npz_to_folder(path, tmp_path / "ds", seed=1)
    back = read_dataset(tmp_path / "ds")
    meta = back.metadata
    assert (meta.bands, meta.height, meta.width) == (tuple(names), 8, 8)
    assert meta.classes == tuple(str(i) for i in range(7))
    assert {name: len(s) for name, s in back.splits.items()} == {"train": 49, "val": 7, "test": 14}
    assert back.train.patch_ids[0] == "train-000000" and back.test.patch_ids[-1] == "test-000013"
    for name, split in back.splits.items():
        assert split.pixels.shape[1:] == (14, 8, 8)
        assert np.bincount(split.labels, minlength=7).min() > 0  # stratified: every class everywhere
        np.testing.assert_array_equal(split.pixels, written.splits[name].pixels)
    # Every imported patch is one of the originals, with its own label.
    originals = {data["x"][i].astype(np.float32).tobytes(): data["y"][i] for i in range(70)}
    for split in back.splits.values():
        for pixels, label in zip(split.pixels, split.labels, strict=True):
            assert originals[pixels.tobytes()] == label


def test_small_patches_and_many_classes(tmp_path):
    path = save(tmp_path, **arrays(n=60, c=4, h=3, w=3, k=6))
    dataset = import_npz(path)
    assert dataset.metadata.num_bands == 4 and dataset.metadata.num_classes == 6
    assert (dataset.metadata.height, dataset.metadata.width) == (3, 3)
    assert dataset.metadata.bands == ("band_0", "band_1", "band_2", "band_3")
    assert sum(len(s) for s in dataset.splits.values()) == 60


def test_seed_decides_the_split(tmp_path):
    path = save(tmp_path, **arrays(n=60, c=2, h=3, w=3, k=3))
    first, again, other = import_npz(path, seed=5), import_npz(path, seed=5), import_npz(path, seed=6)
    np.testing.assert_array_equal(first.val.pixels, again.val.pixels)
    assert not np.array_equal(first.val.pixels, other.val.pixels)


def test_fractions_are_honoured(tmp_path):
    path = save(tmp_path, **arrays(n=100, c=2, h=3, w=3, k=2))
    dataset = import_npz(path, val_fraction=0.2, test_fraction=0.3)
    assert [len(dataset.splits[n]) for n in ("train", "val", "test")] == [50, 20, 30]


def test_string_labels_get_sorted_class_names(tmp_path):
    data = arrays(n=40, c=3, h=4, w=5, k=4)
    y = np.asarray(["water", "forest", "urban", "crop"])[data["y"]]
    dataset = import_npz(save(tmp_path, x=data["x"], y=y))
    assert dataset.metadata.classes == ("crop", "forest", "urban", "water")
    assert dataset.metadata.width == 5


def test_string_labels_follow_class_names_order(tmp_path):
    data = arrays(n=40, c=3, h=4, w=4, k=2)
    y = np.asarray(["sea", "land"])[data["y"]]
    dataset = import_npz(save(tmp_path, x=data["x"], y=y, class_names=np.asarray(["sea", "land", "ice"])))
    assert dataset.metadata.classes == ("sea", "land", "ice")
    assert set(np.concatenate([s.labels for s in dataset.splits.values()])) == {0, 1}


def test_integer_labels_index_class_names(tmp_path):
    data = arrays(n=40, c=2, h=3, w=3, k=2)
    dataset = import_npz(save(tmp_path, **data, class_names=np.asarray(["no", "yes"])))
    assert dataset.metadata.classes == ("no", "yes")


def test_given_test_split_is_kept_and_val_is_carved(tmp_path):
    data, test = arrays(n=40, c=4, h=3, w=3, k=2), arrays(n=10, c=4, h=3, w=3, k=2, seed=9)
    dataset = import_npz(save(tmp_path, **data, x_test=test["x"], y_test=test["y"]))
    np.testing.assert_array_equal(dataset.test.pixels, test["x"].astype(np.float32))
    np.testing.assert_array_equal(dataset.test.labels, test["y"])
    assert len(dataset.train) + len(dataset.val) == 40 and len(dataset.val) == 6


def test_given_val_and_test_carve_nothing(tmp_path):
    data = arrays(n=20, c=4, h=3, w=3, k=2)
    val, test = arrays(n=6, c=4, h=3, w=3, k=2, seed=8), arrays(n=8, c=4, h=3, w=3, k=2, seed=9)
    path = save(tmp_path, **data, x_val=val["x"], y_val=val["y"], x_test=test["x"], y_test=test["y"])
    dataset = import_npz(path)
    assert [len(dataset.splits[n]) for n in ("train", "val", "test")] == [20, 6, 8]
    np.testing.assert_array_equal(dataset.train.pixels, data["x"].astype(np.float32))
    assert dataset.val.patch_ids.tolist() == [f"val-{i:06d}" for i in range(6)]


def test_float_labels_with_whole_values_are_accepted(tmp_path):
    data = arrays(n=30, c=2, h=3, w=3, k=3)
    dataset = import_npz(save(tmp_path, x=data["x"].astype(np.float32), y=data["y"].astype(np.float64)))
    assert dataset.metadata.classes == ("0", "1", "2")


# Bad input: each gives one line naming the file and the key.


def test_missing_file(tmp_path):
    with pytest.raises(NpzImportError, match="no such file"):
        import_npz(tmp_path / "absent.npz")


@pytest.mark.parametrize("key", ["x", "y"])
def test_missing_key(tmp_path, key):
    data = arrays(n=20, c=2, h=3, w=3, k=2)
    del data[key]
    expect_error(save(tmp_path, **data), f"key '{key}' is missing")


def test_mismatched_lengths(tmp_path):
    data = arrays(n=20, c=2, h=3, w=3, k=2)
    expect_error(save(tmp_path, x=data["x"], y=data["y"][:-1]), "key 'y'", "19 labels for 20 patches")


@pytest.mark.parametrize("shape", [(20, 2, 3), (20, 2, 3, 3, 1), (20,)])
def test_wrong_dimensionality(tmp_path, shape):
    expect_error(save(tmp_path, x=np.zeros(shape), y=np.arange(20) % 2), "key 'x'", "4-D")


@pytest.mark.parametrize(("h", "w"), [(2, 3), (3, 1)])
def test_patch_too_small(tmp_path, h, w):
    expect_error(save(tmp_path, **arrays(n=20, c=2, h=h, w=w, k=2)), "key 'x'", ">= 3")


def test_fewer_than_two_classes(tmp_path):
    data = arrays(n=20, c=2, h=3, w=3, k=1)
    expect_error(save(tmp_path, **data), "key 'y'", "at least 2")


def test_single_class_name(tmp_path):
    data = arrays(n=20, c=2, h=3, w=3, k=1)
    expect_error(save(tmp_path, **data, class_names=np.asarray(["only"])), "key 'class_names'", "at least 2")


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e300])
def test_non_finite_values(tmp_path, bad):
    data = arrays(n=20, c=2, h=3, w=3, k=2)
    data["x"][7, 1, 2, 0] = bad
    expect_error(save(tmp_path, **data), "key 'x'", "row 7", "non-finite")


def test_band_names_length(tmp_path):
    data = arrays(n=20, c=3, h=3, w=3, k=2)
    expect_error(save(tmp_path, **data, band_names=np.asarray(["a", "b"])), "key 'band_names'", "2 names for 3")


def test_duplicate_band_names(tmp_path):
    data = arrays(n=20, c=2, h=3, w=3, k=2)
    expect_error(save(tmp_path, **data, band_names=np.asarray(["a", "a"])), "key 'band_names'", "repeats")


@pytest.mark.parametrize("x", [np.full((20, 2, 3, 3), "a"), np.zeros((20, 2, 3, 3), dtype=bool)])
def test_non_numeric_x(tmp_path, x):
    expect_error(save(tmp_path, x=x, y=np.arange(20) % 2), "key 'x'", "real numbers")


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    data = arrays(n=20, c=2, h=3, w=3, k=2)
    y = np.empty(20, dtype=object)
    y[:] = [str(v) for v in data["y"]]
    expect_error(save(tmp_path, x=data["x"], y=y), "key 'y'", "without pickle")


def test_too_few_members_to_stratify(tmp_path):
    data = arrays(n=40, c=2, h=3, w=3, k=2)
    data["y"][:3] = 2  # class 2 has three patches: not enough for train, val and test
    expect_error(save(tmp_path, **data), "key 'y'", "class '2'", "too few to stratify", "at least 6")


def test_x_test_shape_disagreeing_with_x(tmp_path):
    data, test = arrays(n=20, c=2, h=3, w=3, k=2), arrays(n=6, c=3, h=3, w=3, k=2)
    path = save(tmp_path, **data, x_test=test["x"], y_test=test["y"])
    expect_error(path, "key 'x_test'", "(3, 3, 3)", "(2, 3, 3)")


def test_x_test_without_y_test(tmp_path):
    data = arrays(n=20, c=2, h=3, w=3, k=2)
    expect_error(save(tmp_path, **data, x_test=data["x"]), "'x_test' is given without 'y_test'")


def test_y_test_length(tmp_path):
    data, test = arrays(n=20, c=2, h=3, w=3, k=2), arrays(n=6, c=2, h=3, w=3, k=2)
    expect_error(save(tmp_path, **data, x_test=test["x"], y_test=test["y"][:4]), "key 'y_test'", "4 labels")


def test_unknown_string_label(tmp_path):
    data = arrays(n=20, c=2, h=3, w=3, k=2)
    y = np.asarray(["sea", "land"])[data["y"]]
    y[5] = "lava"
    path = save(tmp_path, x=data["x"], y=y, class_names=np.asarray(["sea", "land"]))
    expect_error(path, "key 'y'", "row 5", "'lava'")


def test_integer_label_outside_class_names(tmp_path):
    data = arrays(n=20, c=2, h=3, w=3, k=3)
    expect_error(save(tmp_path, **data, class_names=np.asarray(["a", "b"])), "key 'y'", "row 2", "outside 0..1")


def test_fractional_label(tmp_path):
    data = arrays(n=20, c=2, h=3, w=3, k=2)
    expect_error(save(tmp_path, x=data["x"], y=data["y"] + 0.5), "key 'y'", "row 0")


def test_two_dimensional_labels(tmp_path):
    data = arrays(n=20, c=2, h=3, w=3, k=2)
    expect_error(save(tmp_path, x=data["x"], y=np.eye(2)[data["y"]]), "key 'y'", "1-D")


def test_unknown_key(tmp_path):
    data = arrays(n=20, c=2, h=3, w=3, k=2)
    expect_error(save(tmp_path, **data, x_tst=data["x"]), "unknown key", "x_tst")


@pytest.mark.parametrize(("val", "test"), [(0.0, 0.15), (0.6, 0.5), (1.5, 0.1)])
def test_bad_fractions(tmp_path, val, test):
    path = save(tmp_path, **arrays(n=40, c=2, h=3, w=3, k=2))
    expect_error(path, "fraction", val_fraction=val, test_fraction=test)


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04garbage"])
def test_not_an_npz(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(NpzImportError) as excinfo:
        load_npz(path)
    assert str(path) in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_a_single_npy_array_is_refused(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 2)))
    with pytest.raises(NpzImportError, match="not an .npz archive"):
        load_npz(path)


def test_errors_are_patch_format_errors_and_leave_no_folder(tmp_path):
    data = arrays(n=20, c=2, h=3, w=3, k=2)
    data["x"][0, 0, 0, 0] = np.nan
    with pytest.raises(PatchFormatError):
        import_npz_to_folder(save(tmp_path, **data), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz"]


def test_existing_folder_needs_overwrite(tmp_path):
    path = save(tmp_path, **arrays(n=40, c=2, h=3, w=3, k=2))
    import_npz_to_folder(path, tmp_path / "out")
    with pytest.raises(FileExistsError):
        import_npz_to_folder(path, tmp_path / "out")
    import_npz_to_folder(path, tmp_path / "out", overwrite=True, seed=9)
    assert len(read_dataset(tmp_path / "out").train) == 28
