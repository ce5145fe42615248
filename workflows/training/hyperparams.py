"""The hyperparameters population-based training mutates: one registry that every part of the PBT path reads.

Each :class:`Mutable` says how its members start (the initial population), where PBT may move it (the mutation
space), how the worker re-applies it after loading a checkpoint (loading optimizer state brings back the *donor's*
values), and how people see it (report lines, ``pbt.json``, plots, the summary table). ``lr`` and ``grad_clip`` are
the product's promise. Adding another, for example ``weight_decay``, is one more entry in :data:`MUTABLES`: its name
must be a :class:`workflows.training.config.TrainConfig` field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import tune

from workflows.training.config import GRAD_CLIP, LR, TrainConfig

# Clipping norms PBT may move between; "off" is not among them, so a member that recovers keeps clipping.
CLIP_CHOICES = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
# Learning rates a resampled member draws from: the range where AdamW trains this network stably.
MUTATION_LR_RANGE = (1e-4, 1e-2)
# Default initial population: geometric learning rates from stable (AdamW trains well at 1e-3) to well past
# divergence (3.0; the upper half also starts unclipped).
INITIAL_LR_RANGE = (1e-3, 3.0)


@dataclass(frozen=True)
class PopulationOptions:
    """What the initial values may depend on besides the member's index and the population size.

    Attributes:
        unstable: Whether the upper half of the population starts in the seed's unstable setting.
        lr_range: Smallest and largest initial learning rate (spaced geometrically).
        base: The shared config; a value that does not vary over the population comes from here.
    """

    unstable: bool = True
    lr_range: tuple[float, float] = INITIAL_LR_RANGE
    base: TrainConfig = TrainConfig()


# (member index, population size, options) -> the member's initial value.
Initial = Callable[[int, int, PopulationOptions], Any]


@dataclass(frozen=True)
class Mutable:
    """One hyperparameter PBT mutates.

    Attributes:
        name: The :class:`TrainConfig` field (and the key in Tune's config, reports and ``pbt.json``).
        initial: The member's starting value.
        space: PBT's mutation space (a Tune domain or a list of choices).
        optimizer_key: The optimizer param-group key it sets after a checkpoint load, or None when the training
            loop reads it from the config each step (``grad_clip``).
        log_scale: Whether plots draw it on a log axis.
        off: Whether 0 (or None) means "off" (shown as ``off``, reported as 0.0).
    """

    name: str
    initial: Initial
    space: Any
    optimizer_key: str | None = None
    log_scale: bool = True
    off: bool = False

    def reported(self, value: Any) -> float:
        """The value as a finite float for reports and Tune (``off`` is 0.0)."""
        return float(value or 0.0) if self.off else float(value)

    def configured(self, value: Any) -> Any:
        """The value as :class:`TrainConfig` holds it (``off`` is None)."""
        if self.off:
            return float(value) if value else None
        return float(value)

    def text(self, value: Any) -> str:
        """The value as a person reads it."""
        if self.off and not value:
            return "off"
        return "-" if value is None else f"{float(value):.3g}"


def _initial_lr(index: int, size: int, options: PopulationOptions) -> float:
    low, high = options.lr_range
    lrs = np.geomspace(low, high, size) if size > 1 else np.array([math.sqrt(low * high)])
    return float(lrs[index])


def _initial_clip(index: int, size: int, options: PopulationOptions) -> float | None:
    if options.unstable and index >= size / 2:
        return None  # the seed's setting: large steps and no clipping
    return CLIP_CHOICES[index % len(CLIP_CHOICES)]


# The registry. Order is the order of report columns and plot panels.
MUTABLES: tuple[Mutable, ...] = (
    Mutable(LR, _initial_lr, tune.loguniform(*MUTATION_LR_RANGE), optimizer_key="lr"),
    Mutable(GRAD_CLIP, _initial_clip, list(CLIP_CHOICES), off=True),
)
NAMES = tuple(m.name for m in MUTABLES)


def initial_population(
    size: int, options: PopulationOptions | None = None, mutables: tuple[Mutable, ...] | None = None
) -> list[dict[str, Any]]:
    """Every member's starting values, deterministic.

    Args:
        size: Number of members.
        options: By default the largest learning rates also start without clipping, so some members diverge and
            recovery is visible.
        mutables: The registry.
    """
    mutables = mutables or MUTABLES
    options = options or PopulationOptions()
    return [{m.name: m.initial(index, size, options) for m in mutables} for index in range(size)]


def mutation_spaces(mutables: tuple[Mutable, ...] | None = None) -> dict[str, Any]:
    """PBT's ``hyperparam_mutations``."""
    mutables = mutables or MUTABLES
    return {m.name: m.space for m in mutables}


def config_values(config: Mapping[str, Any], mutables: tuple[Mutable, ...] | None = None) -> dict[str, Any]:
    """The mutable values of a Tune config, as :class:`TrainConfig` fields."""
    mutables = mutables or MUTABLES
    return {m.name: m.configured(config[m.name]) for m in mutables if m.name in config}


def reported_values(cfg: TrainConfig, mutables: tuple[Mutable, ...] | None = None) -> dict[str, float]:
    """The mutable values of a config as they travel in reports."""
    mutables = mutables or MUTABLES
    return {m.name: m.reported(getattr(cfg, m.name)) for m in mutables}


def apply_to_optimizer(optimizer: Any, cfg: TrainConfig, mutables: tuple[Mutable, ...] | None = None) -> None:
    """Set the config's values on every param group (after optimizer state was loaded)."""
    mutables = mutables or MUTABLES
    for m in mutables:
        if m.optimizer_key is None:
            continue
        for group in optimizer.param_groups:
            group[m.optimizer_key] = m.configured(getattr(cfg, m.name))


def settings_text(values: Mapping[str, Any], mutables: tuple[Mutable, ...] | None = None) -> str:
    """``lr 0.001  grad_clip off`` for a report line."""
    mutables = mutables or MUTABLES
    return "  ".join(f"{m.name} {m.text(values.get(m.name))}" for m in mutables)


def change_text(old: Mapping[str, Any], new: Mapping[str, Any], mutables: tuple[Mutable, ...] | None = None) -> str:
    """``lr 3 -> 0.001, grad_clip off -> 5`` for an exploit line."""
    mutables = mutables or MUTABLES
    return ", ".join(f"{m.name} {m.text(old.get(m.name))} -> {m.text(new.get(m.name))}" for m in mutables)
