"""Placement-group records: a group an owner's dead run left behind is removed, once, and only the owner's."""

import ray
from ray.util.placement_group import placement_group, placement_group_table

from workflows.training.placement import record_placement_group, recorded_placement_group, release_placement_group


def test_a_recorded_placement_group_is_removed_once(ray_cluster):
    group = placement_group([{"CPU": 1}])
    ray.get(group.ready(), timeout=60)
    record_placement_group("exp/member-a", group.id.hex())
    assert recorded_placement_group("exp/member-a") == group.id.hex()

    assert not release_placement_group("exp/member-b"), "another owner's record must not be touched"
    assert placement_group_table(group)["state"] == "CREATED"
    assert release_placement_group("exp/member-a")
    assert placement_group_table(group)["state"] == "REMOVED"
    assert recorded_placement_group("exp/member-a") is None
    assert not release_placement_group("exp/member-a"), "the record is forgotten after the removal"


def test_a_record_of_an_already_removed_group_is_harmless(ray_cluster):
    group = placement_group([{"CPU": 1}])
    ray.get(group.ready(), timeout=60)
    ray.util.remove_placement_group(group)
    record_placement_group("exp/member-c", group.id.hex())
    assert not release_placement_group("exp/member-c")
    assert recorded_placement_group("exp/member-c") is None
