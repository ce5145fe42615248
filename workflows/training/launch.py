"""Launch one Ray Train run of the ResNet and stream each epoch's report back to the caller as it happens.

Both ``train.py`` (which prints a progress line per epoch) and the PBT trial function (which forwards every report
and its checkpoint to Tune) go through :func:`run_training`. Train V2's ``TorchTrainer.fit()`` runs in a thread; a
``ray.train.UserCallback`` on the Train controller hands each report over through a file (:class:`_Mailbox`) and
waits until the caller has handled it, so a checkpoint is never deleted by Ray's retention before the caller has
copied it.

Stopping. When the caller stops a run early (Tune replaces a PBT member, whose next ``tune.report`` then raises),
the run is asked to stop, not killed: a stop file in the run's control folder, which rank 0 reads after every report
and all workers agree on, ends the training loop, and Train finishes the run as usual. Killing the run instead
(removing its placement group) made Ray count every killed worker and its task as failed on the dashboard and print
Train's shutdown traceback into the job log. Only a run that does not stop within :data:`GRACEFUL_STOP_S` is killed.

Placement groups. Train removes a run's placement group when the run ends; when the process that called ``fit()``
dies first, Train's controller dies with it, and Ray itself removes the group only when the whole job ends. Train
ships a detached cleaner actor for that case, which asks the dashboard's state API once a second whether the
controller lives. Measured here, it cost one more Python process per run and 12 s of every run's shutdown (the time
it takes to stop), and under load its thread died on a timed-out query (RpcError), after which a dead member's group
is never removed and the member's next run waits for CPUs without end (the likely cause of a PBT test that hung in
CI). We run without it (``workflows.training.ray_private.TorchTrainerWithoutCleaner``) and do the job ourselves where it
arises: a run
given an ``owner`` (a PBT member) records its placement group in Ray's key-value store, removes it itself when the
caller stops it, and the owner's next run removes any group a dead predecessor left behind. Runs without an owner
(``train.py``) live as long as their driver, whose exit ends the job.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.data import ExecutionOptions
from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

from data.format import PatchMetadata
from data.pipeline import BandStats
from workflows.training.config import TrainConfig, ranking_score
from workflows.training.loop import PLACEMENT_GROUP_KEY, STOP_NAME, command_name, train_func_per_worker
from workflows.training.ray_private import (
    TorchTrainerWithoutCleaner,
    apply_train_settings,
    forget_placement_group,
    record_placement_group,
    release_placement_group,
)

log = logging.getLogger(__name__)

# How long the controller waits for the caller to handle one report before giving up on the hand-off.
HANDOFF_TIMEOUT_S = 600.0
# How long a run asked to stop may take to end by itself (an epoch of the default dataset takes 0.5-2 s) before its
# placement group is removed. Tune waits for the member's thread longer than this (see workflows/tuning/pbt.py).
GRACEFUL_STOP_S = 20.0
# Next to the folder where Train keeps its runs: one folder per run for the report hand-off and the stop file, so
# nothing is left in the system temp folder, and nothing is written into folders Train owns.
CONTROL_DIR = ".control"
POLL_S = 0.05
ACK_POLL_S = 0.01
# Worker-group start-ups that may time out (60 s each by default) before the run fails instead of waiting on.
CONTROLLER_RETRIES = 2
OnReport = Callable[[dict[str, Any], str | None], None]


@dataclass
class TrainingOutcome:
    """What a finished run leaves behind.

    Attributes:
        result: Ray Train's result object.
        best_checkpoint: Folder of the best checkpoint by the config's ``metric``, or None.
        best_metrics: The metrics reported with that checkpoint.
        history: Every epoch's metrics (rank 0's), in order.
        worker_metrics: Every epoch's metrics as each worker reported them (index = rank).
    """

    result: Any
    best_checkpoint: str | None
    best_metrics: dict[str, Any] | None
    history: list[dict[str, Any]]
    worker_metrics: list[list[dict[str, Any]]]


def _write_json(path: Path, body: Any) -> None:
    """Write ``body`` as JSON so that a reader polling for ``path`` never sees half a file."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(body, default=lambda value: value.item()))  # numpy scalars
    os.replace(partial, path)


