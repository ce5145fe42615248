"""A job's settings as flat keys: its own fields beside those of the :class:`TrainConfig` it holds.

The flags, ``--config`` files and the files a run keeps (``config.yaml``, ``experiment.json``) name every setting by
one flat key, the field's name; a job config keeps its training settings as a ``training`` field. These two
functions go between the two shapes, for :class:`~workflows.jobs.training_run.TrainJob` and
:class:`~workflows.jobs.experiment.ExperimentConfig` alike.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from workflows.training.config import TrainConfig
from workflows.training.config_file import plain_setting

Job = TypeVar("Job")
# Keys that files written before a rename still hold, and what they are called now.
RENAMED = {"use_gpu": "gpu", "workers_per_trial": "num_workers"}


def _default_training(cls: type) -> TrainConfig:
    """The training settings a job class starts from (its ``training`` field's default)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == "training")
    return field.default_factory()


def own_fields(cls: type) -> list[str]:
    """A job class's fields other than ``training``, in order."""
    return [f.name for f in dataclasses.fields(cls) if f.name != "training"]


def from_flat(cls: type[Job], values: Mapping[str, Any] | argparse.Namespace, training_keys: Collection[str]) -> Job:
    """The job from flat keys; a key the job holds itself wins over a training field of the same name.

    Args:
        cls: The job config class (a frozen dataclass with a ``training: TrainConfig`` field).
        values: A mapping or an argparse namespace; keys neither the job nor ``training_keys`` name are ignored.
        training_keys: The :class:`TrainConfig` fields this job lets a user set.
    """
    values = dict(vars(values) if isinstance(values, argparse.Namespace) else values)
    for old, new in RENAMED.items():
        if old in values:
            values.setdefault(new, values.pop(old))
    own = own_fields(cls)
    changes = {k: v for k, v in values.items() if k in training_keys and k not in own}
    training = _default_training(cls).replace(**changes)
    return cls(**{k: v for k, v in values.items() if k in own}, training=training)


def to_flat(job: Any, training_keys: Collection[str], leave_out: Collection[str] = ()) -> dict[str, Any]:
    """The job's settings as flat plain values (flags' names), its own fields first.

    Args:
        job: A job config with a ``training`` field.
        training_keys: The :class:`TrainConfig` fields this job lets a user set.
        leave_out: Keys about one invocation, not the job, that files never keep.
    """
    own = own_fields(type(job))
    body = {name: getattr(job, name) for name in own}
    body.update({k: v for k, v in job.training.to_dict().items() if k in training_keys and k not in own})
    return {k: plain_setting(v) for k, v in body.items() if k not in leave_out}
