"""Tests of the make_dataset.py entry script, run as a user runs it: a subprocess from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from data import DEFAULT_DATASET_DIR
from data.folder import read_dataset
from data.synthetic import SMALL_PATCH_PRESET, generate, generate_small_patch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "workflows" / "make_dataset.py"


def run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_help_names_the_options():
    result = run("--help")
    assert result.returncode == 0
    for option in ("--output", "--preset", "--train", "--val", "--test", "--seed", "--overwrite", SMALL_PATCH_PRESET):
        assert option in result.stdout


def test_writes_small_dataset_and_prints_it(tmp_path):
    out = tmp_path / "small"
    result = run("--output", out, "--train", 21, "--val", 7, "--test", 14, "--seed", 5)
    assert result.returncode == 0, result.stderr
    for fragment in ("train: 21 patches", "val: 7 patches", "test: 14 patches", "VV, VH", str(out)):
        assert fragment in result.stdout
    dataset = read_dataset(out)
    expected = generate({"train": 21, "val": 7, "test": 14}, seed=5)
    for name, split in expected.splits.items():
        np.testing.assert_array_equal(dataset.splits[name].pixels, split.pixels)
        assert np.bincount(dataset.splits[name].labels).min() == len(split) // dataset.metadata.num_classes


def test_writes_the_small_patch_proxy_from_its_seed(tmp_path):
    out = tmp_path / "proxy"
    result = run("--preset", SMALL_PATCH_PRESET, "--output", out, "--val", 12, "--seed", 3)
    assert result.returncode == 0, result.stderr
    for fragment in ("preset small-patch, seed 3", "train: 588 patches", "val: 12 patches", "patch size: 5 x 5"):
        assert fragment in result.stdout
    dataset = read_dataset(out)
    expected = generate_small_patch({"train": 588, "val": 12, "test": len(dataset.test)}, seed=3)
    assert dataset.metadata == expected.metadata and len(dataset.test) >= 2000
    for name, split in expected.splits.items():
        np.testing.assert_array_equal(dataset.splits[name].pixels, split.pixels)
        np.testing.assert_array_equal(dataset.splits[name].labels, split.labels)


def test_refuses_to_overwrite_without_flag(tmp_path):
    out = tmp_path / "ds"
    assert run("--output", out, "--train", 7, "--val", 7, "--test", 7).returncode == 0
    before = read_dataset(out).train.pixels
    refused = run("--output", out, "--train", 14, "--val", 7, "--test", 7, "--seed", 9)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "already exists" in refused.stderr and "--overwrite" in refused.stderr
    np.testing.assert_array_equal(read_dataset(out).train.pixels, before)
    replaced = run("--output", out, "--train", 14, "--val", 7, "--test", 7, "--seed", 9, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert len(read_dataset(out).train) == 14


def test_default_folder_is_protected():
    assert DEFAULT_DATASET_DIR.is_dir()
    stamp = {p.name: p.stat().st_mtime_ns for p in DEFAULT_DATASET_DIR.iterdir()}
    refused = run()
    assert refused.returncode == 2 and "already exists" in refused.stderr
    other = run("--train", 7)  # other sizes would silently change the documented default
    assert other.returncode == 2 and "--output" in other.stderr
    proxy = run("--preset", SMALL_PATCH_PRESET)
    assert proxy.returncode == 2 and "--output" in proxy.stderr
    assert {p.name: p.stat().st_mtime_ns for p in DEFAULT_DATASET_DIR.iterdir()} == stamp
