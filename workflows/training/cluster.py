"""Connecting to Ray: join a running cluster when there is one, else start a local one bound to 127.0.0.1."""

from __future__ import annotations

import logging
import os
import time

import ray

from workflows.training.ray_private import quiet_ray_data_logs

log = logging.getLogger(__name__)

# The dashboard and job API run arbitrary code for anyone who reaches them: loopback only unless asked otherwise.
DASHBOARD_HOST = "127.0.0.1"
# How long to wait for a just-started cluster to report its CPUs.
RESOURCES_TIMEOUT_S = 10.0


def connect(address: str | None = None, num_cpus: int | None = None, dashboard_host: str = DASHBOARD_HOST) -> None:
    """Initialise Ray once for this process.

    Args:
        address: Cluster address (``auto``, ``ray://…`` or ``host:port``), or ``local`` for a new private
            cluster; None joins the cluster named by ``RAY_ADDRESS`` (set inside ``ray job submit``) or a local
            ``ray start`` cluster, else starts one.
        num_cpus: CPUs of a newly started local cluster (ignored when joining one).
        dashboard_host: Interface a newly started local dashboard binds to.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = {"log_to_driver": True, "configure_logging": True, "logging_level": logging.WARNING}
    # Every process of the job (members, Train controllers and workers) logs Ray's INFO lines ("Restored on …",
    # "Checkpoint successfully created …", "Dataset … execution finished …") to its own log file only; warnings and
    # errors still reach the job log.
    quiet["logging_config"] = ray.LoggingConfig(log_level="WARNING")
    start_local = dict(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host=dashboard_host)
    start_local.update(quiet)
    if address == "local":
        ray.init(**start_local)
    elif address:
        ray.init(address=address, **quiet)
    else:
        try:
            ray.init(address="auto", **quiet)
            log.info("joined the running Ray cluster")
        except ConnectionError:
            ray.init(**start_local)
    _wait_for_resources()
    _quiet_ray_data()


def _wait_for_resources(timeout_s: float = RESOURCES_TIMEOUT_S) -> None:
    """Wait (briefly) until the cluster reports free CPUs.

    A head started a moment ago reports none at first, and Ray Data then warns that the job "will hang". A cluster
    whose CPUs are all taken waits ``timeout_s`` here, and then Ray Data's warning is right.
    """
    deadline = time.monotonic() + timeout_s
    while not ray.available_resources().get("CPU") and time.monotonic() < deadline:
        time.sleep(0.2)


def _quiet_ray_data() -> None:
    """Ray Data prints a progress block per epoch; a line per epoch of our own says more."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    quiet_ray_data_logs()


def cluster_cpus() -> float:
    """CPUs in the connected cluster."""
    return float(ray.cluster_resources().get("CPU", 0.0))


def cluster_gpus() -> float:
    """GPUs in the connected cluster."""
    return float(ray.cluster_resources().get("GPU", 0.0))
