"""The benchmark scripts run end to end in --quick mode and print tables of measured numbers."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NUMBER = r"\d+(?:\.\d+)?"
# A script that starts its own Ray cluster and trains; generous against a busy 2-CPU machine.
TIMEOUT_S = 600


def _run(script: str) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_train_throughput_quick_prints_epoch_times_and_ratios():
    out = _run("train_throughput.py")
    for size in ("588", "5000"):
        # size, epochs, plain, Ray 1x2, Ray 2x1 seconds per epoch, then the two ratios.
        row = re.search(rf"^{size} \(\w+\)\s+\d+" + rf"\s+({NUMBER})" * 3 + rf"\s+({NUMBER})x" * 2, out, re.M)
        assert row is not None, out[-3000:]
        assert all(float(v) > 0 for v in row.groups())
    assert re.search(rf"measured at .*: {NUMBER}x \(best layout\)", out)


@pytest.mark.slow
def test_pbt_vs_plain_quick_prints_wall_times_and_ratio():
    out = _run("pbt_vs_plain.py")
    walls = re.search(rf"^wall seconds\s+({NUMBER})\s+({NUMBER})$", out, re.M)
    assert walls is not None and all(float(v) > 0 for v in walls.groups()), out[-3000:]
    accuracy = re.search(r"^best member test accuracy\s+(0\.\d+)\s+(0\.\d+)$", out, re.M)
    assert accuracy is not None, out[-3000:]
    assert all(float(v) > 1 / 7 for v in accuracy.groups()), "a side did not learn: at or below chance"
    assert re.search(r"^members diverged at the end\s+\d+\s+\d+$", out, re.M)
    assert re.search(rf"ratio Ray / plain wall time: {NUMBER}x", out)
    assert re.search(r"^exploits: \d+; gap between a member's reports around an exploit: median ", out, re.M)
    runs = re.search(r"^Train runs \(worker groups\) started: (\d+) for (\d+) members", out, re.M)
    assert runs is not None, out[-3000:]
    assert runs.group(1) == runs.group(2), "an exploit started a new Train run"


@pytest.mark.slow
def test_pbt_vs_random_quick_prints_best_median_and_diverged():
    out = _run("pbt_vs_random.py")
    accuracy = r"0\.\d{4}"
    for name in ("best test accuracy", "median member test accuracy"):
        mean = rf"\s+\(mean {accuracy}\)"
        row = re.search(rf"^{name}\s+({accuracy}){mean}\s+({accuracy}){mean}$", out, re.M)
        assert row is not None, out[-3000:]
        assert all(0 < float(v) <= 1 for v in row.groups())
        if name == "best test accuracy":  # the median member may have diverged; the best one must have learned
            assert all(float(v) > 1 / 7 for v in row.groups()), "a side did not learn: at or below chance"
    assert re.search(r"^members diverged at the end\s+\d+\s+\d+$", out, re.M), out[-3000:]
    assert re.search(r"^members below 2x chance\s+\d+\s+\d+$", out, re.M), out[-3000:]
    assert re.search(r"^seed 0: PBT best 0\.\d+, members \[.*\], \d+ exploits", out, re.M)
