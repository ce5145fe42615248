"""workflows/training/shard_cache.py: a small shard is read from Ray Data once and then served from the worker's
copy."""

import numpy as np
import torch

from data.pipeline import LABEL_COLUMN, PIXELS_COLUMN
from workflows.training.shard_cache import CachedShard, as_tensors


class _Shard:
    """Stands in for a Ray Data DataIterator: counts its passes."""

    def __init__(self, rows: int) -> None:
        rng = np.random.default_rng(0)
        self.pixels = rng.normal(size=(rows, 2, 3, 3)).astype(np.float32)
        self.labels = np.arange(rows, dtype=np.int64)
        self.passes = 0

    def iter_batches(self, batch_size, batch_format, **shuffle):
        assert batch_format == "numpy"
        self.passes += 1
        for start in range(0, len(self.labels), batch_size):
            yield {
                PIXELS_COLUMN: self.pixels[start : start + batch_size],
                LABEL_COLUMN: self.labels[start : start + batch_size],
            }


def _labels(batches) -> np.ndarray:
    return np.concatenate([b[LABEL_COLUMN] for b in batches])


def test_a_small_shard_is_read_once_and_then_permuted_per_epoch():
    shard = _Shard(50)
    cached = CachedShard(shard)
    first = _labels(cached.batches(8, shuffle_seed=1, shuffle_buffer=16))
    assert shard.passes == 1  # later passes came from the worker's copy
    second = list(cached.batches(8, shuffle_seed=2))
    third = _labels(cached.batches(8, shuffle_seed=3))
    assert shard.passes == 1, "later epochs must not start a Ray Data execution"
    assert [len(b[LABEL_COLUMN]) for b in second] == [8] * 6 + [2]
    assert sorted(_labels(second)) == sorted(first) == sorted(third) == list(range(50)), "every row once a pass"
    assert not np.array_equal(_labels(second), third), "each epoch a new order"
    assert np.array_equal(_labels(cached.batches(8, shuffle_seed=2)), _labels(second)), "seeded"
    # Rows keep their pixels.
    batch = second[0]
    assert np.array_equal(batch[PIXELS_COLUMN], shard.pixels[batch[LABEL_COLUMN]])


def test_without_a_seed_the_copy_keeps_the_first_order():
    shard = _Shard(20)
    cached = CachedShard(shard)
    assert np.array_equal(_labels(cached.batches(6)), _labels(cached.batches(6)))
    assert shard.passes == 1


def test_a_shard_larger_than_the_limit_is_read_every_pass():
    shard = _Shard(50)
    cached = CachedShard(shard, limit_bytes=shard.pixels[:10].nbytes)
    for _ in range(3):
        assert sorted(_labels(cached.batches(8))) == list(range(50))
    assert shard.passes == 3


def test_workers_that_do_not_all_fit_all_read_every_pass():
    shard = _Shard(20)
    cached = CachedShard(shard, agree=lambda fits: False)  # another worker's shard did not fit
    for _ in range(2):
        assert sorted(_labels(cached.batches(8))) == list(range(20))
    assert shard.passes == 2


def test_an_interrupted_first_pass_keeps_nothing():
    shard = _Shard(20)
    cached = CachedShard(shard)
    next(iter(cached.batches(8)))
    # The next pass reads the shard again in full (nothing of the first was kept); the one after is the copy.
    assert sorted(_labels(cached.batches(8))) == list(range(20)) and shard.passes == 2
    assert sorted(_labels(cached.batches(8))) == list(range(20)) and shard.passes == 2


def test_batches_become_tensors_on_the_device():
    shard = _Shard(4)
    (batch,) = as_tensors(CachedShard(shard).batches(4), torch.device("cpu"))
    assert batch[PIXELS_COLUMN].dtype == torch.float32 and batch[LABEL_COLUMN].dtype == torch.int64
    assert batch[PIXELS_COLUMN].shape == (4, 2, 3, 3)
