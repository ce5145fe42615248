"""Launch one Ray Train run of the ResNet and stream each epoch's report back to the caller as it happens.

Both ``train.py`` (which prints a progress line per epoch, through :func:`run_training`) and a PBT member (a
long-lived :class:`MemberRun`) start their run here. Train V2's ``TorchTrainer.fit()`` runs in a thread; each report
reaches the caller through the run's control folder (:mod:`workflows.training.mailbox`), and a run given an
``owner`` has its placement group recorded (:mod:`workflows.training.placement`).

Stopping. When the caller stops a run early (Tune replaces a PBT member, whose next ``tune.report`` then raises),
the run is asked to stop, not killed: the stop file ends the training loop after the current report, and Train
finishes the run as usual. Killing the run instead (removing its placement group) made Ray count every killed worker
and its task as failed on the dashboard and print Train's shutdown traceback into the job log. Only a run that does
not stop within :data:`GRACEFUL_STOP_S` is killed. A process that exits with runs under way asks them to stop and
gives them that long too (an ``atexit`` hook).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.data import ExecutionOptions
from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

from data.format import PatchMetadata
from data.pipeline import BandStats
from workflows.training.config import TrainConfig, ranking_score
from workflows.training.loop import train_func_per_worker
from workflows.training.mailbox import ForwardReports, Mailbox, Report, control_folder
from workflows.training.placement import forget_placement_group, release_placement_group
from workflows.training.ray_private import TorchTrainerWithoutCleaner, apply_train_settings

log = logging.getLogger(__name__)

# How long a run asked to stop may take to end by itself (an epoch of the default dataset takes 0.5-2 s) before its
# placement group is removed. Tune waits for the member's thread longer than this (see workflows/tuning/pbt.py).
GRACEFUL_STOP_S = 20.0
POLL_S = 0.05
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


@dataclass(frozen=True)
class RunInputs:
    """What every run needs.

    Attributes:
        config: The run's hyperparameters.
        metadata: The dataset's metadata (shape, bands, classes).
        stats: Band statistics of the training split (stored in every checkpoint).
        datasets: Ray datasets ``train`` and ``val`` (:func:`workflows.jobs.inputs.build_inputs` makes them).
        storage_path: Folder (or URI) under which Ray keeps this run's checkpoints.
        name: Run name; it must be new (see :func:`unique_run_name`).
    """

    config: TrainConfig
    metadata: PatchMetadata
    stats: BandStats
    datasets: dict[str, Any]
    storage_path: str | os.PathLike
    name: str

    @property
    def storage(self) -> str:
        """The storage path as Train needs it: a URI as given, a local folder absolute (Train workers change folder)."""
        storage = str(self.storage_path)
        return storage if "://" in storage else str(Path(storage).resolve())


def unique_run_name(prefix: str) -> str:
    """A run name no earlier run used: Train silently resumes a run whose name and storage path it has seen."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class _Run:
    """A started run: its name, control folder (mailbox), owner, ``fit()`` thread and outcome."""

    name: str
    mailbox: Mailbox
    owner: str | None
    thread: threading.Thread | None = None
    outcome: dict[str, Any] = field(default_factory=dict)
    reports: int = 0
    # Whether Train's error has reached a caller (raised by close()), so end() does not report it a second time.
    error_raised: bool = False

    @property
    def control(self) -> Path:
        """The run's control folder (commands, reports, the stop file)."""
        return self.mailbox.folder

    def next_report(self) -> Report | None:
        """Wait for the next report (every worker's metrics, checkpoint folder); None when the run ended first."""
        while True:
            report = self.mailbox.take(self.reports + 1)
            if report is not None:
                self.reports += 1
                return report
            if not self.thread.is_alive():
                return None
            time.sleep(POLL_S)

    def wait_until_stopped(self, deadline: float) -> None:
        """Ask the run to stop after its current epoch; acknowledge its reports unread until it ends or ``deadline``.

        The controller waits for every report's acknowledgement, so a run being stopped must not wait for its caller.
        """
        with contextlib.suppress(OSError):
            self.mailbox.ask_to_stop()
        while self.thread.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                self.mailbox.ack_all()
            self.thread.join(POLL_S)

    def stop(self) -> bool:
        """Ask the run to stop and let it end; only a run that does not end in time loses its placement group.

        Returns:
            Whether the run ended by itself within :data:`GRACEFUL_STOP_S`.
        """
        started = time.monotonic()
        self.wait_until_stopped(started + GRACEFUL_STOP_S)
        if self.thread.is_alive():
            log.warning("a stopped run did not end within %.0f s; removing its workers", GRACEFUL_STOP_S)
            if self.owner is not None:
                release_placement_group(self.owner)
            return False
        log.debug("%s ended by itself %.1f s after it was asked to stop", self.thread.name, time.monotonic() - started)
        return True

    def end(self) -> None:
        """Stop the run (see :meth:`stop`) and forget it; an error Train ended it with is logged, not raised.

        The caller is on its way out (its own exception is propagating, or Tune is cleaning a member up), and an
        error raised here would take the place of the caller's. A run that ended by itself after the stop request
        and still failed is a genuine failure: logged at ERROR with Train's traceback. A run whose workers had to be
        removed fails because of that removal, which :meth:`stop` has warned about: logged at INFO.
        """
        ended_by_itself = False
        try:
            ended_by_itself = self.stop()
        finally:
            self.forget()
        error = self.outcome.get("error")
        if error is None or self.error_raised:
            return
        if ended_by_itself:
            log.error("training run %s failed: %s", self.name, error, exc_info=error)
        else:
            log.info("training run %s ended with %r after its workers were removed", self.name, error)

    def forget(self) -> None:
        """Remove the run's control folder and, once ``fit()`` returned, its placement-group record."""
        _RUNNING.pop(self.control, None)
        shutil.rmtree(self.control, ignore_errors=True)
        if self.owner is not None and not self.thread.is_alive():
            forget_placement_group(self.owner)  # the run ended and Train removed its placement group

    def close(self) -> Any:
        """Forget the run once ``fit()`` returned (see :meth:`forget`); returns Train's result or raises its error."""
        self.forget()
        if "error" in self.outcome:
            self.error_raised = True
            raise self.outcome["error"]
        return self.outcome.get("result")


