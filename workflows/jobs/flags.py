"""Argparse types of the entry scripts' flags: each refuses a bad value in one line saying what it expects.

argparse prints ``argument --lr: expected a finite number > 0, got 'inf'`` and exits with status 2, before any
data is read or Ray starts.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

from data.storage import path_or_uri

Number = TypeVar("Number", int, float)


def _number(text: str, convert: Callable[[str], Number], ok: Callable[[Number], bool], expected: str) -> Number:
    """``text`` converted, or the argparse error naming what was expected and what was given."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (a learning rate, a CPU share)."""
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (weight decay, momentum)."""
    return _number(text, float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


def unit_fraction(text: str) -> float:
    """A number in [0, 1) (dropout, label smoothing)."""
    return _number(text, float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def grad_clip(text: str) -> float | None:
    """A maximum gradient norm >= 0; 0 turns clipping off (None)."""
    value = _number(text, float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0 (0 turns clipping off)")
    return value or None


def positive_int(text: str) -> int:
    """A whole number >= 1 (epochs, batch size, workers, CPUs)."""
    return _number(text, int, lambda v: v >= 1, "a whole number >= 1")


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (restarts after a failure)."""
    return _number(text, int, lambda v: v >= 0, "a whole number >= 0")


def add_data_flag(group: argparse._ArgumentGroup, default: object) -> None:
    """``--data``, shared by train.py and tune.py: a dataset folder or its object-store URI (kept as typed)."""
    group.add_argument(
        "--data",
        type=path_or_uri,
        default=default,
        help="dataset folder (train/val/test.parquet), or its object-store URI (s3://bucket/prefix)",
    )
