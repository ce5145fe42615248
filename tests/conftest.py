"""Shared fixtures: a small Ray cluster that the tests start and stop themselves."""

import dataclasses
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import pytest

# Environment variable that marks every process of a head a test started, so the test stops exactly those.
HEAD_MARKER = "SATRESNET_TEST_HEAD"


@pytest.fixture(scope="module")
def ray_cluster():
    """A 2-CPU local Ray cluster for one test module, shut down afterwards.

    The dashboard stays on, bound to 127.0.0.1, as every cluster the product starts has it.
    """
    import ray

    # address="local": a new private cluster, never one some other process left running.
    ray.init(address="local", num_cpus=2, log_to_driver=False, dashboard_host="127.0.0.1")
    yield
    ray.shutdown()


@pytest.fixture
def alive_actors():
    """A function that lists the live actors of one class, read straight from Ray's GCS.

    Not the dashboard's state API (``ray.util.state.list_actors``): under load in CI its queries timed out.
    """
    from ray._private import state

    def actors_of(class_name: str) -> list[dict]:
        found = state.actors(actor_state_name="ALIVE").values()
        return [actor for actor in found if actor["ActorClassName"] == class_name]

    return actors_of


@dataclasses.dataclass(frozen=True)
class HeadEnvironment:
    """Where a test's own Ray head lives: an empty HOME, its own temp folder and free ports."""

    env: dict
    home: Path
    tmpdir: Path
    ray_port: int
    dashboard_port: int
    agent_port: int

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def stop_marked_processes(marker: str, timeout_s: float = 20.0) -> int:
    """Stop every process whose environment carries ``marker`` (SIGTERM, then SIGKILL); returns how many."""
    import psutil

    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(HEAD_MARKER) == marker:
                found.append(process)
        except (psutil.Error, OSError):
            continue
    for process in found:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(found, timeout=timeout_s)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    return len(found)


@pytest.fixture
def head_environment(tmp_path):
    """An environment for a Ray head that a test starts through the CLI (``ray start``, ``quickstart.sh``).

    HOME is empty (no ``~/.ray/auth_token`` from earlier runs), TMPDIR is the test's own (Ray's session folder and
    anything else left behind land there), and ports are free ones, so the test neither sees nor touches another
    cluster. Teardown stops exactly the processes started with this environment: each carries a marker variable.
    """
    home = tmp_path / "home"
    home.mkdir()
    # Short: Ray puts its sockets under TMPDIR, and a Unix socket path must stay under 108 characters.
    tmpdir = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))
    marker = uuid.uuid4().hex
    ray_port, dashboard_port, agent_port = _free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), TMPDIR=str(tmpdir), RAY_AUTH_MODE="token", **{HEAD_MARKER: marker})
    try:
        yield HeadEnvironment(env, home, tmpdir, ray_port, dashboard_port, agent_port)
    finally:
        stop_marked_processes(marker)
        shutil.rmtree(tmpdir, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class S3Server:
    """An S3-compatible server (moto) on 127.0.0.1 that this process's environment points at."""

    endpoint: str

    def bucket(self, name: str) -> str:
        """Create a bucket (if missing); returns its URI."""
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint)
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return f"s3://{name}"


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server for one test module, on a free loopback port, stopped by its PID afterwards.

    The standard AWS variables point this process (and the Ray clusters it starts afterwards, whose workers inherit
    them) at it; they are put back when the module ends. Request the fixture before ``ray_cluster``.
    """
    import subprocess
    import sys
    import time
    import urllib.request

    (port,) = _free_ports(1)
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    names = (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_EC2_METADATA_DISABLED",
    )
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
        AWS_EC2_METADATA_DISABLED="true",
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's S3 server did not start on {endpoint}") from None
                time.sleep(0.2)
        yield S3Server(endpoint)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
