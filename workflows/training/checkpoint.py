"""The checkpoint format: one training state per folder, written by a Train worker and read by everything else.

A checkpoint folder holds ``checkpoint.pt``, a ``torch.save`` of a dict of tensors and plain Python values only (so
it loads with ``weights_only=True``): the model's and optimizer's state, the epoch, the number of PBT commands done,
and the facts a bundle needs to rebuild and feed the network without the run (band statistics, model and training
config, dataset metadata), plus the epoch's metrics. Written by the worker loop (``workflows/training/loop.py``), read
by
resume and exploit there and by evaluation and the bundle export, which therefore need neither DDP nor Ray Train.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data.format import PatchMetadata
from data.messages import torch_load_failure
from data.pipeline import BandStats
from resnet import ResNet, ResNetConfig, unwrap
from workflows.training.config import TrainConfig

CHECKPOINT_FILE = "checkpoint.pt"
# What every checkpoint holds; ``command``, ``train_config`` and ``metrics`` are optional (older checkpoints).
REQUIRED_KEYS = ("model", "optimizer", "epoch", "band_stats", "model_config", "metadata")


def run_facts(stats: BandStats, model_cfg: ResNetConfig, train_config: TrainConfig, metadata: PatchMetadata) -> dict:
    """What a checkpoint carries besides the weights, so that a bundle can be rebuilt from it alone."""
    return {
        "band_stats": stats.to_dict(),
        "model_config": model_cfg.to_dict(),
        "train_config": train_config.to_dict(),
        "metadata": metadata.to_json(),
    }


def training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    command: int,
    facts: Mapping[str, Any],
    metrics: Mapping[str, Any],
) -> dict[str, Any]:
    """The state a checkpoint saves after ``epoch``: the bare model's weights, the optimizer, facts and metrics.

    Args:
        model: The model, possibly wrapped in DDP (its inner module's weights are saved).
        optimizer: Its optimizer.
        epoch: Epochs trained so far.
        command: PBT commands done so far (0 outside PBT).
        facts: :func:`run_facts` of the run.
        metrics: The epoch's reported metrics.
    """
    return {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "command": command,
        **facts,
        "metrics": dict(metrics),
    }


def save_checkpoint(directory: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write a training state (tensors and plain Python values only) to ``directory``."""
    path = Path(directory) / CHECKPOINT_FILE
    torch.save(dict(state), path)
    return path


def load_checkpoint(directory: str | os.PathLike) -> dict[str, Any]:
    """Read a training state written by :func:`save_checkpoint`, without unpickling arbitrary objects.

    Raises:
        ValueError: The folder holds no checkpoint, or it is not one of ours.
    """
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise ValueError(f"{directory}: no {CHECKPOINT_FILE} in this checkpoint folder")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to unpickle means the file is not usable
        raise ValueError(torch_load_failure(path, err, "checkpoint")) from None
    missing = set(REQUIRED_KEYS) - set(state)
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {', '.join(sorted(missing))}")
    return state


def model_from_state(state: Mapping[str, Any]) -> ResNet:
    """Rebuild the network of a checkpoint or bundle state (``model_config`` and ``model`` weights), in eval mode."""
    model = ResNet(ResNetConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    return model.eval()
