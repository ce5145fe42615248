"""A PBT member's next run frees the placement group a dead predecessor's Train run left behind."""

import ray
from ray.util.placement_group import placement_group, placement_group_table

from workflows.ray_private import record_placement_group, release_placement_group


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
