"""Property tests: damaged Parquet files and odd .npz archives give a dataset or a PatchFormatError, nothing else."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.format import PatchFormatError, PatchMetadata, PatchSplit
from data.importer import import_npz
from data.reading import read_split
from data.writing import to_table

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
META = PatchMetadata(bands=("a", "b", "c"), height=3, width=3, classes=("x", "y"))


def valid_parquet(compression: str) -> bytes:
    rng = np.random.default_rng(0)
    split = PatchSplit(
        patch_ids=np.asarray([f"p{i}" for i in range(12)], dtype=object),
        pixels=rng.normal(size=(12, 3, 3, 3)).astype(np.float32),
        labels=np.arange(12) % 2,
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "v.parquet"
        pq.write_table(to_table(split, META), path, compression=compression)
        return path.read_bytes()


VALID = {compression: valid_parquet(compression) for compression in ("zstd", "none", "snappy")}


def read_or_format_error(path: Path) -> None:
    try:
        split, metadata = read_split(path)
    except PatchFormatError as err:
        assert "\n" not in str(err) and str(path) in str(err)
        return
    assert split.pixels.shape[1:] == (metadata.num_bands, metadata.height, metadata.width)
    assert np.isfinite(split.pixels).all()
    assert len(set(split.patch_ids.tolist())) == len(split)


@SETTINGS
@given(compression=st.sampled_from(sorted(VALID)), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_parquet(tmp_path, compression, cut):
    raw = VALID[compression]
    path = tmp_path / "t.parquet"
    path.write_bytes(raw[: int(cut * len(raw))])
    read_or_format_error(path)


@SETTINGS
@given(
    compression=st.sampled_from(sorted(VALID)),
    damage=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=16)), max_size=4),
)
def test_overwritten_parquet(tmp_path, compression, damage):
    raw = bytearray(VALID[compression])
    for where, data in damage:
        start = int(where * len(raw))
        raw[start : start + len(data)] = data[: len(raw) - start]
    path = tmp_path / "o.parquet"
    path.write_bytes(bytes(raw))
    read_or_format_error(path)


DTYPES = st.sampled_from(["float32", "float64", "float16", "int8", "uint16", "int64", "bool", "complex64", "U3"])


@st.composite
def archives(draw) -> dict[str, np.ndarray]:
    if draw(st.integers(0, 3)):  # plausible: many of these import, some trip one check
        shape = (draw(st.integers(10, 40)), draw(st.integers(1, 4)), draw(st.integers(2, 5)), draw(st.integers(3, 5)))
        dtype = draw(st.sampled_from(["float32", "float64", "int16"]))
    else:
        ndim = draw(st.integers(1, 5))
        shape = tuple(draw(st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim)))
        dtype = draw(DTYPES)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = (rng.normal(size=shape) * 100).astype(dtype) if dtype != "U3" else np.full(shape, "a")
    if dtype.startswith("float") and x.size and draw(st.integers(0, 3)) == 0:
        x.reshape(-1)[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    n = draw(st.integers(0, 8)) if draw(st.integers(0, 4)) == 0 else (shape[0] if shape else 0)
    k = draw(st.integers(1, 4))
    y_kind = draw(st.sampled_from(["int", "int", "float", "str", "str", "2d"]))
    y = rng.integers(-1 if draw(st.integers(0, 4)) == 0 else 0, k, size=n)
    y = {"int": y, "float": y + draw(st.sampled_from([0.0, 0.5])), "str": y.astype(str), "2d": y.reshape(n, 1)}
    body = {"x": x, "y": y[y_kind]}
    if draw(st.booleans()):
        bands = shape[1] if len(shape) > 1 and draw(st.booleans()) else draw(st.integers(0, 4))
        body["band_names"] = np.asarray([f"b{i}" for i in range(bands)], dtype=str)
    if draw(st.booleans()):
        body["class_names"] = np.asarray([f"c{i}" for i in range(draw(st.integers(0, 5)))], dtype=str)
    if draw(st.booleans()):
        body["x_test"], body["y_test"] = x[:2], body["y"][:2]
    return body


@SETTINGS
@given(body=archives(), seed=st.integers(0, 3))
def test_random_npz_imports_or_fails_cleanly(tmp_path, body, seed):
    path = tmp_path / "r.npz"
    np.savez(path, **body)
    try:
        dataset = import_npz(path, seed=seed)
    except PatchFormatError as err:
        assert "\n" not in str(err) and str(path) in str(err)
        return
    meta = dataset.metadata
    assert set(dataset.splits) == {"train", "val", "test"}
    for split in dataset.splits.values():
        assert len(split) > 0
        assert split.pixels.shape[1:] == (meta.num_bands, meta.height, meta.width)
        assert np.isfinite(split.pixels).all()
        assert split.labels.min() >= 0 and split.labels.max() < meta.num_classes


@SETTINGS
@given(cut=st.floats(0, 1, exclude_max=True), flips=st.lists(st.integers(0, 10**6), max_size=3))
def test_damaged_npz_fails_cleanly(tmp_path, cut, flips):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.npz"
    np.savez_compressed(good, x=rng.normal(size=(40, 2, 3, 3)), y=np.arange(40) % 2)
    raw = bytearray(good.read_bytes())
    for flip in flips:
        raw[flip % len(raw)] ^= 0xA5
    path = tmp_path / "d.npz"
    path.write_bytes(bytes(raw[: max(1, int(cut * len(raw)))] if cut > 0 else raw))
    try:
        import_npz(path)
    except PatchFormatError as err:
        assert "\n" not in str(err)


@pytest.mark.parametrize("compression", sorted(VALID))
def test_undamaged_files_read(tmp_path, compression):
    path = tmp_path / "v.parquet"
    path.write_bytes(VALID[compression])
    split, _ = read_split(path)
    assert len(split) == 12