# The runs this process has under way, by control folder.
_RUNNING: dict[Path, _Run] = {}


@atexit.register
def _stop_runs_at_exit() -> None:
    """Ask this process's runs to stop, and give them time to, before the process ends.

    Tune ends a replaced PBT member's process right after telling the member to stop (its cleanup does not wait
    for the member's run), and Ray sends the process SIGTERM, which Ray turns into ``SystemExit``: the
    interpreter then runs this. A run whose process died mid-epoch would count as a failed task and leave its
    placement group behind.
    """
    deadline = time.monotonic() + GRACEFUL_STOP_S
    for run in list(_RUNNING.values()):
        run.wait_until_stopped(deadline)


def _build_trainer(
    inputs: RunInputs,
    mailbox: Mailbox,
    *,
    resume_from: str | None,
    max_failures: int,
    commanded: bool,
    owner: str | None,
) -> TorchTrainerWithoutCleaner:
    """The run's ``TorchTrainer`` (see :func:`run_training` for the arguments)."""
    cfg = inputs.config
    return TorchTrainerWithoutCleaner(
        train_func_per_worker,
        train_loop_config={
            # The frozen dataclasses themselves: Ray pickles them, so nothing is converted on the way to the workers.
            "train": cfg,
            "metadata": inputs.metadata,
            "band_stats": inputs.stats,
            "resume_from": resume_from,
            "stop_file": str(mailbox.stop_file),
            "control": str(mailbox.folder) if commanded else None,
            "owner": owner,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.gpu else {})},
        ),
        datasets=inputs.datasets,
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
            name=inputs.name,
            storage_path=inputs.storage,
            # Train retries a worker group that cannot get its CPUs forever by default; give up instead.
            failure_config=FailureConfig(max_failures=max_failures, controller_failure_limit=CONTROLLER_RETRIES),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints,
                checkpoint_score_attribute=cfg.metric,
                checkpoint_score_order=cfg.mode,
            ),
            callbacks=[ForwardReports(mailbox)],
            # Ray Train logs every report at INFO; our own line per epoch says it more briefly.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def _start_run(
    inputs: RunInputs,
    *,
    resume_from: str | None = None,
    max_failures: int = 0,
    commanded: bool = False,
    owner: str | None = None,
) -> _Run:
    """Build the run's ``TorchTrainer`` and start ``fit()`` in a thread (see :func:`run_training`)."""
    if owner is not None:
        release_placement_group(owner)
    apply_train_settings()
    mailbox = Mailbox(control_folder(inputs.storage, inputs.name))
    trainer = _build_trainer(
        inputs, mailbox, resume_from=resume_from, max_failures=max_failures, commanded=commanded, owner=owner
    )
    run = _Run(name=inputs.name, mailbox=mailbox, owner=owner)

    def fit() -> None:
        try:
            run.outcome["result"] = trainer.fit()
        except BaseException as err:  # noqa: BLE001 - raised in the calling thread by close(), or logged by end()
            run.outcome["error"] = err

    run.thread = threading.Thread(target=fit, name=f"fit-{inputs.name}", daemon=True)
    run.thread.start()
    _RUNNING[run.control] = run
    return run


