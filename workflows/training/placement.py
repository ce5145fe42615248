"""Placement-group records: which placement group each owner's current Train run holds, so nothing outlives it.

Train removes a run's placement group when the run ends; when the process that called ``fit()`` dies first, Train's
controller dies with it, and Ray itself removes the group only when the whole job ends. Train ships a detached
cleaner actor for that case, which asks the dashboard's state API once a second whether the controller lives. It
costs one more Python process per run and holds every run's shutdown while it stops, and under load its thread can
die on a timed-out query, after which a dead member's group is never removed and the member's next run waits for CPUs
without end. We run without it (``workflows.training.ray_private.TorchTrainerWithoutCleaner``) and do the job where it
arises: rank 0 of a run given an ``owner`` (a PBT member, by a name that outlives its process) records the run's
placement group in Ray's cluster-wide KV store; the launcher removes it when a stopped run does not end in time, and
the owner's next run removes any group a dead predecessor left behind. Runs without an owner (``train.py``) live as
long as their driver, whose exit ends the job.
"""

from __future__ import annotations

import logging

import ray.util
from ray.util.placement_group import placement_group_table, remove_placement_group

from workflows.training.ray_private import kv_del, kv_get, kv_put, placement_group_from_hex

log = logging.getLogger(__name__)

_KV_PREFIX = "satresnet:placement-group:"


def _key(owner: str) -> str:
    return _KV_PREFIX + owner


def current_placement_group() -> str | None:
    """The hex id of the placement group this worker runs in, or None outside one."""
    group = ray.util.get_current_placement_group()
    return group.id.hex() if group is not None else None


def record_placement_group(owner: str, group_hex: str) -> None:
    """Remember ``group_hex`` as the placement group of the owner's current run (cluster-wide)."""
    kv_put(_key(owner), group_hex)


def recorded_placement_group(owner: str) -> str | None:
    """The placement group the owner's last run recorded and nobody has removed or forgotten since, or None."""
    return kv_get(_key(owner))


def forget_placement_group(owner: str) -> None:
    """Drop the owner's record (its run ended and Train removed the group)."""
    kv_del(_key(owner))


def release_placement_group(owner: str) -> bool:
    """Remove the placement group the owner's last run recorded, if it still exists, and forget the record.

    Args:
        owner: The ``owner`` the run was started with.

    Returns:
        Whether a placement group was removed.
    """
    recorded = recorded_placement_group(owner)
    if not recorded:
        return False
    removed = False
    try:
        group = placement_group_from_hex(recorded)
        if placement_group_table(group).get("state") not in (None, "REMOVED"):
            remove_placement_group(group)
            removed = True
            log.warning("removed placement group %s left behind by %s's previous run", recorded, owner)
    except Exception as err:  # noqa: BLE001 - best effort: Ray removes it when the job ends at the latest
        log.warning("could not remove placement group %s of %s: %s", recorded, owner, err)
    forget_placement_group(owner)
    return removed