class _Mailbox:
    """Numbered report and acknowledgement files in a folder that the Train controller and the caller share.

    Train V2 places its controller on the node of the process that calls ``fit()``, so both sides see the same local
    folder. Files replaced two queue actors, which cost two Python processes on every run start.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def _path(self, kind: str, number: int) -> Path:
        return Path(self.folder) / f"{kind}-{number:06d}.json"

    def post(self, number: int, body: Any) -> None:
        """Write report ``number`` (atomically: the reader never sees half a file)."""
        _write_json(self._path("report", number), body)

    def take(self, number: int) -> Any | None:
        """Report ``number`` if it has been posted, else None."""
        path = self._path("report", number)
        return json.loads(path.read_text()) if path.exists() else None

    def ack(self, number: int) -> None:
        """Tell the controller that report ``number`` has been handled."""
        self._path("ack", number).touch()

    def ack_all(self) -> None:
        """Acknowledge every report posted so far, unread (a run being stopped must not wait for its caller)."""
        for report in Path(self.folder).glob("report-*.json"):
            report.with_name(report.name.replace("report-", "ack-", 1)).touch()

    def wait_ack(self, number: int, timeout: float) -> bool:
        """Wait until report ``number`` has been handled; False after ``timeout`` seconds."""
        path, deadline = self._path("ack", number), time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                return False
            time.sleep(ACK_POLL_S)
        return True


class _ForwardReports(ray.train.UserCallback):
    """Runs on the Train controller: passes every worker's metrics and the checkpoint path on, then waits."""

    def __init__(self, mailbox: _Mailbox) -> None:
        self.mailbox = mailbox
        self.count = 0

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.count += 1
        self.mailbox.post(self.count, [[dict(m) for m in metrics], checkpoint.path if checkpoint is not None else None])
        if not self.mailbox.wait_ack(self.count, HANDOFF_TIMEOUT_S):
            log.warning("the caller did not handle a report within %.0f s; continuing", HANDOFF_TIMEOUT_S)


# The runs this process has under way: stop file, mailbox and the thread that runs fit().
_RUNNING: dict[Path, tuple[_Mailbox, threading.Thread]] = {}


@atexit.register
def _stop_runs_at_exit() -> None:
    """Ask this process's runs to stop, and give them time to, before the process ends.

    Tune ends a replaced PBT member's process right after telling the member to stop (a function trainable's
    cleanup does not wait for it), and Ray sends the process SIGTERM, which Ray turns into ``SystemExit``: the
    interpreter then runs this. A run whose process died mid-epoch would count as a failed task and leave its
    placement group behind.
    """
    deadline = time.monotonic() + GRACEFUL_STOP_S
    for stop_file, (mailbox, thread) in list(_RUNNING.items()):
        _wait_until_stopped(stop_file, mailbox, thread, deadline)


def _control_folder(storage: str, name: str) -> Path:
    """A new, empty control folder for run ``name``: beside Train's runs when local, else in the temp folder."""
    if "://" in storage:
        return Path(tempfile.mkdtemp(prefix=f"{name}-control-"))
    folder = Path(storage).parent / CONTROL_DIR / name
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def _wait_until_stopped(stop_file: Path, mailbox: _Mailbox, thread: threading.Thread, deadline: float) -> None:
    """Ask a run to stop after its current epoch, then acknowledge its reports unread until it ends or ``deadline``.

    The controller waits for every report's acknowledgement, so a run being stopped must not wait for its caller.
    """
    with contextlib.suppress(OSError):
        stop_file.touch()
    while thread.is_alive() and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            mailbox.ack_all()
        thread.join(POLL_S)


def _stop_gracefully(stop_file: Path, mailbox: _Mailbox, thread: threading.Thread) -> bool:
    """Ask a run to stop and wait for it to end; False when it did not end within :data:`GRACEFUL_STOP_S`."""
    started = time.monotonic()
    _wait_until_stopped(stop_file, mailbox, thread, started + GRACEFUL_STOP_S)
    if thread.is_alive():
        log.warning("a stopped run did not end within %.0f s; removing its workers", GRACEFUL_STOP_S)
        return False
    log.debug("%s ended by itself %.1f s after it was asked to stop", thread.name, time.monotonic() - started)
    return True


