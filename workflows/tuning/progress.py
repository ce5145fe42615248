"""What a person watches while training runs: one line per member report, one per exploit, TensorBoard curves.

Both ``train.py`` (one run) and ``tune.py`` (the PBT population, through :class:`PopulationProgress`, a Tune callback
that runs in the driver) print through here, so the job log in the Ray dashboard reads as a story, and write the
same TensorBoard scalars with the **epoch** as x-axis (Tune's own event files count ``training_iteration``, which
jumps back at every exploit). An exploit is a text entry and an ``exploit`` scalar of 1 at the epoch it happened.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from pathlib import Path
from typing import Any

from ray.tune import Callback

from workflows.training.hyperparams import NAMES, change_text, settings_text

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
# Metrics drawn as TensorBoard scalars, under a group each ("val/acc", "train/loss", ...).
SCALARS = {
    "val_acc": "val/acc",
    "val_macro_f1": "val/macro_f1",
    "val_loss": "val/loss",
    "train_loss": "train/loss",
    "grad_norm_mean": "train/grad_norm_mean",
    "grad_norm_max": "train/grad_norm_max",
    "skipped_steps": "health/skipped_steps",
    "diverged": "health/diverged",
    **{name: f"hyperparameters/{name}" for name in NAMES},
}
EXPLOIT_SCALAR = "pbt/exploit"


def report_line(metrics: dict[str, Any], epochs: int, who: str = "") -> str:
    """One line for one epoch's report: epoch, losses, accuracy, settings, skipped steps, health."""
    flag = "  DIVERGED" if metrics.get("diverged") else ""
    prefix = f"{who}  " if who else ""
    return (
        f"{prefix}epoch {metrics['epoch']:>3}/{epochs}  train_loss {metrics['train_loss']:.4f}  "
        f"val_loss {metrics['val_loss']:.4f}  val_acc {metrics['val_acc']:.4f}  "
        f"{settings_text(metrics)}  "
        f"grad_norm {metrics['grad_norm_mean']:.3g}  skipped {metrics['skipped_steps']}/{metrics['steps']}  "
        f"{metrics['epoch_seconds']:.1f}s{flag}"
    )


def exploit_line(who: str, donor: str, donor_epoch: int, old: dict[str, Any], new: dict[str, Any]) -> str:
    """One line for one exploit: who was replaced by whose checkpoint, and the settings before and after."""
    return f"{who}  EXPLOIT  continues {donor}'s epoch-{donor_epoch} checkpoint; {change_text(old, new)}"


class EpochCurves:
    """TensorBoard scalars of one run (or member) by epoch, written with tensorboardX (Ray Tune depends on it).

    Args:
        folder: Event-file folder of this run; created if missing.
    """

    def __init__(self, folder: str | Path) -> None:
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(logdir=str(folder), flush_secs=5)

    def add(self, metrics: dict[str, Any]) -> None:
        """Write one epoch's scalars (non-finite values are left out: TensorBoard draws them badly)."""
        epoch = int(metrics["epoch"])
        for key, tag in SCALARS.items():
            value = metrics.get(key)
            if value is None:
                continue
            value = float(value)
            if math.isfinite(value):
                self._writer.add_scalar(tag, value, global_step=epoch)

    def mark_exploit(self, epoch: int, text: str) -> None:
        """Mark an exploit at ``epoch``: a text entry and a spike of the exploit scalar."""
        self._writer.add_text("pbt/exploits", text, global_step=epoch)
        self._writer.add_scalar(EXPLOIT_SCALAR, 1.0, global_step=epoch)

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()


def member_name(trial_id: str) -> str:
    """``member 3`` for Tune's trial id ``abc12_00003`` (members are numbered as Tune created them)."""
    suffix = trial_id.rsplit("_", 1)[-1]
    return f"member {int(suffix)}" if suffix.isdigit() else f"member {trial_id}"


class PopulationProgress(Callback):
    """Tune callback in the driver: a line per member report and per exploit, and each member's TensorBoard curves.

    Tune's event loop only hands each result to a queue; a thread of this callback prints and writes the curves, so
    a slow file system never holds up the scheduler (Tune warns when a callback takes over 0.5 s).

    Args:
        epochs: Epochs per member (for ``epoch 3/40``).
        tensorboard_dir: Folder that gets one event-file folder per member (``member-3``).
    """

    def __init__(self, epochs: int, tensorboard_dir: str | Path) -> None:
        self.epochs = epochs
        self.tensorboard_dir = Path(tensorboard_dir)
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment (for --resume); the queue and thread start again there.
        return {"epochs": self.epochs, "tensorboard_dir": self.tensorboard_dir, "_queue": None, "_thread": None}

    def setup(self, **info: Any) -> None:
        """Start the thread that prints and writes (Tune calls this when the experiment starts or resumes)."""
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=self._drain, args=(self._queue,), name="progress", daemon=True)
        self._thread.start()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """Queue the report for the printing thread."""
        if self._queue is None:
            self.setup()
        self._queue.put((str(trial.trial_id), dict(result)))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Say which member failed (Tune logs the error itself)."""
        print(f"{member_name(str(trial.trial_id))}  FAILED (Tune's error is above)", flush=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Print what is still queued and close every member's event file."""
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = self._thread = None

    def _drain(self, reports: queue.Queue) -> None:
        last: dict[str, dict[str, Any]] = {}
        curves: dict[str, EpochCurves] = {}
        while (item := reports.get()) is not None:
            trial_id, result = item
            who = member_name(trial_id)
            if trial_id not in curves:
                curves[trial_id] = EpochCurves(self.tensorboard_dir / who.replace(" ", "-"))
            donor = result.get("exploited_from")
            if donor:
                before = last.get(trial_id, dict.fromkeys(NAMES))
                line = exploit_line(who, member_name(donor), int(result.get("restored_epoch", 0)), before, result)
                print(line, flush=True)
                curves[trial_id].mark_exploit(int(result["epoch"]), line)
            print(report_line(result, self.epochs, who), flush=True)
            curves[trial_id].add(result)
            last[trial_id] = {name: result[name] for name in NAMES}
        for writer in curves.values():
            writer.close()
