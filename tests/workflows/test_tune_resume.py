"""An interrupted PBT experiment continues with --resume, without restarting its members from scratch."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workflows.jobs.experiment import MEMBER_LOGS_DIR

REPO = Path(__file__).resolve().parents[2]
# Members checkpoint every epoch, and since workers keep their shard in memory an epoch takes about 0.1 s: enough
# epochs after the interrupt at epoch 4 that the experiment cannot finish before Tune acts on it. With 8, and later
# with 24 on a loaded CI machine, it did finish first and exited 0 as a finished run.
EPOCHS = 80


@pytest.mark.slow
def test_interrupted_experiment_resumes_from_member_checkpoints(tmp_path):
    results = tmp_path / "exp"
    common = ["--address", "local", "--num-cpus", "2", "--results", str(results)]
    log = tmp_path / "first.log"
    # Output to a file: Tune prints a lot, and a full pipe would stall the experiment.
    with open(log, "w") as sink:
        first = subprocess.Popen(
            [sys.executable, "workflows/tune.py", "--population", "2", "--epochs", str(EPOCHS),
             "--perturbation-interval", "2", "--channels", "16", "--stable-start", *common],
            cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 480
    while time.monotonic() < deadline and first.poll() is None:
        # Both members have reported epoch 4 (with its checkpoint): interrupt, as Ctrl+C would. The member logs only
        # grow; Tune's checkpoint folders are pruned to the latest few, so waiting for checkpoint_000003 in both
        # could miss the moment (it did on CI: the run finished uninterrupted).
        if sum(_reports(log) >= 4 for log in (results / MEMBER_LOGS_DIR).glob("*.jsonl")) >= 2:
            os.kill(first.pid, signal.SIGINT)
            break
        time.sleep(0.1)
    first.wait(timeout=300)
    output = log.read_text()
    assert first.returncode == 130, output[-3000:]
    assert "--resume" in output
    assert not (results / "test_metrics.json").exists()

    resumed = subprocess.run(
        [sys.executable, "workflows/tune.py", "--resume", *common],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    pbt = json.loads((results / "pbt.json").read_text())
    assert len(pbt["trials"]) == 2
    for trial in pbt["trials"].values():
        epochs = [row["epoch"] for row in trial["history"]]
        assert epochs[-1] == EPOCHS
        assert epochs.count(1) == 1, f"a member restarted from scratch: {epochs}"
    assert (results / "test_metrics.json").is_file()


def _reports(member_log: Path) -> int:
    """Reports a member has logged so far (one JSON line each; a line being written is not counted)."""
    return member_log.read_text().count("\n")
