"""Builders the test modules share: band statistics of pixels in memory, a dataset folder's Ray inputs as the jobs
build them, a checkpoint as the training loop writes it, from a tiny generated dataset, and the failed tasks that
are Ray's own.

A plain module beside ``conftest.py`` (pytest puts this folder on ``sys.path``), so that tests in any package import
it, alone or together, in any order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data import DEFAULT_DATASET_DIR
from data.pipeline import MIN_STD, BandStats, normalise
from data.streaming import open_dataset_files, stream_ray_datasets, streamed_band_stats
from data.synthetic import generate
from resnet import ResNet, ResNetConfig
from workflows.training.checkpoint import save_checkpoint

COUNTS = {"train": 70, "val": 14, "test": 28}
# Failed tasks a normal run may show that come from Ray Train 2.60's own shutdown, not from us: after a run's worker
# group stops, Train's controller sends its DatasetManager actor shutdown_data_executors without waiting, and the
# actor dies with the controller, sometimes before it ran (1 failed task in 1 of the 5 runs counted here, #27).
RAY_SHUTDOWN_RACES = frozenset({"DatasetManager.shutdown_data_executors"})
CHANNELS = 16  # small and quick; the format does not depend on the width


def pixel_band_stats(pixels: np.ndarray) -> BandStats:
    """Per-band mean and standard deviation of pixels (N, C, H, W) held in memory: what the streamed ones must equal."""
    values = np.asarray(pixels, dtype=np.float64)
    return BandStats(mean=values.mean(axis=(0, 2, 3)), std=np.maximum(values.std(axis=(0, 2, 3)), MIN_STD))


def ray_inputs(folder: str | os.PathLike = DEFAULT_DATASET_DIR) -> tuple[BandStats, dict[str, Any]]:
    """A dataset folder's training statistics and Ray datasets ``train`` and ``val``, as the jobs build them.

    Ray must be connected (the ``ray_cluster`` fixture).
    """
    files = open_dataset_files(folder)
    stats, _ = streamed_band_stats(files)
    return stats, stream_ray_datasets(files, stats)


def make_checkpoint(
    directory: Path, seed: int = 0, *, model_seed: int | None = None, augment: str | None = None
) -> Path:
    """A checkpoint as the training loop writes it, from a model that took a few steps (so BatchNorm has stats).

    Args:
        directory: Where to write it.
        seed: Seed of the data (and, unless ``model_seed`` is given, of the model).
        model_seed: Seed of the model alone: checkpoints that differ only in it are members of one ensemble.
        augment: The training config's augmentation group; None leaves the key out, as older checkpoints did.
    """
    dataset = generate(COUNTS, seed=seed)
    stats = pixel_band_stats(dataset.train.pixels)
    torch.manual_seed(seed if model_seed is None else model_seed)
    config = ResNetConfig.from_metadata(dataset.metadata, channels=CHANNELS)
    model = ResNet(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.from_numpy(normalise(dataset.train.pixels, stats))
    y = torch.from_numpy(dataset.train.labels)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        directory,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": 3,
            "band_stats": stats.to_dict(),
            "model_config": config.to_dict(),
            "train_config": {"lr": 1e-3, "seed": seed, **({} if augment is None else {"augment": augment})},
            "metadata": dataset.metadata.to_json(),
            "metrics": {"val_acc": 0.5},
        },
    )
    return directory
