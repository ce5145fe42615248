"""The entry scripts' flags, each defined once: its type (which refuses a bad value in one line), choices and help.

A script adds the flags it exposes with :func:`add_flags`, giving the defaults of its own config, so train.py and
tune.py share one definition of every setting they have in common. argparse prints
``argument --lr: expected a finite number > 0, got 'inf'`` and exits with status 2, before any data is read or Ray
starts.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from data.pipeline import AUGMENTATIONS
from data.storage import path_or_uri
from workflows.training.config import OPTIMIZERS, RANKABLE_METRICS

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


# Every flag a script may expose, by its config field's name: argparse's keywords besides the default.
FLAGS: dict[str, dict[str, Any]] = {
    # Data and output.
    "data": {
        "type": path_or_uri,
        "help": "dataset folder (train/val/test.parquet), or its object-store URI (s3://bucket/prefix)",
    },
    "overwrite": {"action": "store_true", "help": "allow a results folder that already has results"},
    # Training, one run or each member.
    "optimizer": {"choices": OPTIMIZERS},
    "lr": {"type": positive_float, "help": "learning rate"},
    "grad_clip": {"type": grad_clip, "help": "max gradient norm; 0 = off"},
    "momentum": {"type": non_negative_float, "help": "SGD momentum (AdamW ignores it)"},
    "weight_decay": {"type": non_negative_float, "help": "decoupled weight decay"},
    "label_smoothing": {"type": unit_fraction, "help": "softened one-hot targets"},
    "epochs": {"type": positive_int, "help": "passes over the training split"},
    "batch_size": {"type": positive_int, "help": "global batch, split over the workers"},
    "channels": {"type": positive_int, "help": "network width"},
    "dropout": {"type": unit_fraction, "help": "dropout at the end of each residual block"},
    "augment": {"choices": AUGMENTATIONS, "help": "flips/rotations drawn per training patch"},
    "seed": {"type": int, "help": "seeds the model, the data order and the population"},
    "metric": {"choices": RANKABLE_METRICS, "help": "what ranks checkpoints (and PBT's members)"},
    # None by default in every script: the metric's own direction (a config resolves it once --metric is known).
    "mode": {"choices": ("max", "min"), "default": None, "help": "whether --metric is maximised (None: its own)"},
    "checkpoint_every": {"type": positive_int, "help": "epochs between checkpoints"},
    "keep_checkpoints": {"type": positive_int, "help": "best checkpoints Ray keeps"},
    # Ray.
    "num_workers": {"type": positive_int, "help": "data-parallel Ray Train workers (of each member, in tune.py)"},
    "cpus_per_worker": {"type": positive_float, "help": "CPUs each worker reserves (its torch threads)"},
    "gpu": {"action": "store_true", "help": "one GPU per worker (the cluster must have them)"},
    "address": {"help": "Ray cluster address (None: the running cluster, or a new local one)"},
    "num_cpus": {"type": positive_int, "help": "CPUs of a new local cluster (None: all)"},
}


def add_flags(group: argparse._ArgumentGroup, defaults: object, names: Iterable[str], **helps: str) -> None:
    """Add the flags of ``names`` (config field names) to ``group``, with the defaults ``defaults`` holds.

    Args:
        group: The parser or argument group.
        defaults: The script's config (a dataclass instance) whose attribute of each name is the flag's default
            (unless :data:`FLAGS` gives one).
        names: Which flags of :data:`FLAGS`.
        helps: A script's own help text for some flags, by name (what a setting means there, when it differs).
    """
    for name in names:
        keywords = {"default": getattr(defaults, name), **FLAGS[name]}
        if name in helps:
            keywords["help"] = helps[name]
        group.add_argument("--" + name.replace("_", "-"), **keywords)
