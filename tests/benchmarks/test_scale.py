"""benchmarks/scale.py --quick runs train.py and predict.py at two sizes, prints its table and removes its folder."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Two sizes, each two train.py runs and a predict.py run with their own Ray clusters; generous against a busy machine.
TIMEOUT_S = 900
QUICK_SIZES = ("2,000", "5,000")
# Columns of a table row before the verdicts: size, train RSS, s/epoch, in-memory s/epoch, ratio, predict RSS,
# end-to-end, Ray Data and plain patches/s, and the two ratios.
FIGURES = 10


def _figure(cell: str) -> float:
    return float(cell.replace(",", "").removesuffix("x"))


@pytest.mark.slow
def test_scale_quick_prints_a_row_per_size_and_removes_its_folder(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--quick", "--work-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    out = result.stdout
    assert result.returncode == 0, out[-2000:] + result.stderr[-3000:]
    for size in QUICK_SIZES:
        row = re.search(rf"^{size}\s+(.*)$", out, re.M)
        assert row is not None, out[-3000:]
        cells = row.group(1).split()
        figures = [_figure(cell) for cell in cells[:FIGURES]]
        assert all(math.isfinite(v) and v > 0 for v in figures), row.group(0)
        assert "RSS met" in row.group(1) or "RSS MISSED" in row.group(1), row.group(0)
    for kind in ("train.py", "train.py in memory", "predict.py"):
        assert re.search(rf"  2,000: .*{re.escape(kind)} \d+\.\d\d / \d+\.\d\d GB", out), out[-3000:]
    assert re.search(r"^target driver peak RSS <= 1\.5 GB at every size run .*: largest \d+\.\d\d GB", out, re.M)
    assert re.search(r"^machine: \d+ CPUs; torch threads .* load average", out, re.M)
    work = re.search(r"^work folder (\S+)$", out, re.M)
    assert work is not None and Path(work.group(1)).parent == tmp_path
    assert not Path(work.group(1)).exists(), "the temporary folder was left behind"
    assert list(tmp_path.iterdir()) == []


def test_scale_help_runs_without_ray():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--quick", "--sizes", "--epochs", "--keep", "--work-dir"):
        assert flag in result.stdout
