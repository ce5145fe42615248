"""A Train worker's dataset shard kept in its own memory after the first pass, when it is small.

Every pass over a Ray Data shard starts a streaming execution, whose CPU is a large share of a small model's epoch
(docs/BENCHMARKS.md has the figures). A shard that fits in :data:`WORKER_CACHE_BYTES` is therefore read from Ray Data
once, in the first epoch, and later epochs draw from the copy: training rows in a new random order each epoch (a full
permutation, seeded per epoch), validation rows in the order of the first pass. A larger shard is read from Ray Data
every epoch.

With several workers the training shards come from one ``streaming_split``, whose coordinator needs every worker to
read every epoch; the workers therefore agree (an all-reduce) to keep their copies or all drop them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from data.pipeline import LABEL_COLUMN, PIXELS_COLUMN

# Largest copy of one split a worker keeps (pixels and labels), per worker: 4 PBT members keeping training and
# validation copies of this size each would hold 2 GiB of a laptop's memory.
WORKER_CACHE_BYTES = 256 * 2**20

Batch = dict[str, np.ndarray]
Agree = Callable[[bool], bool]


class CachedShard:
    """Batches of one split for one worker: from Ray Data in the first pass, from this worker's copy afterwards.

    Args:
        shard: The worker's ``DataIterator`` (``ray.train.get_dataset_shard``).
        limit_bytes: Largest copy kept; a larger shard is read from Ray Data every pass.
        agree: Whether every worker's copy fits, given this worker's answer (an all-reduce for a split shard; alone,
            the answer itself).
    """

    def __init__(self, shard: Any, limit_bytes: int = WORKER_CACHE_BYTES, agree: Agree = bool) -> None:
        self._shard = shard
        self._limit = limit_bytes
        self._agree = agree
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self._streams = False  # a pass found the shard too large: read from Ray Data every time

    def batches(self, batch_size: int, shuffle_seed: int | None = None, shuffle_buffer: int = 0) -> Iterator[Batch]:
        """One pass of numpy batches (``pixels`` (B, C, H, W) float32, ``label`` (B,) int64).

        Args:
            batch_size: Rows per batch (the last one may be smaller).
            shuffle_seed: Seed of this pass's row order; None keeps the order of the first pass.
            shuffle_buffer: Rows of Ray Data's local shuffle buffer, for a pass read from Ray Data with a seed.
        """
        if self._arrays is not None:
            yield from self._from_copy(batch_size, shuffle_seed)
            return
        shuffled = {"local_shuffle_buffer_size": shuffle_buffer, "local_shuffle_seed": shuffle_seed}
        options = shuffled if shuffle_seed is not None and shuffle_buffer > 0 else {}
        read = self._shard.iter_batches(batch_size=batch_size, batch_format="numpy", **options)
        if self._streams:
            yield from read
            return
        kept: list[Batch] | None = []
        size = 0
        for batch in read:
            if kept is not None:
                size += sum(np.asarray(v).nbytes for v in batch.values())
                if size <= self._limit:
                    kept.append(_copy(batch))
                else:
                    kept = None
            yield batch
        fits = self._agree(kept is not None)
        if fits and kept:
            self._arrays = (
                np.concatenate([b[PIXELS_COLUMN] for b in kept]),
                np.concatenate([b[LABEL_COLUMN] for b in kept]),
            )
        else:
            self._streams = True

    def _from_copy(self, batch_size: int, shuffle_seed: int | None) -> Iterator[Batch]:
        pixels, labels = self._arrays
        count = len(labels)
        rows = np.arange(count) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(count)
        for start in range(0, len(rows), batch_size):
            chosen = rows[start : start + batch_size]
            yield {PIXELS_COLUMN: pixels[chosen], LABEL_COLUMN: labels[chosen]}


def _copy(batch: Batch) -> Batch:
    """A batch that owns its arrays (Ray Data's may be read-only views of the object store)."""
    return {
        PIXELS_COLUMN: np.array(batch[PIXELS_COLUMN], dtype=np.float32),
        LABEL_COLUMN: np.array(batch[LABEL_COLUMN], dtype=np.int64),
    }


def as_tensors(batches: Iterator[Batch], device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """Numpy batches as ``pixels`` float32 and ``label`` int64 tensors on ``device``."""
    for batch in batches:
        yield {
            PIXELS_COLUMN: torch.as_tensor(np.ascontiguousarray(batch[PIXELS_COLUMN]), dtype=torch.float32).to(device),
            LABEL_COLUMN: torch.as_tensor(np.asarray(batch[LABEL_COLUMN]), dtype=torch.int64).to(device),
        }
