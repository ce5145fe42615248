"""Stratified, seeded splits of labelled rows: how a pool of patches, or an unsplit training file, is cut into splits.

Every part keeps each class's share (rounded per class), and the same labels, fractions and seed always give the
same rows, so a carved split is the same on every read of the same file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from data.format import PatchFormatError, PatchSplit

# Fractions carved from a single unsplit file (train, val, test), stratified by class.
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
DEFAULT_SPLIT_SEED = 0


def split_counts(count: int, fractions: Sequence[float]) -> list[int]:
    """How many of ``count`` rows of one class each part gets in :func:`stratified_split`.

    Args:
        count: Rows of the class.
        fractions: Share of each part; they must be non-negative and sum to 1.

    Raises:
        ValueError: The fractions are negative or do not sum to 1.
    """
    if any(not math.isfinite(f) or f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {list(fractions)}")
    bounds = np.round(np.cumsum(fractions) * count).astype(int)
    bounds[-1] = count  # rounding must not lose or invent a row
    return np.diff(np.r_[0, bounds]).tolist()


def carve(pool: PatchSplit, fractions: Mapping[str, float], seed: int) -> dict[str, PatchSplit]:
    """``pool`` cut into named parts of the given fractions (summing to 1), stratified by label, seeded."""
    parts = stratified_split(pool.labels, list(fractions.values()), seed)
    return {name: pool.take(rows) for name, rows in zip(fractions, parts, strict=True)}


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Partition row indices into parts of the given fractions, class by class, with a fixed seed.

    Args:
        labels: Integer class of each row.
        fractions: Share of each part; they must be non-negative and sum to 1.
        seed: Seed of the shuffle, so the same input always gives the same parts.

    Returns:
        One sorted index array per fraction.

    Raises:
        ValueError: The fractions are negative or do not sum to 1.
    """
    split_counts(0, fractions)  # validate once, even when there are no labels
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        bounds = np.cumsum(split_counts(len(rows), fractions))
        for part, (start, stop) in enumerate(zip(np.r_[0, bounds[:-1]], bounds, strict=True)):
            parts[part].append(rows[start:stop])
    return [np.sort(np.concatenate(p)) if p else np.empty(0, dtype=np.int64) for p in parts]


def carve_rows(labels: np.ndarray, missing: Sequence[str], seed: int, source: str) -> dict[str, np.ndarray]:
    """Rows of the training file that stay ``train`` and that each missing split (``val``, ``test``) takes.

    Stratified by class with ``seed`` (:func:`stratified_split`), in the shares of :data:`DEFAULT_SPLIT_FRACTIONS`:
    a split that is present keeps its share in ``train``. Only the labels are needed, so a large file is carved from
    its label column alone.

    Args:
        labels: Class index of every row of the training file.
        missing: The splits to carve, among ``val`` and ``test``.
        seed: Seed of the shuffle.
        source: The training file, for messages.

    Raises:
        PatchFormatError: A carved split would be empty.
    """
    train_share, val_share, test_share = DEFAULT_SPLIT_FRACTIONS
    shares = {"val": val_share, "test": test_share}
    fractions = [train_share + sum(shares[n] for n in shares if n not in missing)] + [shares[n] for n in missing]
    total = sum(fractions)
    names = ["train", *missing]
    rows = dict(zip(names, stratified_split(labels, [f / total for f in fractions], seed), strict=True))
    for name, part in rows.items():
        if len(part) == 0:
            raise PatchFormatError(
                f"{source}: {len(labels)} patches are too few to carve a non-empty {name} split from them"
            )
    return rows
