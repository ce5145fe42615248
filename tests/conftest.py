"""Shared fixtures: a small Ray cluster that the tests start and stop themselves."""

import pytest


@pytest.fixture(scope="module")
def ray_cluster():
    """A 2-CPU local Ray cluster for one test module, shut down afterwards.

    The dashboard stays on: Ray Train's placement-group cleaner asks the state API whether the controller is
    alive, and without the dashboard it can conclude "dead" and tear a healthy run down.
    """
    import ray

    # address="local": a new private cluster, never one some other process left running.
    ray.init(address="local", num_cpus=2, log_to_driver=False, dashboard_host="127.0.0.1")
    yield
    ray.shutdown()