class MemberRun:
    """A long-lived Ray Train run that trains one epoch per :meth:`step` (a PBT member's, for the whole experiment).

    The workers wait between epochs for the next command, written into the run's control folder: optionally load a
    checkpoint (an exploit: the donor's model, optimizer and epoch), set the mutable hyperparameters, train one
    epoch and report it with a checkpoint. An exploit therefore costs a checkpoint load, not a new worker group.

    Args:
        inputs: The run's starting config, dataset, storage and new name.
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
        self.run.mailbox.command(self.commands, {"load": load, "hyper": hyper, "fresh": fresh})
        report = self.run.next_report()
        if report is None:
            self.run.close()  # raises Train's error, if any
            raise RuntimeError(
                f"{self.run.name}: the training run ended before it reported epoch command {self.commands}"
            )
        self.run.mailbox.ack(self.run.reports)
        return report.per_worker[0], report.checkpoint

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
        cfg: The run's hyperparameters (``RunInputs.config``).
        metadata: See :class:`RunInputs`, which these six arguments make up.
        stats: See :class:`RunInputs`.
        datasets: See :class:`RunInputs`.
        storage_path: See :class:`RunInputs`.
        name: See :class:`RunInputs` (a new name: :func:`unique_run_name`).
        resume_from: Checkpoint folder to start from (its model, optimizer and epoch; ``cfg``'s mutable values).
        max_failures: Worker-group restarts from the latest checkpoint that Ray may make after a failure.
        on_report: Called in this thread with each epoch's metrics and checkpoint folder (None on epochs without
            one); the checkpoint stays on storage at least until the call returns.
        owner: A name that outlives this process. The run first removes a placement group an earlier run of the
            same owner left behind, and removes its own if it does not stop in time after ``on_report`` raised.

    Returns:
        The outcome, with the best checkpoint by ``cfg.metric`` (``cfg.mode``).
    """
    inputs = RunInputs(cfg, metadata, stats, datasets, storage_path, name)
    run = _start_run(inputs, resume_from=resume_from, max_failures=max_failures, owner=owner)
    history: list[dict[str, Any]] = []
    worker_metrics: list[list[dict[str, Any]]] = []
    try:
        while (report := run.next_report()) is not None:
            try:
                worker_metrics.append(report.per_worker)
                history.append(report.per_worker[0])
                if on_report is not None:
                    on_report(report.per_worker[0], report.checkpoint)
            except BaseException:
                run.mailbox.ask_to_stop()  # before the ack, which lets the workers go on and read it
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
