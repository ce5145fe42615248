"""Launch one Ray Train run of the ResNet and stream each epoch's report back to the caller as it happens.

Both ``train.py`` (which prints a progress line per epoch) and the PBT trial function (which forwards every report
and its checkpoint to Tune) go through :func:`run_training`. Train V2's ``TorchTrainer.fit()`` runs in a thread; a
``ray.train.UserCallback`` on the Train controller hands each report through a small queue actor, and waits until
the caller has handled it, so a checkpoint is never deleted by Ray's retention before the caller has copied it.
"""

from __future__ import annotations

import logging
import os
import queue as stdlib_queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.util.queue import Empty, Queue

from data.format import PatchMetadata
from data.pipeline import BandStats
from workflows.config import TrainConfig
from workflows.loop import train_func_per_worker

log = logging.getLogger(__name__)

# How long the controller waits for the caller to handle one report before giving up on the hand-off.
HANDOFF_TIMEOUT_S = 600.0
POLL_S = 0.5

OnReport = Callable[[dict[str, Any], str | None], None]


@dataclass
class TrainingOutcome:
    """What a finished run leaves behind.

    Attributes:
        result: Ray Train's result object.
        best_checkpoint: Folder of the checkpoint with the highest ``val_acc``, or None.
        best_metrics: The metrics reported with that checkpoint.
        history: Every epoch's metrics (rank 0's), in order.
        worker_metrics: Every epoch's metrics as each worker reported them (index = rank).
    """

    result: Any
    best_checkpoint: str | None
    best_metrics: dict[str, Any] | None
    history: list[dict[str, Any]]
    worker_metrics: list[list[dict[str, Any]]]


class _ForwardReports(ray.train.UserCallback):
    """Runs on the Train controller: passes rank 0's metrics and the checkpoint path to the caller, then waits."""

    def __init__(self, reports: Queue, acks: Queue) -> None:
        self.reports = reports
        self.acks = acks

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.reports.put(([dict(m) for m in metrics], checkpoint.path if checkpoint is not None else None))
        try:
            self.acks.get(timeout=HANDOFF_TIMEOUT_S)
        except Empty:
            log.warning("the caller did not handle a report within %.0f s; continuing", HANDOFF_TIMEOUT_S)


def unique_run_name(prefix: str) -> str:
    """A run name no earlier run used: Train silently resumes a run whose name and storage path it has seen."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def run_training(
    cfg: TrainConfig,
    metadata: PatchMetadata,
    stats: BandStats,
    datasets: dict[str, Any],
    storage_path: str | os.PathLike,
    name: str,
    *,
    resume_from: str | None = None,
    max_failures: int = 0,
    on_report: OnReport | None = None,
) -> TrainingOutcome:
    """Train with ``cfg.num_workers`` Ray Train workers and call ``on_report`` for every epoch.

    Args:
        cfg: The run's hyperparameters.
        metadata: The dataset's metadata (shape, bands, classes).
        stats: Band statistics of the training split (stored in every checkpoint).
        datasets: Ray datasets ``train`` and ``val`` from :func:`data.pipeline.build_ray_datasets`.
        storage_path: Folder (or URI) under which Ray keeps this run's checkpoints.
        name: Run name; it must be new (see :func:`unique_run_name`).
        resume_from: Checkpoint folder to start from (its model, optimizer and epoch; ``cfg``'s lr and grad_clip).
        max_failures: Worker-group restarts from the latest checkpoint that Ray may make after a failure.
        on_report: Called in this thread with each epoch's metrics and checkpoint folder (None on epochs without
            one); the checkpoint stays on storage at least until the call returns.

    Returns:
        The outcome, with the best checkpoint by validation accuracy.
    """
    storage = str(storage_path)
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    reports = Queue(actor_options={"num_cpus": 0})
    acks = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        train_func_per_worker,
        train_loop_config={
            "train": cfg.to_dict(),
            "metadata": metadata.to_json(),
            "band_stats": stats.to_dict(),
            "resume_from": resume_from,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker},
        ),
        datasets=datasets,
        # Validation is never split: streaming_split(equal=True) would drop the remainder rows.
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints,
                checkpoint_score_attribute="val_acc",
                checkpoint_score_order="max",
            ),
            callbacks=[_ForwardReports(reports, acks)],
            # Ray Train logs every report at INFO; our own line per epoch says it more briefly.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    history: list[dict[str, Any]] = []
    worker_metrics: list[list[dict[str, Any]]] = []
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # noqa: BLE001 - re-raised in the calling thread
            outcome["error"] = err

    thread = threading.Thread(target=fit, name=f"fit-{name}", daemon=True)
    thread.start()
    try:
        while True:
            try:
                per_worker, checkpoint_path = reports.get(timeout=POLL_S)
            except (Empty, stdlib_queue.Empty):
                if not thread.is_alive():
                    break
                continue
            try:
                worker_metrics.append(per_worker)
                history.append(per_worker[0])
                if on_report is not None:
                    on_report(per_worker[0], checkpoint_path)
            finally:
                acks.put(True)
        thread.join()
    finally:
        for q in (reports, acks):
            ray.kill(q.actor)
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    best_checkpoint, best_metrics = None, None
    if result.best_checkpoints:
        checkpoint, best_metrics = max(result.best_checkpoints, key=lambda pair: pair[1].get("val_acc", 0.0))
        best_checkpoint = checkpoint.path
    return TrainingOutcome(result, best_checkpoint, best_metrics, history, worker_metrics)