def unique_run_name(prefix: str) -> str:
    """A run name no earlier run used: Train silently resumes a run whose name and storage path it has seen."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# What every run needs: config, dataset metadata, band statistics, Ray datasets, storage path and run name.
RunInputs = tuple[TrainConfig, PatchMetadata, BandStats, dict[str, Any], "str | os.PathLike", str]


def _start_run(
    inputs: RunInputs,
    *,
    resume_from: str | None = None,
    max_failures: int = 0,
    commanded: bool = False,
    owner: str | None = None,
) -> _Run:
    """Build the run's ``TorchTrainer`` and start ``fit()`` in a thread (see :func:`run_training`)."""
    cfg, metadata, stats, datasets, storage_path, name = inputs
    if owner is not None:
        release_placement_group(owner)
    apply_train_settings()
    storage = str(storage_path)
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    control = _control_folder(storage, name)
    mailbox = _Mailbox(str(control))
    trainer = TorchTrainerWithoutCleaner(
        train_func_per_worker,
        train_loop_config={
            # The frozen dataclasses themselves: Ray pickles them, so nothing is converted on the way to the workers.
            "train": cfg,
            "metadata": metadata,
            "band_stats": stats,
            "resume_from": resume_from,
            "stop_file": str(control / STOP_NAME),
            "control": str(control) if commanded else None,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.gpu else {})},
        ),
        datasets=datasets,
        # Validation is never split: streaming_split(equal=True) would drop the remainder rows. Nor is training data
        # for a single worker: a split starts a coordinator actor, one more Python process on every run start.
        dataset_config=DataConfig(
            datasets_to_split=["train"] if cfg.num_workers > 1 else [],
            # Ray Data's defaults, given: without them Train 2.60 copies the DataContext's options into new
            # ExecutionOptions, whose deprecated exclude_resources setter then printed a RayDeprecationWarning in
            # every run's output (from each TrainController).
            execution_options=ExecutionOptions(),
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            # Train retries a worker group that cannot get its CPUs forever by default; give up instead.
            failure_config=FailureConfig(max_failures=max_failures, controller_failure_limit=CONTROLLER_RETRIES),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints,
                checkpoint_score_attribute=cfg.metric,
                checkpoint_score_order=cfg.mode,
            ),
            callbacks=[_ForwardReports(mailbox)],
            # Ray Train logs every report at INFO; our own line per epoch says it more briefly.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    run = _Run(name=name, control=control, mailbox=mailbox, owner=owner)

    def fit() -> None:
        try:
            run.outcome["result"] = trainer.fit()
        except BaseException as err:  # noqa: BLE001 - re-raised in the calling thread
            run.outcome["error"] = err

    run.thread = threading.Thread(target=fit, name=f"fit-{name}", daemon=True)
    run.thread.start()
    _RUNNING[control / STOP_NAME] = (mailbox, run.thread)
    return run


@dataclass
class _Run:
    """A started run: its control folder, report mailbox, ``fit()`` thread and outcome."""

    name: str
    control: Path
    mailbox: _Mailbox
    owner: str | None
    thread: threading.Thread | None = None
    outcome: dict[str, Any] = field(default_factory=dict)
    reports: int = 0

    def next_report(self) -> tuple[list[dict[str, Any]], str | None] | None:
        """Wait for the next report (every worker's metrics, checkpoint folder); None when the run ended first."""
        while True:
            posted = self.mailbox.take(self.reports + 1)
            if posted is not None:
                self.reports += 1
                per_worker, checkpoint_path = posted
                group = [m.pop(PLACEMENT_GROUP_KEY, None) for m in per_worker][0]
                if group and self.owner is not None:
                    record_placement_group(self.owner, group)
                return per_worker, checkpoint_path
            if not self.thread.is_alive():
                return None
            time.sleep(POLL_S)

    def stop(self) -> None:
        """Ask the run to stop and let it end; only a run that does not end in time loses its placement group."""
        if not _stop_gracefully(self.control / STOP_NAME, self.mailbox, self.thread) and self.owner is not None:
            release_placement_group(self.owner)

    def end(self) -> None:
        """Stop the run (see :meth:`stop`) and forget it, whatever state it ended in."""
        try:
            self.stop()
        finally:
            with contextlib.suppress(BaseException):
                self.close()

    def close(self) -> Any:
        """Forget the run's control folder once ``fit()`` returned; returns Train's result or raises its error."""
        _RUNNING.pop(self.control / STOP_NAME, None)
        shutil.rmtree(self.control, ignore_errors=True)
        if self.owner is not None and not self.thread.is_alive():
            forget_placement_group(self.owner)  # the run ended and Train removed its placement group
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome.get("result")


