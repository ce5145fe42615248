"""Shared fixtures: a small Ray cluster that the tests start and stop themselves."""

import pytest


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
