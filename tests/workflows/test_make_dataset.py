"""Tests of the make_dataset.py entry script, run as a user runs it: a subprocess from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from data import DEFAULT_DATASET_DIR
from data.format import read_dataset
from data.synthetic import generate

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "workflows" / "make_dataset.py"


def run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_help_names_the_options():
    result = run("--help")
    assert result.returncode == 0
    for option in ("--output", "--train", "--val", "--test", "--seed", "--overwrite"):
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
    assert {p.name: p.stat().st_mtime_ns for p in DEFAULT_DATASET_DIR.iterdir()} == stamp
