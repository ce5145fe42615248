"""A run's control folder: the files through which its caller, Train's controller and rank 0 talk.

Train V2 places its controller on the node of the process that calls ``fit()``, so the caller and the controller
see the same local folder. Three kinds of file live there, each written atomically (a reader never sees half a file):

- **Reports** (``report-N.json``, from the controller's :class:`ForwardReports` callback): every worker's metrics
  and the checkpoint folder of report N. The controller then waits for ``ack-N`` from the caller, so a checkpoint is
  never deleted by Ray's retention before the caller has copied it. Files replaced two queue actors, which cost two
  Python processes on every run start.
- **Commands** (``command-N.json``, from a long-lived member's caller): what rank 0 does before epoch N (see
  ``workflows.training.loop.next_command``).
- **The stop file** (``stop``): its appearance ends the run after the current report; rank 0 reads it and every
  worker agrees on the answer.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import ray.train

log = logging.getLogger(__name__)

# How long the controller waits for the caller to handle one report before giving up on the hand-off.
HANDOFF_TIMEOUT_S = 600.0
# Next to the folder where Train keeps its runs: one folder per run, so nothing is left in the system temp folder,
# and nothing is written into folders Train owns.
CONTROL_DIR = ".control"
STOP_NAME = "stop"
ACK_POLL_S = 0.01
# A long-lived member's run waits for its next command between epochs; rank 0 polls this often.
COMMAND_POLL_S = 0.01


def write_json(path: Path, body: Any) -> None:
    """Write ``body`` as JSON so that a reader polling for ``path`` never sees half a file."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(body, default=lambda value: value.item()))  # numpy scalars
    os.replace(partial, path)


def control_folder(storage: str, name: str) -> Path:
    """A new, empty control folder for run ``name``: beside Train's runs when local, else in the temp folder."""
    if "://" in storage:
        return Path(tempfile.mkdtemp(prefix=f"{name}-control-"))
    folder = Path(storage).parent / CONTROL_DIR / name
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def command_name(number: int) -> str:
    """File name of command ``number`` in a run's control folder."""
    return f"command-{number:06d}.json"


def wait_for_command(control: Path, number: int) -> dict[str, Any]:
    """Poll ``control`` until command ``number`` (or the stop file) appears."""
    path = control / command_name(number)
    while True:
        if (control / STOP_NAME).exists():
            return {"stop": True}
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(COMMAND_POLL_S)


class Report(NamedTuple):
    """One report as the controller posted it."""

    per_worker: list[dict[str, Any]]  # every worker's metrics, by rank
    checkpoint: str | None  # the report's checkpoint folder, if it has one


class Mailbox:
    """The files of one run's control folder (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @property
    def stop_file(self) -> Path:
        """The file whose appearance ends the run after its current report."""
        return self.folder / STOP_NAME

    def _path(self, kind: str, number: int) -> Path:
        return self.folder / f"{kind}-{number:06d}.json"

    def post(self, number: int, report: Report) -> None:
        """Write report ``number``."""
        write_json(self._path("report", number), {"metrics": report.per_worker, "checkpoint": report.checkpoint})

    def take(self, number: int) -> Report | None:
        """Report ``number`` if it has been posted, else None."""
        path = self._path("report", number)
        if not path.exists():
            return None
        body = json.loads(path.read_text())
        return Report(body["metrics"], body["checkpoint"])

    def ack(self, number: int) -> None:
        """Tell the controller that report ``number`` has been handled."""
        self._path("ack", number).touch()

    def ack_all(self) -> None:
        """Acknowledge every report posted so far, unread (a run being stopped must not wait for its caller)."""
        for report in self.folder.glob("report-*.json"):
            report.with_name(report.name.replace("report-", "ack-", 1)).touch()

    def wait_ack(self, number: int, timeout: float) -> bool:
        """Wait until report ``number`` has been handled; False after ``timeout`` seconds."""
        path, deadline = self._path("ack", number), time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                return False
            time.sleep(ACK_POLL_S)
        return True

    def command(self, number: int, body: dict[str, Any]) -> None:
        """Write command ``number`` for rank 0."""
        write_json(self.folder / command_name(number), body)

    def ask_to_stop(self) -> None:
        """Create the stop file (the run ends after its current report)."""
        self.stop_file.touch()


class ForwardReports(ray.train.UserCallback):
    """Runs on the Train controller: posts every worker's metrics and the checkpoint path, then waits for the ack."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        self.count = 0

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        """Post report number ``count`` and block Train's controller until the caller has handled it."""
        self.count += 1
        path = checkpoint.path if checkpoint is not None else None
        self.mailbox.post(self.count, Report([dict(m) for m in metrics], path))
        if not self.mailbox.wait_ack(self.count, HANDOFF_TIMEOUT_S):
            log.warning("the caller did not handle a report within %.0f s; continuing", HANDOFF_TIMEOUT_S)
