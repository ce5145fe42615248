"""Smoke tests of the plain-PyTorch benchmark scripts: each runs with --quick, exits 0 and prints measured numbers."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r"\d+\.\d{3,}")


def run_quick(script, *extra):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--quick", *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_baselines_quick():
    out = run_quick("baselines.py")
    for row in ("majority class", "logistic regression, band means", "logistic regression, all pixels"):
        assert re.search(re.escape(row) + r".*\d\.\d{4}", out), out
    assert re.search(r"k-nearest neighbours \(k=\d+\)", out), out
    assert re.search(r"fixed ResNet .*\d\.\d{4} ± \d\.\d{4}", out), out


@pytest.mark.slow
def test_seed_story_quick(tmp_path):
    png = tmp_path / "seed_story.png"
    out = run_quick("seed_story.py", "--out", str(png))
    assert png.read_bytes().startswith(b"\x89PNG"), "no PNG written"
    assert "ASSUMED" in out and "chance level" in out, out
    assert len(NUMBER.findall(out)) >= 12, out
    assert re.search(r"original: .*symptom", out), out


@pytest.mark.slow
def test_native_vs_upsampled_quick():
    out = run_quick("native_vs_upsampled.py")
    assert re.search(r"native \(\d+x\d+\)\s+[\d.,]+\s+[\d,]+\s+\d+\.\d+", out), out
    assert re.search(r"upsampled \(\d+x\d+\)\s+[\d.,]+\s+[\d,]+\s+\d+\.\d+", out), out
    assert re.search(r"upsampled / native: \d+\.\dx FLOPs", out), out
