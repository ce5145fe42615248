"""The prediction run (:func:`predict_run`): every check before Ray starts, then the inference and its check."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import ray

from data.folder import child, read_dataset
from data.format import PARQUET_SUFFIX, PatchFileInfo
from data.reading import read_file_info, read_patch_ids
from data.storage import check_reachable, locate
from data.writing import write_split
from workflows.serving.bundle import Bundle, check_compatible, load_bundle
from workflows.serving.evaluate import confusion_metrics
from workflows.serving.predict.config import PredictConfig, PredictResult
from workflows.serving.predict.output import check_not_a_source, check_output, staged_output, stored_parts
from workflows.serving.predict.pipeline import actor_count, write_predictions
from workflows.serving.predict.predictor import output_schema
from workflows.serving.predict.progress import progress_lines
from workflows.serving.predict.verify import check_predictions, put_in_input_order
from workflows.training.cluster import cluster_cpus, connect

log = logging.getLogger(__name__)


@contextmanager
def input_file(path: Path | str, split: str) -> Iterator[tuple[str, str]]:
    """The Parquet file to stream (a path or a URI) and the name messages give it: the file, or a dataset's split.

    Raises:
        PatchFormatError: A dataset folder without the split cannot be carved (see :func:`data.format.read_dataset`).
        StorageError: The object store cannot be asked.
    """
    if not locate(path, "--input").is_dir():
        yield str(path), str(path)
        return
    split_file = child(path, f"{split}{PARQUET_SUFFIX}")
    if locate(split_file, "--input").is_file():
        yield split_file, split_file
        return
    # A folder of one unsplit file (or without this split): read_dataset carves the splits in memory, stratified by
    # class with a fixed seed, which needs every label at once and cannot stream. The carved split is written to a
    # local temporary file and streamed from there like any other (so on a cluster of several nodes, only a folder
    # that holds the split streams from every node).
    dataset = read_dataset(path)
    with tempfile.TemporaryDirectory(prefix="predict-input-") as tmp:
        carved = Path(tmp) / f"{split}{PARQUET_SUFFIX}"
        write_split(carved, dataset.splits[split], dataset.metadata)
        del dataset
        yield str(carved), split_file


def predict_run(config: PredictConfig, progress: Callable[[str], None] | None = None) -> PredictResult:
    """Validate everything, stream the inference into the output and check it; connects to (or starts) Ray.

    Args:
        config: The run.
        progress: Called with each progress line; None logs them.

    Raises:
        BundleError: The bundle is invalid or the input does not match it.
        PatchFormatError: The input is not in the patch format (a bad row: named by file and row).
        FileExistsError: The output exists and ``overwrite`` is false, or it would replace an input.
        OSError: The output cannot be written.
        ValueError: The output's folder cannot be written.
        StorageError: An input or output URI's bucket does not exist, or the store refuses access (one line naming
            the flag and the URI; checked before Ray starts).
    """
    say = progress or log.info
    for flag, value in (("--input", config.input), ("--output", config.output)):
        check_reachable(locate(value, flag), flag)
    check_not_a_source(config.output, config.input, config.model)  # first: it names what the output would replace
    check_output(config.output, config.overwrite)
    bundle = load_bundle(config.model)
    with input_file(config.input, config.split) as (source, where):
        info = read_file_info(source, require_labels=False)
        check_compatible(bundle.metadata, info.metadata, where, labelled=info.labelled)
        read_patch_ids(source)  # before Ray starts: the one check that needs every row
        started = time.perf_counter()
        started_ray = not ray.is_initialized()
        connect(config.address, config.num_cpus)
        try:
            connected = time.perf_counter()
            confusion = _classify(config, bundle, source, where, info, say)
            finished = time.perf_counter()
        finally:
            if started_ray:
                # Disconnect (and stop a cluster this call started) now, not at interpreter exit: torn down then, the
                # local GCS logged "KillActor RPC failed ... Socket closed" for the pool's actors after our output.
                ray.shutdown()
    metrics = confusion_metrics(confusion) if confusion is not None else {}
    return PredictResult(
        output=config.output,
        patches=info.num_rows,
        seconds=finished - started,
        startup_seconds=connected - started,
        inference_seconds=finished - connected,
        accuracy=metrics.get("accuracy"),
        macro_f1=metrics.get("macro_f1"),
    )


def _classify(
    config: PredictConfig, bundle: Bundle, source: str, where: str, info: PatchFileInfo, say: Callable[[str], None]
) -> np.ndarray | None:
    """Write and check the predictions on the connected cluster; the confusion matrix when the input is labelled."""
    started = time.perf_counter()
    concurrency = actor_count(cluster_cpus(), config.concurrency, info.num_rows)
    mode = bundle.prediction_mode(config.ensemble, config.tta)
    members, views = len(bundle.models) if mode.ensemble else 1, len(bundle.views) if mode.tta else 1
    say(
        f"classifying {info.num_rows} patches from {where} with {concurrency} model actors "
        f"({members} member(s) x {views} view(s) each)"
    )
    with progress_lines(info.num_rows, say) as counter, staged_output(config.output, config.overwrite) as staging:
        schema = output_schema(bundle, config.model, where)
        write_predictions(source, info, staging, schema, config, concurrency, mode, counter)
        parts = put_in_input_order(source, stored_parts(staging))
        confusion = check_predictions(source, info, parts, list(bundle.metadata.classes))
        rate = info.num_rows / max(time.perf_counter() - started, 1e-9)
        say(f"predicted {info.num_rows}/{info.num_rows} patches ({rate:.0f}/s)")
    return confusion