class MemberRun:
    """A long-lived Ray Train run that trains one epoch per :meth:`step` (a PBT member's, for the whole experiment).

    The workers wait between epochs for the next command, written into the run's control folder: optionally load a
    checkpoint (an exploit: the donor's model, optimizer and epoch), set the mutable hyperparameters, train one
    epoch and report it with a checkpoint. An exploit therefore costs a checkpoint load, not a new worker group.

    Args:
        inputs: The run's starting config, the dataset's metadata, band statistics, Ray datasets ``train`` and
            ``val``, the folder under which Ray keeps its checkpoints and a new run name (as for :func:`run_training`).
        owner: A name that outlives this process (see :func:`run_training`).
        max_failures: Worker-group restarts from the latest checkpoint that Ray may make after a failure.
    """

    def __init__(self, inputs: RunInputs, *, owner: str | None = None, max_failures: int = 0) -> None:
        self.commands = 0
        self.run = _start_run(inputs, max_failures=max_failures, commanded=True, owner=owner)

    @property
    def control(self) -> Path:
        """The run's control folder (commands, reports, the stop file)."""
        return self.run.control

    def step(
        self, hyper: dict[str, Any], load: str | None = None, fresh: bool = False
    ) -> tuple[dict[str, Any], str | None]:
        """Train one epoch with ``hyper``; returns rank 0's metrics and the epoch's checkpoint folder.

        Args:
            hyper: The mutable hyperparameters, as :class:`TrainConfig` fields.
            load: A checkpoint folder to load first (model, optimizer, epoch).
            fresh: Go back to the freshly seeded state (epoch 0) first.

        Raises:
            RuntimeError: The run ended (Train gave up after failures) before it reported.
        """
        self.commands += 1
        _write_json(self.control / command_name(self.commands), {"load": load, "hyper": hyper, "fresh": fresh})
        posted = self.run.next_report()
        if posted is None:
            self.run.close()  # raises Train's error, if any
            raise RuntimeError(
                f"{self.run.name}: the training run ended before it reported epoch command {self.commands}"
            )
        self.run.mailbox.ack(self.run.reports)
        per_worker, checkpoint_path = posted
        return per_worker[0], checkpoint_path

    def stop(self) -> None:
        """End the run after its current epoch (it waits for a command, so at once) and free its workers."""
        self.run.end()


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
    owner: str | None = None,
) -> TrainingOutcome:
    """Train with ``cfg.num_workers`` Ray Train workers and call ``on_report`` for every epoch.

    Args:
        cfg: The run's hyperparameters.
        metadata: The dataset's metadata (shape, bands, classes).
        stats: Band statistics of the training split (stored in every checkpoint).
        datasets: Ray datasets ``train`` and ``val`` from :func:`data.pipeline.build_ray_datasets`.
        storage_path: Folder (or URI) under which Ray keeps this run's checkpoints.
        name: Run name; it must be new (see :func:`unique_run_name`).
        resume_from: Checkpoint folder to start from (its model, optimizer and epoch; ``cfg``'s mutable values).
        max_failures: Worker-group restarts from the latest checkpoint that Ray may make after a failure.
        on_report: Called in this thread with each epoch's metrics and checkpoint folder (None on epochs without
            one); the checkpoint stays on storage at least until the call returns.
        owner: A name that outlives this process. The run first removes a placement group an earlier run of the
            same owner left behind, and removes its own if ``on_report`` raises.

    Returns:
        The outcome, with the best checkpoint by ``cfg.metric`` (``cfg.mode``).
    """
    inputs = (cfg, metadata, stats, datasets, storage_path, name)
    run = _start_run(inputs, resume_from=resume_from, max_failures=max_failures, owner=owner)
    history: list[dict[str, Any]] = []
    worker_metrics: list[list[dict[str, Any]]] = []
    try:
        while (posted := run.next_report()) is not None:
            per_worker, checkpoint_path = posted
            try:
                worker_metrics.append(per_worker)
                history.append(per_worker[0])
                if on_report is not None:
                    on_report(per_worker[0], checkpoint_path)
            except BaseException:
                (run.control / STOP_NAME).touch()  # before the ack, which lets the workers go on and read it
                raise
            finally:
                run.mailbox.ack(run.reports)
        run.thread.join()
    except BaseException:
        # Stopped by the caller: ask the run to stop and let it end (see the module docstring).
        run.end()
        raise
    result = run.close()
    best_checkpoint, best_metrics = None, None
    if result.best_checkpoints:
        checkpoint, best_metrics = max(
            result.best_checkpoints, key=lambda pair: ranking_score(pair[1], cfg.metric, cfg.mode)
        )
        best_checkpoint = checkpoint.path
    return TrainingOutcome(result, best_checkpoint, best_metrics, history, worker_metrics)
