"""The Ray Data pipeline of batch prediction: read, check block by block, classify in an actor pool, write Parquet.

The input is read with ``ray.data.read_parquet`` and checked with the patch format's own checks
(:func:`data.streaming.validate_block`); each model actor (:class:`~workflows.serving.predict.predictor.Predictor`)
loads the bundle once. Ray Data reads and writes the file systems directly, so every node of a cluster can. The
settings this needs from Ray Data's ``DataContext`` hold only while the pipeline runs (:func:`data_context`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from data.format import LABEL, PATCH_ID, PIXELS, PatchFileInfo
from data.storage import Location, locate
from data.streaming import read_parquet, validate_block, with_file_rows
from workflows.serving.bundle import PredictionMode
from workflows.serving.predict.config import PredictConfig
from workflows.serving.predict.output import is_folder_output
from workflows.serving.predict.predictor import ACTOR_CPUS, Predictor
from workflows.training.ray_private import hide_user_code_error_notes

# Rows per part file of a folder output: about 2 MB of predictions a part, so a big run is tens of files, not
# thousands, and each is written as soon as its rows are ready.
PART_ROWS = 50_000
# Bytes per Ray Data block: about 4,500 patches of 14 x 8 x 8, small enough to spread a file over the actors and
# large enough to keep a block's overhead far below its forward passes.
BLOCK_BYTES = 16 * 1024**2
# The actor pool leaves one CPU of the cluster to the read, validation and write tasks, which reserve it: with the
# pool holding every CPU the streamed read stalled for good here (Ray 2.60, 2 CPUs, 0-CPU reads included), and with
# 0-CPU tasks beside a smaller pool Ray Data wrote whole blocks out of order at 50,000 patches (preserve_order set).
IO_TASK_CPUS = 1
IO_RESERVED_CPUS = 1


def actor_count(cluster_cpus: float, wanted: int | None, patches: int) -> int:
    """Model actors for a run: ``wanted`` (None: as many as may be), at most the CPUs not kept for I/O and patches."""
    cpus = max(1, int(cluster_cpus))
    return min(wanted or cpus, max(1, cpus - IO_RESERVED_CPUS), patches)


@contextmanager
def data_context() -> Iterator[None]:
    """Ray Data's settings for prediction on the process's ``DataContext`` while the body runs, then the previous ones.

    A dataset copies the current context when it is made and runs with its copy, so the settings must hold while the
    pipeline is built; restoring them afterwards leaves other datasets of the process (a caller's, the next job's) as
    they would have been.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    options = context.execution_options
    saved = options.preserve_order, context.target_max_block_size, context.raise_original_map_exception
    options.preserve_order = True  # output rows in input order
    context.target_max_block_size = BLOCK_BYTES
    # A BlockRowError then reaches the driver as itself (with its fields), not as Ray's wrapper of it.
    context.raise_original_map_exception = True
    try:
        yield
    finally:
        options.preserve_order, context.target_max_block_size, context.raise_original_map_exception = saved


def write_predictions(
    source: str,
    info: PatchFileInfo,
    staging: Location,
    schema: pa.Schema,
    config: PredictConfig,
    concurrency: int,
    mode: PredictionMode,
    counter: Any = None,
) -> None:
    """Stream ``source`` (a path or URI) through validation and the actor pool into part files in ``staging``.

    Ray must be connected. A folder output gets parts of :data:`PART_ROWS` rows (the last one shorter), a file
    output one part. ``counter`` (a :class:`~workflows.serving.predict.progress.PatchCounter`) is told of every
    classified block.

    Raises:
        PatchFormatError: A row of the input is bad; the message names the file and row as ``read_split`` does.
    """
    import ray.data

    hide_user_code_error_notes()  # the one-line error below says it all
    columns = [PATCH_ID, PIXELS] + ([LABEL] if info.labelled else [])  # labels are read to be validated
    read = locate(source, "--input")
    per_file = PART_ROWS if is_folder_output(config.output) else info.num_rows
    with data_context():
        ds = read_parquet(read.path, filesystem=read.filesystem, num_cpus=IO_TASK_CPUS)
        ds = ds.select_columns(columns).map_batches(
            validate_block,
            batch_format="pyarrow",
            batch_size=None,  # whole blocks: the checks are vectorised
            fn_kwargs={"path": source, "metadata": info.metadata},  # the validated metadata, pickled as it is
            num_cpus=IO_TASK_CPUS,
        )
        ds = ds.map_batches(
            Predictor,
            fn_constructor_kwargs={
                "bundle_dir": str(config.model.resolve()),
                "threads": ACTOR_CPUS,
                "ensemble": mode.ensemble,
                "tta": mode.tta,
                "batch_size": config.batch_size,
                "counter": counter,
            },
            # Whole blocks, sliced into forward passes by the actor: with batch_size set here, Ray 2.60 wrote batches
            # of 1,024 rows out of order at 50,000 patches, preserve_order notwithstanding.
            batch_size=None,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=concurrency),
            num_cpus=ACTOR_CPUS,
        )
        with_file_rows(
            source,
            lambda: ds.write_parquet(
                staging.path,
                filesystem=staging.filesystem,
                try_create_dir=staging.local,  # a store needs no folder; its empty marker objects would outlive the run
                schema=schema,
                compression="zstd",
                min_rows_per_file=per_file,
                max_rows_per_file=per_file,
                ray_remote_args={"num_cpus": IO_TASK_CPUS},
            ),
        )
