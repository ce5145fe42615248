"""The model actor of batch prediction (:class:`Predictor`) and the output columns it makes (:func:`output_schema`).

Each actor loads the bundle once and turns raw pixels into a patch's predicted class and class probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from data.format import PATCH_ID, PIXELS
from workflows.serving.bundle import Bundle, load_bundle
from workflows.serving.evaluate import PREDICT_BATCH_SIZE

PREDICTED_LABEL = "predicted_label"
PROBABILITY_PREFIX = "prob_"
OUTPUT_METADATA_KEY = "predictions"
# CPUs each model actor holds; its torch intra-op threads are as many.
ACTOR_CPUS = 1


def probability_column(class_name: str) -> str:
    """Name of the output column holding the probability of one class."""
    return f"{PROBABILITY_PREFIX}{class_name}"


def output_schema(bundle: Bundle, model: Path, where: str) -> pa.Schema:
    """Columns of the predictions and the ``predictions`` metadata naming model, input and classes."""
    classes = list(bundle.metadata.classes)
    fields = [pa.field(PATCH_ID, pa.string()), pa.field(PREDICTED_LABEL, pa.string())]
    fields += [pa.field(probability_column(name), pa.float32()) for name in classes]
    body = {"model": str(model.resolve()), "input": where, "classes": classes}
    return pa.schema(fields, metadata={OUTPUT_METADATA_KEY: json.dumps(body)})


class Predictor:
    """Ray Data callable class: each actor loads the bundle once, then classifies batches of raw pixels.

    Args:
        bundle_dir: The model bundle folder.
        threads: Torch intra-op threads of this actor (one per CPU it holds).
        ensemble: Average all the bundle's members (False: the best alone); None: the bundle's default.
        tta: Average over its test-time augmentation views (False: none); None: the bundle's default.
        batch_size: Patches per forward pass; a block is classified in slices of this many.
        counter: A :class:`~workflows.serving.predict.progress.PatchCounter` actor told how many patches each block
            held, for the driver's progress.
    """

    def __init__(
        self,
        bundle_dir: str,
        threads: int = ACTOR_CPUS,
        ensemble: bool | None = None,
        tta: bool | None = None,
        batch_size: int = PREDICT_BATCH_SIZE,
        counter: Any = None,
    ) -> None:
        torch.set_num_threads(threads)
        self.batch_size = batch_size
        self.counter = counter
        self.bundle = load_bundle(bundle_dir)
        self.ensemble, self.tta = ensemble, tta
        self.classes = np.asarray(self.bundle.metadata.classes, dtype=object)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Patch ids, predicted class names and class probabilities of one batch (a whole block)."""
        pixels = np.asarray(batch[PIXELS], dtype=np.float32)  # (B, C, H, W), raw values
        slices = [
            self.bundle.predict_probabilities(pixels[start : start + self.batch_size], self.ensemble, self.tta)
            for start in range(0, len(pixels), self.batch_size)
        ]
        probabilities = np.concatenate(slices)  # (B, K)
        out = {PATCH_ID: batch[PATCH_ID], PREDICTED_LABEL: self.classes[probabilities.argmax(axis=1)]}
        for k, name in enumerate(self.bundle.metadata.classes):
            out[probability_column(name)] = probabilities[:, k]
        if self.counter is not None:
            self.counter.add.remote(len(pixels))  # not waited for: progress must never slow the work
        return out
