"""Tests of workflows/serving/predict/progress.py: a line each tenth, and none once the work has ended."""

from __future__ import annotations

import threading

from workflows.serving.predict.progress import report_progress


def test_progress_says_each_tenth_once_and_stops_when_told():
    done, lines, stop = [0], [], threading.Event()

    def count() -> int:  # 7 more patches at every look; the work ends after 100
        done[0] = min(done[0] + 7, 100)
        if done[0] == 100:
            stop.set()
        return done[0]

    report_progress(count, 100, lines.append, stop, poll_s=0.001)
    shown = [int(line.split()[1].split("/")[0]) for line in lines]
    assert shown == [14, 21, 35, 42, 56, 63, 70, 84, 91]  # the first look past each tenth, never the total
    assert all(line.endswith("/s)") and "/100 patches" in line for line in lines)


def test_progress_stops_without_a_line_when_nothing_is_done():
    stop, lines = threading.Event(), []
    stop.set()
    report_progress(lambda: 0, 100, lines.append, stop, poll_s=0.001)
    assert lines == []
