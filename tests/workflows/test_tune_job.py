"""The main job as users run it: a Ray head node, `ray job submit -- python workflows/tune.py`, the dashboard."""

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _ray(*args, **kwargs):
    return subprocess.run(["ray", *args], cwd=REPO, capture_output=True, text=True, **kwargs)


@pytest.mark.slow
def test_ray_job_submit_runs_the_smoke_test(tmp_path):
    """What the README tells users to do: start a head node, submit the job, watch the dashboard."""
    results = tmp_path / "job-results"
    started = _ray("start", "--head", "--num-cpus", "2", "--dashboard-host", "127.0.0.1", timeout=180)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        submit = subprocess.Popen(
            ["ray", "job", "submit", "--address", "http://127.0.0.1:8265", "--", sys.executable,
             "workflows/tune.py", "--smoke-test", "--results", str(results)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        # Ray 2.60 turns on token authentication: the dashboard answers, refuses strangers, admits the token.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen("http://127.0.0.1:8265/api/jobs/", timeout=30)
        assert refused.value.code == 401
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        request = urllib.request.Request(
            "http://127.0.0.1:8265/api/jobs/", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        output, _ = submit.communicate(timeout=900)
        assert submit.returncode == 0, output[-3000:]
        assert "succeeded" in output.lower()
        assert (results / "test_metrics.json").is_file()
        assert (results / "bundle" / "bundle.json").is_file()
    finally:
        _ray("stop", timeout=120)
        time.sleep(2)
