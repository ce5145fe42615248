"""The training workers' augmentation declared to Ray Data as a numpy-batch collate function.

Ray Data deprecated plain callables as ``iter_torch_batches(collate_fn=...)`` in Ray 2.47 and warns once per worker
and epoch; a subclass of its ``NumpyBatchCollateFn`` is the supported form. It lives apart from :mod:`data.pipeline`
because importing Ray Data takes 0.7 s, which the Ray-free bundle and evaluation code that import the pipeline's
band statistics should not pay.
"""

from __future__ import annotations

from ray.data.collate_fn import NumpyBatchCollateFn

from data.pipeline import D4Collate


class RayD4Collate(D4Collate, NumpyBatchCollateFn):
    """:class:`data.pipeline.D4Collate` (a random augmentation group element per patch, seeded) as Ray Data wants it.

    Args:
        seed: Seed of this worker's augmentation for one epoch.
        augment: The augmentation group, one of :data:`data.pipeline.AUGMENTATIONS`.
    """
