"""The main job as users run it: a Ray head node, `ray job submit -- python workflows/tune.py`, the dashboard."""

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = "http://127.0.0.1:8265"
# Ray 2.60 clusters require a token; the job CLI only sends it in token mode.
ENV = {**os.environ, "RAY_AUTH_MODE": "token"}


def _wait_for_dashboard(deadline_s: float) -> int:
    """Seconds-bounded poll until the dashboard answers; returns the HTTP status of an unauthenticated request."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{DASHBOARD}/api/jobs/", timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            time.sleep(1)
    raise TimeoutError("the dashboard did not answer on 127.0.0.1:8265")


@pytest.mark.slow
def test_ray_job_submit_runs_the_smoke_test(tmp_path):
    """What the README tells users to do: start a head node, submit the job, watch the dashboard."""
    results = tmp_path / "job-results"
    # --block keeps the head in this one process, so the test stops exactly what it started (by PID).
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--num-cpus", "2", "--dashboard-host", "127.0.0.1"],
        cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # The dashboard answers, and refuses requests without the cluster's token.
        assert _wait_for_dashboard(120) == 401
        submit = subprocess.Popen(
            ["ray", "job", "submit", "--address", DASHBOARD, "--", sys.executable,
             "workflows/tune.py", "--smoke-test", "--results", str(results)],
            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        request = urllib.request.Request(f"{DASHBOARD}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        output, _ = submit.communicate(timeout=900)
        assert submit.returncode == 0, output[-3000:]
        assert "succeeded" in output.lower()
        assert (results / "test_metrics.json").is_file()
        assert (results / "bundle" / "bundle.json").is_file()
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=120)
