"""The data a training or tuning job starts from: checked footers first, then Ray Data's datasets and statistics.

:func:`open_inputs` runs before Ray starts: for a folder of ``train``/``val``/``test`` files it reads only footers and
patch ids (:func:`data.streaming.open_dataset_files`); a folder whose splits must be carved is read and carved in
memory, as :func:`data.format.read_dataset` does. :func:`build_inputs` then (Ray connected) scans the training split
in Ray Data for its band statistics and builds the training and validation datasets; the test split (for the
evaluation) and the baselines' features are read batch by batch in this process, never held whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Any

from data.format import PatchDataset, PatchMetadata, PatchSplit, read_dataset
from data.pipeline import BandStats, build_ray_datasets, compute_band_stats
from data.storage import check_reachable, locate
from data.streaming import DatasetFiles, open_dataset_files, split_batches, stream_ray_datasets, streamed_band_stats
from serving.baselines import BaselineData
from serving.evaluate import LabelledBatches
from training.ray_private import hide_user_code_error_notes

Source = DatasetFiles | PatchDataset


@dataclass(frozen=True)
class JobInputs:
    """What a job trains and tests on.

    Attributes:
        metadata: The dataset's metadata.
        rows: Patches per split.
        stats: Band statistics of the training split.
        datasets: Ray datasets ``train`` and ``val``, normalised.
        test: The test split for the evaluation: in memory for a carved folder, else batches read in this process.
        baselines: The baselines' view of the data.
        streamed: Whether Ray Data reads the Parquet files (False: a carved folder, read in memory).
    """

    metadata: PatchMetadata
    rows: dict[str, int]
    stats: BandStats
    datasets: dict[str, Any]
    test: PatchSplit | LabelledBatches
    baselines: BaselineData
    streamed: bool


def open_inputs(folder: str | os.PathLike) -> Source:
    """The dataset's checked footers and ids, or the whole dataset when its splits must be carved (before Ray starts).

    Raises:
        PatchFormatError: The folder or a file is not a valid dataset.
        StorageError: The folder is in an object store whose bucket does not exist or refuses access.
    """
    check_reachable(locate(folder, "--data"), "--data")
    return open_dataset_files(folder) or read_dataset(folder)


def source_rows(source: Source) -> dict[str, int]:
    """Patches per split."""
    if isinstance(source, PatchDataset):
        return {name: len(split) for name, split in source.splits.items()}
    return {name: source.num_rows(name) for name in source.files}


def build_inputs(source: Source) -> JobInputs:
    """Band statistics, Ray datasets, the test split and the baselines' data (Ray connected).

    Raises:
        PatchFormatError: A row is bad (the message names the file and row).
    """
    if isinstance(source, PatchDataset):
        stats = compute_band_stats(source.train.pixels)
        return JobInputs(
            source.metadata,
            source_rows(source),
            stats,
            build_ray_datasets(source, stats),
            source.test,
            BaselineData.from_dataset(source),
            streamed=False,
        )
    hide_user_code_error_notes()  # the row's one-line error says it all
    stats, _ = streamed_band_stats(source)
    datasets = stream_ray_datasets(source, stats)
    test = partial(split_batches, source, "test")  # read batch by batch for the evaluation, never whole
    baselines = BaselineData(source.metadata, source.num_rows("train"), partial(split_batches, source, "train"), test)
    return JobInputs(source.metadata, source_rows(source), stats, datasets, test, baselines, streamed=True)
