"""Band statistics and normalisation, and the flip/rotation augmentation the training workers apply.

Pixels are standardised band by band with the *training* split's statistics (:class:`BandStats`; computed by
:func:`data.streaming.streamed_band_stats`), for training, evaluation and prediction alike. Augmentation draws one
element of a group of the square's flips and rotations (by default all 8 of D4) per patch, on every pass, in the
training worker's own process (:class:`D4Collate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# Column names of the Ray datasets handed to the training workers.
PIXELS_COLUMN = "pixels"
LABEL_COLUMN = "label"

# A band whose training pixels barely vary is divided by this instead of ~0, so it cannot explode.
MIN_STD = 1e-6


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


def normalise(pixels: np.ndarray, stats: BandStats) -> np.ndarray:
    """Standardise each band with the given statistics; returns float32 of the same shape (N, C, H, W)."""
    mean = stats.mean.reshape(1, -1, 1, 1)
    std = stats.std.reshape(1, -1, 1, 1)
    return ((np.asarray(pixels, dtype=np.float64) - mean) / std).astype(np.float32)


# The dihedral group D4 of a square: element k of d4_transform rotates by k % 4 quarter turns, then mirrors
# left-right when k >= HALF_D4. The even elements (rotations by 0 or 2 quarter turns, with or without the mirror) keep
# the image's axes: identity, vertical flip, horizontal flip and both.
D4_ORDER = 8
HALF_D4 = D4_ORDER // 2
AXIS_KEEPING = tuple(k for k in range(D4_ORDER) if k % 2 == 0)

# Augmentation groups by name, as elements of d4_transform. "d4": all eight, for imagery whose class does not depend
# on orientation (overhead land cover); "flips": the four that keep the axes, for data whose class changes under a
# quarter turn; "none": the identity only.
D4, FLIPS, NO_AUGMENTATION = "d4", "flips", "none"
AUGMENTATION_GROUPS = {D4: tuple(range(D4_ORDER)), FLIPS: AXIS_KEEPING, NO_AUGMENTATION: (0,)}
AUGMENTATIONS = tuple(AUGMENTATION_GROUPS)
DEFAULT_AUGMENTATION = D4


def augmentation_elements(name: str, square: bool = True) -> np.ndarray:
    """The elements of an augmentation group, for :func:`d4_transform`.

    Training draws one of them per patch (:class:`D4Collate`); test-time augmentation averages over the views
    ``d4_transform(pixels, np.full(len(pixels), k))`` for each element ``k``.

    Args:
        name: One of ``AUGMENTATIONS``.
        square: Whether the patches are square; a non-square patch has no quarter turns, so "d4" gives the same
            four elements as "flips" there.

    Returns:
        Element indices in increasing order, shape (group size,).

    Raises:
        ValueError: ``name`` is not an augmentation group.
    """
    if name not in AUGMENTATION_GROUPS:
        raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {name!r}")
    return np.array([k for k in AUGMENTATION_GROUPS[name] if square or k in AXIS_KEEPING], dtype=np.int64)


def d4_transform(pixels: np.ndarray, elements: np.ndarray) -> np.ndarray:
    """Apply one element of the dihedral group D4 to each patch.

    Element ``k`` rotates by ``k % 4`` quarter turns and then, for ``k >= 4``, mirrors left-right. All eight are
    label-preserving for overhead imagery. Non-square patches only take the four that keep their shape (the even
    elements: identity, half turn, and the two mirrors).

    Args:
        pixels: Patches, shape (N, C, H, W).
        elements: Group element per patch, integers in [0, 8); even ones only for non-square patches.

    Raises:
        ValueError: An element is out of range, or rotates a non-square patch by a quarter turn.
    """
    square = pixels.shape[2] == pixels.shape[3]
    allowed = range(D4_ORDER) if square else AXIS_KEEPING
    unknown = np.setdiff1d(elements, allowed)
    if unknown.size:
        shape = "square" if square else f"non-square ({pixels.shape[2]}x{pixels.shape[3]})"
        raise ValueError(f"D4 elements {unknown.tolist()} do not apply to {shape} patches; use {list(allowed)}")
    out = np.empty_like(pixels)
    for k in allowed:
        rows = np.flatnonzero(elements == k)
        if rows.size == 0:
            continue
        moved = np.rot90(pixels[rows], k % HALF_D4, axes=(2, 3))
        if k >= HALF_D4:
            moved = moved[..., ::-1]
        out[rows] = moved
    return out


class D4Collate:
    """Turns a Ray Data numpy batch into tensors with a random element of an augmentation group applied to each patch.

    Applied by each training worker to the batches of its shard (:mod:`workflows.training.shard_cache`), beside the
    model, rather than as Ray tasks competing with training for CPUs. Seeded per worker and epoch, so a run is
    reproducible and every epoch sees different views of each patch.

    Args:
        seed: Seed of this worker's augmentation for one epoch.
        augment: The group (one of ``AUGMENTATIONS``) whose elements are drawn, uniformly.

    Raises:
        ValueError: ``augment`` is not an augmentation group.
    """

    def __init__(self, seed: int, augment: str = DEFAULT_AUGMENTATION) -> None:
        augmentation_elements(augment)  # refuse an unknown group now, not at the first batch
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        """Tensors ``pixels`` (B, C, H, W), each patch moved by its own random group element, and ``label`` (B,)."""
        import torch

        pixels = np.asarray(batch[PIXELS_COLUMN], dtype=np.float32)  # (B, C, H, W)
        elements = augmentation_elements(self.augment, square=pixels.shape[2] == pixels.shape[3])
        moved = d4_transform(pixels, self.rng.choice(elements, size=len(pixels)))
        return {
            PIXELS_COLUMN: torch.from_numpy(np.ascontiguousarray(moved)),
            LABEL_COLUMN: torch.tensor(np.asarray(batch[LABEL_COLUMN]), dtype=torch.int64),
        }
