"""The data a training or tuning job starts from: checked footers first, then Ray Data's datasets and statistics.

:func:`open_inputs` runs before Ray starts: it reads only footers and patch ids (and, for a folder whose val/test
splits are carved from the training file, that file's labels; :func:`data.streaming.open_dataset_files`).
:func:`build_inputs` then (Ray connected) scans the training split
in Ray Data for its band statistics and builds the training and validation datasets; the test split (for the
evaluation) and the baselines' features are read batch by batch in this process, never held whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Any

from data.format import PatchMetadata
from data.pipeline import BandStats
from data.storage import check_reachable, locate
from data.streaming import (
    MATERIALIZE_SHARE,
    DatasetFiles,
    fits_object_store,
    open_dataset_files,
    split_batches,
    stream_ray_datasets,
    streamed_band_stats,
)
from workflows.serving.baselines import BaselineData
from workflows.serving.evaluate import LabelledBatches
from workflows.training.ray_private import hide_user_code_error_notes

# CPUs that a split read from Parquet on every pass needs beside the training workers: Ray Data's read tasks ask for
# one each, and with every CPU held by workers none can start and the run waits for ever.
READ_CPUS = 1.0


@dataclass(frozen=True)
class JobInputs:
    """What a job trains and tests on.

    Attributes:
        metadata: The dataset's metadata.
        rows: Patches per split.
        stats: Band statistics of the training split.
        datasets: Ray datasets ``train`` and ``val``, normalised.
        test: The test split for the evaluation, as batches read in this process.
        baselines: The baselines' view of the data.
    """

    metadata: PatchMetadata
    rows: dict[str, int]
    stats: BandStats
    datasets: dict[str, Any]
    test: LabelledBatches
    baselines: BaselineData


def open_inputs(folder: str | os.PathLike) -> DatasetFiles:
    """The dataset's checked footers and ids, and its carved splits planned (before Ray starts).

    Raises:
        PatchFormatError: The folder or a file is not a valid dataset.
        StorageError: The folder is in an object store whose bucket does not exist or refuses access.
    """
    check_reachable(locate(folder, "--data"), "--data")
    return open_dataset_files(folder)


def read_cpus(source: DatasetFiles) -> float:
    """CPUs the training and validation splits' reads need while the workers train: none once they are in memory."""
    return 0.0 if fits_object_store(source) else READ_CPUS


def check_room_to_read(source: DatasetFiles, reserved: float, cpus: float, layout: str) -> None:
    """Refuse, before the data is scanned, workers that would hold the CPUs a streamed split's reads need.

    Args:
        source: The dataset's files (Ray connected).
        reserved: CPUs the training workers hold while they train.
        cpus: The cluster's CPUs.
        layout: The settings that reserve them, as the message names them.

    Raises:
        ValueError: One line saying why the run could never start and what to change.
    """
    needed = read_cpus(source)
    if not needed or reserved + needed <= cpus + 1e-9:
        return
    raise ValueError(
        f"the training and validation splits do not fit {MATERIALIZE_SHARE:.0%} of Ray's object store, so Ray Data "
        f"reads them from Parquet on every pass, with {needed:g} CPU beside the workers; {layout} hold {reserved:g} "
        f"of the cluster's {cpus:g} CPUs: leave {needed:g} free (fewer workers or CPUs per worker, or a larger cluster)"
    )


def build_inputs(source: DatasetFiles) -> JobInputs:
    """Band statistics, Ray datasets, the test split and the baselines' data (Ray connected).

    Raises:
        PatchFormatError: A row is bad (the message names the file and row).
    """
    hide_user_code_error_notes()  # the row's one-line error says it all
    stats, _ = streamed_band_stats(source)
    datasets = stream_ray_datasets(source, stats)
    test = partial(split_batches, source, "test")  # read batch by batch for the evaluation, never whole
    baselines = BaselineData(source.metadata, source.num_rows("train"), partial(split_batches, source, "train"), test)
    rows = {name: source.num_rows(name) for name in source.files}
    return JobInputs(source.metadata, rows, stats, datasets, test, baselines)
