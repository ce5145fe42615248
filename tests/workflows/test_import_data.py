"""Tests of the import_data.py entry script, run as a user runs it: a subprocess from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.folder import read_dataset

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "workflows" / "import_data.py"


def run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def save(path: Path, n: int = 40, k: int = 4, **extra: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(n, 4, 3, 3)), y=np.arange(n) % k, **extra)
    return path


def test_help_explains_the_keys():
    result = run("--help")
    assert result.returncode == 0
    for key in ("x_test", "y_test", "band_names", "class_names", "--seed", "--overwrite", "--val-fraction"):
        assert key in result.stdout


def test_success_prints_what_it_wrote(tmp_path):
    npz = save(tmp_path / "in.npz", band_names=np.asarray(["b", "g", "r", "nir"]))
    result = run(npz, tmp_path / "out", "--seed", "3", "--val-fraction", "0.2", "--test-fraction", "0.2")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for fragment in ("train: 24 patches", "val: 8 patches", "test: 8 patches", "b, g, r, nir", "classes (4)"):
        assert fragment in result.stdout
    dataset = read_dataset(tmp_path / "out")
    assert [len(dataset.splits[n]) for n in ("train", "val", "test")] == [24, 8, 8]


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: np.savez(p, x=np.zeros((10, 2, 3, 3)), y=np.arange(9) % 2), "9 labels for 10 patches"),
        (lambda p: np.savez(p, x=np.zeros((10, 2, 3)), y=np.arange(10) % 2), "4-D"),
        (lambda p: np.savez(p, x=np.full((10, 2, 3, 3), np.nan), y=np.arange(10) % 2), "non-finite"),
        (lambda p: np.savez(p, x=np.zeros((10, 2, 3, 3)), y=np.zeros(10, dtype=int)), "at least 2"),
        (lambda p: p.write_bytes(b"not an npz"), "cannot be read"),
    ],
)
def test_bad_input_gives_one_line_and_no_folder(tmp_path, make, fragment):
    npz = tmp_path / "bad.npz"
    make(npz)
    result = run(npz, tmp_path / "out")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and str(npz) in lines[0] and fragment in lines[0]
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]  # nothing half-written


def test_existing_folder_needs_overwrite(tmp_path):
    npz = save(tmp_path / "in.npz")
    assert run(npz, tmp_path / "out").returncode == 0
    refused = run(npz, tmp_path / "out")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "already exists" in refused.stderr
    replaced = run(npz, tmp_path / "out", "--overwrite", "--seed", "7")
    assert replaced.returncode == 0, replaced.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz", "out"]


def test_overwrite_never_replaces_a_folder_of_other_files(tmp_path):
    npz = save(tmp_path / "in.npz")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    result = run(npz, tmp_path / "mine", "--overwrite")
    assert result.returncode == 2 and "refusing" in result.stderr
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
