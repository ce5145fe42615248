"""Multi-node training on a simulated two-node Ray cluster: a run spans both nodes and survives losing one."""

import math
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import pytest
import ray
from builders import ray_inputs
from ray.cluster_utils import Cluster

from data import DEFAULT_DATASET_DIR
from data.folder import read_dataset
from workflows.training.checkpoint import load_checkpoint
from workflows.training.config import TrainConfig
from workflows.training.launch import run_training, unique_run_name

# A custom resource only the worker node has, so the test can tell the nodes apart.
WORKER_RESOURCE = "satresnet_worker_node"
# One CPU per node and one worker per CPU: the run's placement group can only fit by spanning both nodes.
SMALL = {"num_workers": 2, "cpus_per_worker": 1, "channels": 16, "batch_size": 64, "seed": 0}


@dataclass
class TwoNodes:
    cluster: Cluster
    head_id: str
    worker: Any  # the ray._private.node.Node that Cluster.add_node returned
    data: tuple[Any, Any, dict[str, Any]]

    def add_worker_node(self) -> Any:
        self.worker = self.cluster.add_node(num_cpus=1, resources={WORKER_RESOURCE: 1})
        self.cluster.wait_for_nodes()
        return self.worker

    def worker_id(self) -> str:
        """The live node that carries the worker resource (the node object's id, cross-checked with Ray's table)."""
        ids = [n["NodeID"] for n in ray.nodes() if n["Alive"] and WORKER_RESOURCE in n["Resources"]]
        assert ids == [self.worker.node_id]
        return ids[0]


@pytest.fixture(scope="module")
def two_nodes():
    """A head node (the driver's, with the dashboard on 127.0.0.1) and a worker node, one CPU each.

    Ray's temporary folder is a private one: ``Cluster`` writes and later deletes the "current cluster" address
    file there, which in /tmp/ray would redirect or break ``ray.init("auto")`` for a cluster someone else runs.
    """
    ray_tmp = tempfile.mkdtemp(prefix="ray-mn-")  # short: Ray's Unix sockets live under it
    cluster = None
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", ray_tmp)
        try:
            # The dashboard on loopback, on the first free port from 8265, as on a real head node.
            head = {"num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": None}
            cluster = Cluster(initialize_head=True, head_node_args=head)
            ray.init(address=cluster.address, log_to_driver=False)
            dataset = read_dataset(DEFAULT_DATASET_DIR)
            # Built (and materialised) before the worker node joins, so every block lives on the head: losing the
            # worker node later loses no data, as on a real cluster whose driver node holds the data set.
            stats, datasets = ray_inputs(DEFAULT_DATASET_DIR)
            data = (dataset, stats, datasets)
            nodes = TwoNodes(cluster, cluster.head_node.node_id, cluster.head_node, data)
            nodes.add_worker_node()
            yield nodes
        finally:
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)


def all_finite(metrics: dict[str, Any]) -> bool:
    return all(math.isfinite(float(v)) for v in metrics.values())


@pytest.mark.slow
def test_a_run_spans_both_nodes_with_shared_storage(two_nodes, tmp_path, alive_actors):
    dataset, stats, datasets = two_nodes.data
    worker_id = two_nodes.worker_id()
    cfg = TrainConfig(epochs=3, **SMALL)
    storage = tmp_path / "shared"  # one folder both "nodes" reach, as an NFS mount would on real machines
    placement = []

    def where_workers_run(metrics, checkpoint):
        placement.append(sorted(w["Address"]["NodeID"] for w in alive_actors("RayTrainWorker")))

    outcome = run_training(
        cfg, dataset.metadata, stats, datasets, storage, unique_run_name("mn"), on_report=where_workers_run
    )
    # Each epoch, one Train worker on the head and one on the worker node.
    assert placement == [sorted([two_nodes.head_id, worker_id])] * cfg.epochs
    assert [m["epoch"] for m in outcome.history] == list(range(1, cfg.epochs + 1))
    assert all(all_finite(m) for m in outcome.history)
    # The all-reduce crossed nodes: both workers report the same global figures.
    for per_worker in outcome.worker_metrics:
        a, b = ({k: v for k, v in m.items() if k != "epoch_seconds"} for m in per_worker)
        assert a == b
    # Checkpoints land on the shared storage path.
    assert outcome.best_checkpoint is not None and outcome.best_checkpoint.startswith(str(storage.resolve()))
    assert load_checkpoint(outcome.best_checkpoint)["epoch"] == outcome.best_metrics["epoch"]


@pytest.mark.slow
def test_losing_the_worker_node_resumes_from_the_last_checkpoint(two_nodes, tmp_path, alive_actors):
    """The worker node dies after epoch 2; a replacement joins; the run restarts from epoch 2's checkpoint.

    Only the Train workers may live off the driver's node: Train pins its controller and data actors there, and any
    helper actor of ours placed on the lost node (Ray puts zero-CPU actors on a random node) would take the run down.
    """
    dataset, stats, datasets = two_nodes.data
    lost_id = two_nodes.worker_id()
    cfg = TrainConfig(epochs=5, checkpoint_every=1, **SMALL)
    workers_at = {}  # epoch -> the live Train workers' (actor id, node id)
    replaced = []

    def lose_the_worker_node(metrics, checkpoint):
        workers_at[metrics["epoch"]] = sorted(
            (w["ActorID"], w["Address"]["NodeID"]) for w in alive_actors("RayTrainWorker")
        )
        if metrics["epoch"] == 2 and not replaced:
            # Called while Train's controller waits for us, so the node dies during epoch 3.
            two_nodes.cluster.remove_node(two_nodes.worker)
            replaced.append(two_nodes.add_worker_node().node_id)

    outcome = run_training(
        cfg,
        dataset.metadata,
        stats,
        datasets,
        tmp_path / "shared",
        unique_run_name("mn-lost"),
        max_failures=1,
        on_report=lose_the_worker_node,
    )
    assert replaced, "the worker node was never removed"
    epochs = [m["epoch"] for m in outcome.history]
    # Resumed, not restarted: after epoch 2 the count goes on from 3 (never back to 1) and reaches the end.
    assert epochs[:2] == [1, 2] and min(epochs[2:]) >= 3, epochs
    assert set(epochs) == set(range(1, cfg.epochs + 1)) and epochs[-1] == cfg.epochs, epochs
    assert all(all_finite(m) for m in outcome.history)
    # A new worker group ran the end of the run: new actors, one on the head and one on the replacement node.
    before, after = workers_at[2], workers_at[cfg.epochs]
    assert {a for a, _ in before}.isdisjoint(a for a, _ in after)
    assert sorted(n for _, n in before) == sorted([two_nodes.head_id, lost_id])
    assert sorted(n for _, n in after) == sorted([two_nodes.head_id, replaced[0]])
    # The restarted workers continued the trained model rather than a fresh one.
    assert outcome.history[2]["train_loss"] < outcome.history[0]["train_loss"]
