"""The Ray Data pipeline: band statistics of the training split, normalisation, and D4 augmentation.

Patches are read once with the validating reader, normalised with per-band statistics of the *training* split, and
materialised in Ray's object store. Only the cheap per-epoch work (shuffling within blocks and a random one of the
8 flips/rotations per patch) runs lazily on every pass over the training set, so an epoch never re-reads or
re-normalises the data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from data.format import PatchDataset, PatchSplit

# Column names of the Ray datasets handed to the training workers.
PIXELS_COLUMN = "pixels"
LABEL_COLUMN = "label"

# A band whose training pixels barely vary is divided by this instead of ~0, so it cannot explode.
MIN_STD = 1e-6
# Enough blocks that two or more workers each get several, and that shuffling blocks mixes the order.
DEFAULT_BLOCKS = 8


@dataclass(frozen=True)
class BandStats:
    """Per-band mean and standard deviation of the training split.

    Attributes:
        mean: Mean of each band, shape (C,).
        std: Standard deviation of each band (at least ``MIN_STD``), shape (C,).
    """

    mean: np.ndarray
    std: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists, for checkpoints, bundles and JSON."""
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, body: Mapping[str, list[float]]) -> BandStats:
        """Inverse of :meth:`to_dict`."""
        return cls(mean=np.asarray(body["mean"], dtype=np.float64), std=np.asarray(body["std"], dtype=np.float64))


def compute_band_stats(pixels: np.ndarray) -> BandStats:
    """Mean and standard deviation of every band over all patches and pixels.

    Args:
        pixels: Training pixels, shape (N, C, H, W).
    """
    values = np.asarray(pixels, dtype=np.float64)
    mean = values.mean(axis=(0, 2, 3))
    std = np.maximum(values.std(axis=(0, 2, 3)), MIN_STD)
    return BandStats(mean=mean, std=std)


def normalise(pixels: np.ndarray, stats: BandStats) -> np.ndarray:
    """Standardise each band with the given statistics; returns float32 of the same shape (N, C, H, W)."""
    mean = stats.mean.reshape(1, -1, 1, 1)
    std = stats.std.reshape(1, -1, 1, 1)
    return ((np.asarray(pixels, dtype=np.float64) - mean) / std).astype(np.float32)


def d4_transform(pixels: np.ndarray, elements: np.ndarray) -> np.ndarray:
    """Apply one element of the dihedral group D4 to each patch.

    Element ``k`` rotates by ``k % 4`` quarter turns and then, for ``k >= 4``, mirrors left-right. All eight are
    label-preserving for overhead imagery. Non-square patches only get the four that keep their shape (identity,
    half turn, and the two mirrors).

    Args:
        pixels: Patches, shape (N, C, H, W).
        elements: Group element per patch, integers in [0, 8).
    """
    out = np.empty_like(pixels)
    square = pixels.shape[2] == pixels.shape[3]
    for k in range(8):
        rows = np.flatnonzero(elements == k)
        if rows.size == 0:
            continue
        quarter_turns = k % 4 if square else 2 * (k % 2)
        moved = np.rot90(pixels[rows], quarter_turns, axes=(2, 3))
        if k >= 4:
            moved = moved[..., ::-1]
        out[rows] = moved
    return out


class D4Collate:
    """Turns a Ray Data numpy batch into tensors with a random D4 element applied to each patch.

    Passed (as :class:`data.collate.RayD4Collate`) to ``iter_torch_batches`` on each training worker, so
    augmentation runs in Ray Data's prefetch thread beside the model rather than as Ray tasks competing with training
    for CPUs. Seeded per worker and epoch, so a run is reproducible and every epoch sees different views of each
    patch.

    Args:
        seed: Seed of this worker's augmentation for one epoch.
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        """Tensors ``pixels`` (B, C, H, W), each patch moved by its own random D4 element, and ``label`` (B,)."""
        import torch

        pixels = np.asarray(batch[PIXELS_COLUMN], dtype=np.float32)  # (B, C, H, W)
        moved = d4_transform(pixels, self.rng.integers(0, 8, size=len(pixels)))
        return {
            PIXELS_COLUMN: torch.from_numpy(np.ascontiguousarray(moved)),
            LABEL_COLUMN: torch.tensor(np.asarray(batch[LABEL_COLUMN]), dtype=torch.int64),
        }


def to_arrow(split: PatchSplit, stats: BandStats) -> pa.Table:
    """Normalised pixels as an Arrow tensor column plus integer labels."""
    from ray.data.extensions import ArrowTensorArray

    if split.labels is None:
        raise ValueError("training and validation splits need labels")
    return pa.table(
        {
            PIXELS_COLUMN: ArrowTensorArray.from_numpy(normalise(split.pixels, stats)),
            LABEL_COLUMN: pa.array(split.labels, type=pa.int64()),
        }
    )


def build_ray_datasets(
    dataset: PatchDataset,
    stats: BandStats,
    splits: tuple[str, ...] = ("train", "val"),
    blocks: int = DEFAULT_BLOCKS,
) -> dict:
    """Normalise the given splits and materialise them in the object store; ``train`` gets a shuffled block order.

    Call this once per experiment and hand the result to every trainer: the expensive part runs here. Each epoch
    re-runs only the block shuffle; the workers shuffle rows locally and augment with :class:`D4Collate`.

    Args:
        dataset: The validated dataset.
        stats: Band statistics of the training split.
        splits: Which splits to build.
        blocks: How many blocks each split is cut into.

    Returns:
        Ray datasets by split name.
    """
    import ray.data

    built = {}
    for name in splits:
        split = dataset.splits[name]
        ds = ray.data.from_arrow(to_arrow(split, stats)).repartition(min(blocks, len(split))).materialize()
        if name == "train":
            ds = ds.randomize_block_order()
        built[name] = ds
    return built
