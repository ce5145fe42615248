"""The README's first command, as a newcomer runs it: ``./quickstart.sh --smoke-test`` in a fresh clone, empty HOME."""

import os
import shutil
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
# What a Ray head itself leaves in the temp folder: its session folder and the dashboard's multiprocessing socket
# folder; torch creates its (empty) compiler cache folder there too. A run must add nothing else.
HEAD_LEFTOVERS = ("ray", "pymp-", "torchinductor_")


def _fresh_clone(destination: Path) -> None:
    """Copy what a clone of this checkout holds (tracked and not-ignored files): no .venv, no results."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def _without_virtualenv(env: dict) -> dict:
    """The environment of a shell that never activated a virtualenv (the test itself runs in one)."""
    venv = os.path.dirname(sys.executable)
    clean = {k: v for k, v in env.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    clean["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv)
    return clean


def _status(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def _listening_addresses(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.net_connections(kind="tcp") if c.status == "LISTEN" and c.laddr.port == port}


@pytest.mark.slow
def test_quickstart_runs_from_a_fresh_clone_on_a_machine_that_never_ran_ray(tmp_path, head_environment):
    head = head_environment
    clone = tmp_path / "clone"
    _fresh_clone(clone)
    env = _without_virtualenv(head.env)
    env.update(
        QUICKSTART_RAY_PORT=str(head.ray_port),
        QUICKSTART_DASHBOARD_PORT=str(head.dashboard_port),
        QUICKSTART_AGENT_PORT=str(head.agent_port),
    )
    assert not (head.home / ".ray").exists()

    run = subprocess.run(
        ["./quickstart.sh", "--smoke-test"], cwd=clone, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "succeeded" in run.stdout

    # Results of the job, in the clone (the job runs where the head was started).
    [results] = (clone / "results").glob("tune-*")
    assert (results / "test_metrics.json").is_file()
    assert (results / "bundle" / "bundle.json").is_file()
    assert list((results / "tensorboard").glob("member-*/events.out.tfevents.*"))

    # The cluster is protected: a token only its owner can read, the dashboard on loopback only, refusing requests
    # without the token and answering the one quickstart told the user how to get.
    token_file = head.home / ".ray" / "auth_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert "ray get-auth-token" in run.stdout and head.dashboard in run.stdout
    token = token_file.read_text().strip()
    assert _status(f"{head.dashboard}/api/jobs/") == 401
    assert _status(f"{head.dashboard}/api/jobs/", token) == 200
    assert _listening_addresses(head.dashboard_port) == {"127.0.0.1"}

    # Nothing of the run is left in the temp folder.
    left = [p.name for p in head.tmpdir.iterdir() if not p.name.startswith(HEAD_LEFTOVERS)]
    assert left == []
