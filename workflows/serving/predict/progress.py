"""Progress lines of a prediction run, each time another tenth of the patches is classified.

The model actors count their patches in a tiny actor (:class:`PatchCounter`); a driver thread asks it and says
``predicted N/total patches (rate/s)``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray

# A progress line each time another tenth of the patches is classified, looked at this often.
PROGRESS_STEPS = 10
PROGRESS_POLL_S = 1.0


@ray.remote(num_cpus=0)
class PatchCounter:
    """How many patches the model actors have classified so far (a tiny actor the driver asks for progress)."""

    def __init__(self) -> None:
        self.done = 0

    def add(self, patches: int) -> None:
        """Count another block."""
        self.done += patches

    def count(self) -> int:
        """Patches classified so far."""
        return self.done


def _count(counter: Any) -> int:
    """What a :class:`PatchCounter` holds, or 0 when it cannot say (a progress line is never worth a failure)."""
    try:
        return int(ray.get(counter.count.remote(), timeout=PROGRESS_POLL_S * 10))
    except Exception:  # noqa: BLE001 - a lost or slow counter only costs progress lines
        return 0


def report_progress(
    count: Callable[[], int], total: int, say: Callable[[str], None], stop: threading.Event, poll_s: float
) -> None:
    """Say ``predicted N/total patches (rate/s)`` each time another tenth is done, until ``stop`` is set.

    Args:
        count: Patches done so far.
        total: Patches in all.
        say: Where the lines go.
        stop: Set by the caller when the work has ended.
        poll_s: Seconds between looks at ``count``.
    """
    started, step = time.perf_counter(), total / PROGRESS_STEPS
    next_line = step
    while not stop.wait(poll_s):
        done = count()
        if done >= next_line and done < total:
            rate = done / max(time.perf_counter() - started, 1e-9)
            say(f"predicted {done}/{total} patches ({rate:.0f}/s)")
            next_line = (done // step + 1) * step


@contextmanager
def progress_lines(total: int, say: Callable[[str], None]) -> Iterator[Any]:
    """A :class:`PatchCounter` for the model actors, watched by a thread that reports on it while the body runs.

    Ray must be connected. The thread is stopped and the counter killed when the body ends, however it ends.

    Args:
        total: Patches in all.
        say: Where the lines go.

    Yields:
        The counter actor's handle.
    """
    counter = PatchCounter.remote()
    stop = threading.Event()
    thread = threading.Thread(
        target=report_progress,
        args=(functools.partial(_count, counter), total, say, stop, PROGRESS_POLL_S),
        daemon=True,
    )
    thread.start()
    try:
        yield counter
    finally:
        stop.set()
        thread.join()
        ray.kill(counter)
