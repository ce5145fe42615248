"""The main job as users run it: a Ray head node, `ray job submit -- python workflows/tune.py`, the dashboard."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from builders import RAY_SHUTDOWN_RACES

REPO = Path(__file__).resolve().parents[2]


def _wait_for_dashboard(url: str, deadline_s: float) -> int:
    """Seconds-bounded poll until the dashboard answers; returns the HTTP status of an unauthenticated request."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/jobs/", timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"the dashboard did not answer on {url}")


def _submit(env: dict, dashboard: str, args: list[str]) -> subprocess.CompletedProcess:
    """``ray job submit``, tried again while the new head's job agent is not up yet (nothing is submitted then)."""
    command = ["ray", "job", "submit", "--address", dashboard, "--", sys.executable, *args]
    deadline = time.monotonic() + 60
    while True:
        run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent" not in run.stdout + run.stderr or time.monotonic() > deadline:
            return run
        time.sleep(1)


@pytest.mark.slow
def test_ray_job_submit_runs_the_smoke_test(tmp_path, head_environment):
    """What the README tells users to do: make a token, start a head node, submit the job, watch the dashboard."""
    head = head_environment
    results = tmp_path / "job-results"
    env = head.env
    # A machine that never ran Ray has no token; `ray start` does not make one.
    subprocess.run(["ray", "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    subprocess.run(
        ["ray", "start", "--head", "--num-cpus", "2", "--port", str(head.ray_port), "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(head.dashboard_port), "--dashboard-agent-listen-port", str(head.agent_port),
         "--disable-usage-stats"],
        cwd=REPO, env=env, check=True, capture_output=True,
    )  # fmt: skip
    # The dashboard answers, and refuses requests without the cluster's token.
    assert _wait_for_dashboard(head.dashboard, 120) == 401
    token = (head.home / ".ray" / "auth_token").read_text().strip()
    request = urllib.request.Request(f"{head.dashboard}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    run = _submit(env, head.dashboard, ["workflows/tune.py", "--smoke-test", "--results", str(results)])
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "succeeded" in output.lower()
    assert (results / "test_metrics.json").is_file()
    assert (results / "bundle" / "bundle.json").is_file()
    # The job log tells the story in our lines, not in Tune's boxed tables.
    assert "member 0  epoch   1/4" in run.stdout
    assert "╭" not in output and "Trial status" not in output
    assert "execution finished" not in output
    # Ray's own deprecation notice about an option we never set (workflows/training/launch.py's DataConfig).
    assert "exclude_resources" not in output
    # A normal run shows no failed task on the dashboard's job page (Ray Data's footer readers once made 93).
    listed = subprocess.run(
        ["ray", "list", "tasks", "--address", head.dashboard, "--format", "json", "--limit", "10000"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-2000:]
    tasks = json.loads(listed.stdout)
    assert len(tasks) > 10, "the job's tasks were not listed"
    failed = sorted({task["name"] for task in tasks if task["state"] == "FAILED"} - RAY_SHUTDOWN_RACES)
    assert failed == [], failed
