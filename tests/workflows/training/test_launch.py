"""Launching Train runs: a long-lived PBT member's run, and the placement group a dead predecessor left behind."""

import shutil

import pytest
import ray
from builders import ray_inputs
from ray.util.placement_group import placement_group, placement_group_table

from data import DEFAULT_DATASET_DIR
from data.folder import read_dataset
from workflows.training.config import GRAD_CLIP, LR, TrainConfig
from workflows.training.launch import MemberRun, unique_run_name
from workflows.training.ray_private import record_placement_group, release_placement_group


def test_a_recorded_placement_group_is_removed_once(ray_cluster):
    group = placement_group([{"CPU": 1}])
    ray.get(group.ready(), timeout=60)
    record_placement_group("exp/member-a", group.id.hex())

    assert not release_placement_group("exp/member-b"), "another owner's record must not be touched"
    assert placement_group_table(group)["state"] == "CREATED"
    assert release_placement_group("exp/member-a")
    assert placement_group_table(group)["state"] == "REMOVED"
    assert not release_placement_group("exp/member-a"), "the record is forgotten after the removal"


def test_a_record_of_an_already_removed_group_is_harmless(ray_cluster):
    group = placement_group([{"CPU": 1}])
    ray.get(group.ready(), timeout=60)
    ray.util.remove_placement_group(group)
    record_placement_group("exp/member-c", group.id.hex())
    assert not release_placement_group("exp/member-c")


@pytest.fixture(scope="module")
def member_data(ray_cluster):
    dataset = read_dataset(DEFAULT_DATASET_DIR)
    stats, datasets = ray_inputs(DEFAULT_DATASET_DIR)
    return dataset, stats, datasets


def test_a_member_run_takes_one_command_per_epoch_and_loads_a_checkpoint_in_place(member_data, tmp_path, alive_actors):
    """The long-lived PBT member: two workers, epochs on command, an exploit that is a checkpoint load."""
    dataset, stats, datasets = member_data
    cfg = TrainConfig(epochs=4, channels=16, num_workers=2, cpus_per_worker=0.9, batch_size=64, seed=0)
    member = MemberRun((cfg, dataset.metadata, stats, datasets, tmp_path / "runs", unique_run_name("m")))
    try:
        first, first_checkpoint = member.step({LR: cfg.lr, GRAD_CLIP: cfg.grad_clip})
        kept = tmp_path / "epoch-1"
        shutil.copytree(first_checkpoint, kept)  # as Tune keeps a copy
        second, _ = member.step({LR: cfg.lr, GRAD_CLIP: cfg.grad_clip})
        assert (first["epoch"], second["epoch"]) == (1, 2)
        controllers = {a["ActorID"] for a in alive_actors("TrainController")}
        # The exploit: epoch 1's state back, new settings, the same workers.
        third, _ = member.step({LR: 1e-4, GRAD_CLIP: None}, load=str(kept))
        assert third["epoch"] == 2, "continues from the loaded checkpoint's epoch"
        assert third[LR] == pytest.approx(1e-4) and third[GRAD_CLIP] == 0.0
        assert {a["ActorID"] for a in alive_actors("TrainController")} == controllers, "a new Train run started"
        # Back to the freshly seeded state, as when Tune hands the process to a trial that starts from scratch.
        fresh, _ = member.step({LR: cfg.lr, GRAD_CLIP: cfg.grad_clip}, fresh=True)
        assert fresh["epoch"] == 1
    finally:
        member.stop()
    assert not member.run.thread.is_alive()
    assert not member.control.exists()
