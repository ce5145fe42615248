"""Population-based training over ``lr`` and ``grad_clip``: the Tune trial function and the scheduler we run.

Ray 2.60's ``TorchTrainer`` is Train V2 and cannot be handed to a ``Tuner``; each PBT member is a Tune function
that launches a ``TorchTrainer`` (:func:`workflows.launch.run_training`) and forwards every epoch's metrics and
checkpoint to Tune. When PBT exploits, Tune restarts the member with the donor's checkpoint
(``ray.tune.get_checkpoint()``); the member passes it to the trainer, whose workers load model and optimizer state
and then apply the member's *mutated* ``lr`` and ``grad_clip``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune

from data.format import PatchMetadata
from data.pipeline import BandStats
from workflows.config import GRAD_CLIP, LR, TrainConfig
from workflows.launch import GRACEFUL_STOP_S, run_training, unique_run_name
from workflows.ray_private import RecoveringPBT, quiet_member_logs

log = logging.getLogger(__name__)

METRIC = "val_acc"
MODE = "max"
TIME_ATTR = "epoch"
# Written into each checkpoint the member forwards, so a member that is restarted from it knows its donor.
OWNER_FILE = "owner.json"
MEMBER_LOG_SUFFIX = ".jsonl"
# Clipping norms PBT may move between; "off" is not among them, so a member that recovers keeps clipping.
CLIP_CHOICES = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
# Learning rates a resampled member draws from: the range where AdamW trains this network stably.
MUTATION_LR_RANGE = (1e-4, 1e-2)
# Default initial population: geometric learning rates from stable (AdamW trains well at 1e-3) to well past
# divergence (3.0; the upper half also starts unclipped).
INITIAL_LR_RANGE = (1e-3, 3.0)


def initial_population(size: int, lr_range: tuple[float, float], unstable: bool) -> list[dict[str, Any]]:
    """The members' starting ``lr`` and ``grad_clip``, deterministic.

    Args:
        size: Number of members.
        lr_range: Smallest and largest initial learning rate (spaced geometrically).
        unstable: Whether the largest learning rates also start without clipping, so some members diverge and
            recovery is visible; otherwise every member clips.
    """
    low, high = lr_range
    lrs = np.geomspace(low, high, size) if size > 1 else np.array([math.sqrt(low * high)])
    members = []
    for index, lr in enumerate(lrs):
        clip = CLIP_CHOICES[index % len(CLIP_CHOICES)]
        if unstable and index >= size / 2:
            clip = None  # the seed's setting: large steps and no clipping
        members.append({LR: float(lr), GRAD_CLIP: clip})
    return members


def make_scheduler(
    perturbation_interval: int,
    seed: int,
    metric: str = METRIC,
    mode: str = MODE,
    lr_range: tuple[float, float] = MUTATION_LR_RANGE,
) -> RecoveringPBT:
    """The PBT scheduler over ``lr`` (log scale) and ``grad_clip``, perturbing every ``perturbation_interval``."""
    import random

    random.seed(seed)  # PBT draws donors and mutations from the module-level random state
    return RecoveringPBT(
        time_attr=TIME_ATTR,
        metric=metric,
        mode=mode,
        perturbation_interval=perturbation_interval,
        # Half the population: with 4 members, one slow-to-recover member could otherwise hold the single
        # bottom slot while another stuck member was never compared against it.
        quantile_fraction=0.5,
        resample_probability=0.25,
        hyperparam_mutations={LR: tune.loguniform(*lr_range), GRAD_CLIP: list(CLIP_CHOICES)},
    )


def _owner(checkpoint_dir: str) -> dict[str, Any]:
    path = Path(checkpoint_dir) / OWNER_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def pbt_member(
    config: dict[str, Any],
    base: dict[str, Any],
    metadata_json: str,
    stats: dict[str, Any],
    datasets: dict[str, Any],
    storage_path: str,
    log_dir: str,
) -> None:
    """One PBT member: launch a ``TorchTrainer`` (from the donor's checkpoint after an exploit) and forward reports.

    Args:
        config: The member's Tune config; ``lr`` and ``grad_clip`` override ``base``.
        base: The shared :class:`TrainConfig` dict.
        metadata_json: The dataset's metadata.
        stats: Band statistics of the training split.
        datasets: The materialised Ray datasets, shared by all members.
        storage_path: Where the members' Train runs keep their own checkpoints.
        log_dir: Folder of the members' report logs (one JSON line per report, kept across exploits).
    """
    quiet_member_logs()
    # Tune waits this long for a replaced member's thread to end before giving up on reusing its process; the thread
    # lets its Train run stop by itself (workflows.launch.GRACEFUL_STOP_S). Read by Tune in this process at every reset.
    os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = str(int(GRACEFUL_STOP_S) + 10)
    context = tune.get_context()
    trial_id = context.get_trial_id()
    clip = config.get(GRAD_CLIP)
    cfg = TrainConfig.from_dict({**base, LR: float(config[LR]), GRAD_CLIP: float(clip) if clip else None})
    start = tune.get_checkpoint()
    resume_from, donor = None, {}
    if start is not None:
        resume_from = start.path
        donor = _owner(start.path)
        log.info("member %s starts from %s's checkpoint at epoch %s", trial_id, donor.get("trial"), donor.get("epoch"))
        if donor.get("trial") == trial_id:
            donor = {}  # its own checkpoint: a resumed experiment or a retried failure, not an exploit
    first = {"value": True}
    if donor and "metrics" in donor and int(donor.get("epoch", 0)) >= cfg.epochs:
        # The donor's checkpoint is its last: the member becomes that final state, with nothing left to train. Say so
        # (Tune and the member's log would otherwise keep its pre-exploit record as its final one), from a copy: the
        # checkpoint folder is the donor's.
        metrics = {**donor["metrics"], LR: cfg.lr, GRAD_CLIP: float(cfg.grad_clip or 0.0), "epoch_seconds": 0.0}
        with tempfile.TemporaryDirectory() as copy:
            shutil.copytree(start.path, copy, dirs_exist_ok=True)
            _forward_report(metrics, copy, trial_id, donor, log_dir, first_after_start=True)
        return

    def forward(metrics: dict[str, Any], checkpoint_path: str | None) -> None:
        _forward_report(metrics, checkpoint_path, trial_id, donor, log_dir, first_after_start=first["value"])
        first["value"] = False

    outcome_dir = Path(storage_path)
    run_training(
        cfg,
        PatchMetadata.from_json(metadata_json),
        BandStats.from_dict(stats),
        datasets,
        outcome_dir,
        unique_run_name(f"member-{trial_id}"),
        resume_from=resume_from,
        on_report=forward,
        owner=f"{log_dir}/{trial_id}",
    )


def _forward_report(
    metrics: dict[str, Any],
    checkpoint_path: str | None,
    trial_id: str,
    donor: dict[str, Any],
    log_dir: str,
    first_after_start: bool,
) -> None:
    """Log one report in the member's own file and pass it (with its checkpoint, if any) to Tune."""
    metrics = dict(metrics, trial_id=trial_id, reported_at=time.time())
    metrics["exploited_from"] = donor.get("trial", "") if first_after_start else ""
    metrics["restored_epoch"] = int(donor.get("epoch", 0)) if first_after_start else 0
    # Tune rewrites a member's result history when it restores a donor's checkpoint; this log keeps it all.
    with open(Path(log_dir) / f"{trial_id}{MEMBER_LOG_SUFFIX}", "a") as log_file:
        log_file.write(json.dumps(metrics) + "\n")
    if checkpoint_path and Path(checkpoint_path).is_dir():
        owner = {"trial": trial_id, "epoch": metrics["epoch"], "metrics": metrics}
        (Path(checkpoint_path) / OWNER_FILE).write_text(json.dumps(owner))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_path))
    else:
        tune.report(metrics)


def read_member_logs(log_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Every member's reports, in order, by trial id."""
    return {
        path.name.removesuffix(MEMBER_LOG_SUFFIX): [json.loads(line) for line in path.read_text().splitlines() if line]
        for path in sorted(Path(log_dir).glob(f"*{MEMBER_LOG_SUFFIX}"))
    }


def remove_train_runs(storage_path: str | Path) -> None:
    """Delete the members' own Train run folders (Tune keeps copies of the checkpoints it needs)."""
    shutil.rmtree(storage_path, ignore_errors=True)
