"""Batch prediction with Ray Data: classify a Parquet file or dataset split with an exported model bundle.

Example:
    python workflows/predict.py --model results/bundle --input data/default --split test --output preds.parquet

The output Parquet file has one row per patch, in input order: ``patch_id``, ``predicted_label`` and one
``prob_<class>`` column per class of the model. When the input has labels, accuracy and macro-F1 are printed too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch

from data.atomic import check_creatable
from data.format import (
    DATASET_FILES,
    PARQUET_SUFFIX,
    PATCH_ID,
    PIXELS,
    SPLITS,
    PatchFormatError,
    PatchMetadata,
    PatchSplit,
    read_dataset,
    read_split,
    write_table_atomic,
)
from data.messages import one_line
from serving.bundle import BundleError, check_compatible, load_bundle
from serving.evaluate import PREDICT_BATCH_SIZE, classification_metrics
from training.cluster import cluster_cpus, connect
from workflows.flags import positive_int

PREDICTED_LABEL = "predicted_label"
PROBABILITY_PREFIX = "prob_"
OUTPUT_METADATA_KEY = "predictions"
# Rows per Ray Data block: small enough to spread over the actors and show progress, large enough to keep the
# per-block overhead (a task hand-over, a progress line) far below the forward passes it carries.
BLOCK_ROWS = 4096
# A progress line each time another tenth of the patches is done.
PROGRESS_STEPS = 10


def probability_column(class_name: str) -> str:
    """Name of the output column holding the probability of one class."""
    return f"{PROBABILITY_PREFIX}{class_name}"


class Predictor:
    """Ray Data callable class: each actor loads the bundle once, then classifies batches of raw pixels.

    Args:
        bundle_dir: The model bundle folder.
        threads: Torch intra-op threads of this actor (one per CPU it holds).
        ensemble: Average all the bundle's members (False: the best alone); None: the bundle's default.
        tta: Average over its test-time augmentation views (False: none); None: the bundle's default.
    """

    def __init__(
        self, bundle_dir: str, threads: int = 1, ensemble: bool | None = None, tta: bool | None = None
    ) -> None:
        torch.set_num_threads(threads)
        self.bundle = load_bundle(bundle_dir)
        self.ensemble, self.tta = ensemble, tta
        self.classes = np.asarray(self.bundle.metadata.classes, dtype=object)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Patch ids, predicted class names and class probabilities of one batch."""
        pixels = np.asarray(batch[PIXELS], dtype=np.float32)  # (B, C, H, W), raw values
        probabilities = self.bundle.predict_probabilities(pixels, ensemble=self.ensemble, tta=self.tta)  # (B, K)
        out = {PATCH_ID: batch[PATCH_ID], PREDICTED_LABEL: self.classes[probabilities.argmax(axis=1)]}
        for k, name in enumerate(self.bundle.metadata.classes):
            out[probability_column(name)] = probabilities[:, k]
        return out


def build_parser() -> argparse.ArgumentParser:
    """Flags of the prediction script."""
    parser = argparse.ArgumentParser(
        description="Classify patches with an exported model bundle using Ray Data (one model load per actor). "
        "Writes a Parquet file of patch_id, predicted_label and prob_<class> columns; prints accuracy and macro-F1 "
        "when the input has labels.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="model bundle folder (bundle.json, weights*.pt)")
    parser.add_argument("--input", type=Path, required=True, help="a Parquet file of patches or a dataset folder")
    parser.add_argument("--split", choices=SPLITS, default="test", help="split to classify when --input is a folder")
    parser.add_argument("--output", type=Path, required=True, help="Parquet file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--batch-size", type=positive_int, default=PREDICT_BATCH_SIZE, help="patches per forward pass")
    parser.add_argument(
        "--ensemble",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average all the bundle's members; --no-ensemble: its best member alone (default: the bundle's mode)",
    )
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average over the flips/rotations the model was trained with; --no-tta: the patches as they are "
        "(default: the bundle's mode)",
    )
    parser.add_argument(
        "--concurrency", type=positive_int, default=None, help="model actors (default: one per cluster CPU)"
    )
    parser.add_argument("--address", default=None, help="Ray cluster address ('local' starts a private one)")
    parser.add_argument(
        "--num-cpus", type=positive_int, default=None, help="CPUs of a new local cluster (default: all)"
    )
    return parser


def read_input(path: Path, split: str) -> tuple[PatchSplit, PatchMetadata]:
    """The patches to classify: a Parquet file as it is, or one split of a dataset folder (labels optional).

    Raises:
        PatchFormatError: The input is missing or not in the patch format.
    """
    if path.is_dir():
        split_file = path / f"{split}.parquet"
        if split_file.is_file():
            return read_split(split_file, require_labels=False)
        dataset = read_dataset(path)  # a single unsplit file, carved into splits
        return dataset.splits[split], dataset.metadata
    return read_split(path, require_labels=False)


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse an output path that exists (unless ``overwrite``), is a folder, or whose folder cannot be written.

    Raises:
        FileExistsError: The output exists and may not be replaced.
        OutputLocationError: A part of the output's folder is a file, or it is not writable.
    """
    if path.is_dir():
        raise FileExistsError(f"{path}: is a folder; --output must name a Parquet file")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{path}: already exists; pass --overwrite or choose another --output")
    check_creatable(path, "--output")


def check_not_a_source(output: Path, input_path: Path, bundle_dir: Path) -> None:
    """Refuse an output that is the input, a file of the input dataset folder, or inside the model bundle.

    Paths are compared resolved (symbolic links followed) and, where both exist, with ``os.path.samefile`` (hard
    links), so no spelling of the path lets the predictions replace what they are computed from.

    Raises:
        FileExistsError: One line naming what the output would replace.
    """
    if _inside(output, bundle_dir):
        raise FileExistsError(
            f"--output {output}: is inside the --model bundle folder {bundle_dir}; choose another --output"
        )
    if input_path.is_dir():
        if _inside(output, input_path) and output.name.endswith(PARQUET_SUFFIX):
            raise FileExistsError(
                f"--output {output}: is a Parquet file inside the --input dataset folder {input_path}, which would "
                "change the dataset; choose another --output"
            )
        sources: Iterable[Path] = [input_path / name for name in DATASET_FILES] + sorted(input_path.glob("*.parquet"))
    else:
        sources = [input_path]
    for source in sources:
        if _same_file(output, source):
            raise FileExistsError(
                f"--output {output}: is the input file {source}; predictions must not replace the patches, choose "
                "another --output"
            )


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file: through symbolic links (resolved) or hard links (same inode)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies within it, symbolic links resolved."""
    folder = folder.resolve()
    return path.resolve() == folder or folder in path.resolve().parents


def input_table(split: PatchSplit) -> pa.Table:
    """Patch ids and raw pixels as an Arrow table with a tensor column, shape (N, C, H, W)."""
    from ray.data.extensions import ArrowTensorArray

    return pa.table(
        {
            PATCH_ID: pa.array(split.patch_ids.tolist(), type=pa.string()),
            PIXELS: ArrowTensorArray.from_numpy(split.pixels),
        }
    )


def run_inference(
    split: PatchSplit,
    bundle_dir: Path,
    batch_size: int,
    concurrency: int,
    ensemble: bool | None = None,
    tta: bool | None = None,
) -> pa.Table:
    """Classify a split on the connected Ray cluster with a pool of :class:`Predictor` actors; rows in input order.

    ``ensemble`` and ``tta`` choose the prediction mode as in :meth:`serving.bundle.Bundle.predict_probabilities`.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # our own progress lines below; Ray's bars garble captured logs
    context.print_on_execution_start = False
    context.execution_options.preserve_order = True
    table = input_table(split)
    blocks = max(concurrency, math.ceil(len(table) / BLOCK_ROWS))
    rows = math.ceil(len(table) / blocks)
    ds = ray.data.from_arrow([table.slice(start, rows) for start in range(0, len(table), rows)])
    predictions = ds.map_batches(
        Predictor,
        fn_constructor_kwargs={"bundle_dir": str(bundle_dir.resolve()), "threads": 1, "ensemble": ensemble, "tta": tta},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=1,
    )
    parts, done, next_report = [], 0, len(table) / PROGRESS_STEPS
    started = time.perf_counter()
    for part in predictions.iter_batches(batch_size=None, batch_format="pyarrow"):
        parts.append(part)
        done += part.num_rows
        if done >= next_report or done == len(table):
            rate = done / max(time.perf_counter() - started, 1e-9)
            print(f"predicted {done}/{len(table)} patches ({rate:.0f}/s)", flush=True)
            next_report = done + len(table) / PROGRESS_STEPS
    return pa.concat_tables(parts)


def predict(args: argparse.Namespace) -> dict[str, Any]:
    """Validate everything, run the inference and write the output; returns a summary.

    Raises:
        BundleError: The bundle is invalid or the input does not match it.
        PatchFormatError: The input is not in the patch format.
        FileExistsError: The output exists and ``--overwrite`` was not given, or it would replace an input.
        OSError: The output cannot be written.
        ValueError: A flag has an impossible value, or the output's folder cannot be written.
    """
    if args.batch_size < 1 or (args.concurrency is not None and args.concurrency < 1):
        raise ValueError("--batch-size and --concurrency must be at least 1")
    check_output(args.output, args.overwrite)
    check_not_a_source(args.output, args.input, args.model)
    bundle = load_bundle(args.model)
    split, metadata = read_input(args.input, args.split)
    where = str(args.input / f"{args.split}.parquet") if args.input.is_dir() else str(args.input)
    check_compatible(bundle.metadata, metadata, where, labelled=split.labels is not None)

    started = time.perf_counter()
    started_ray = not ray.is_initialized()
    connect(args.address, args.num_cpus)
    try:
        connected = time.perf_counter()
        concurrency = args.concurrency or max(1, int(cluster_cpus()))
        concurrency = min(concurrency, len(split))
        mode = bundle.prediction_mode(args.ensemble, args.tta)
        members, views = len(bundle.models) if mode.ensemble else 1, len(bundle.views) if mode.tta else 1
        print(
            f"classifying {len(split)} patches from {where} with {concurrency} model actors "
            f"({members} member(s) x {views} view(s) each)",
            flush=True,
        )
        table = run_inference(split, args.model, args.batch_size, concurrency, mode.ensemble, mode.tta)
        finished = time.perf_counter()
    finally:
        if started_ray:
            # Disconnect (and stop a cluster that this call started) now, not at interpreter exit: torn down then,
            # the local GCS logged "KillActor RPC failed ... Socket closed" for the pool's actors after our output.
            ray.shutdown()

    if table.num_rows != len(split) or table.column(PATCH_ID).to_pylist() != split.patch_ids.tolist():
        raise RuntimeError(f"Ray Data returned {table.num_rows} rows for {len(split)} patches, or out of order")
    table = table.replace_schema_metadata(
        {
            OUTPUT_METADATA_KEY: json.dumps(
                {"model": str(args.model.resolve()), "input": where, "classes": list(bundle.metadata.classes)}
            )
        }
    )
    check_output(args.output, args.overwrite)  # nobody wrote it meanwhile
    write_table_atomic(args.output, table)

    summary: dict[str, Any] = {
        "patches": len(split),
        "seconds": finished - started,
        "startup_seconds": connected - started,
        "inference_seconds": finished - connected,
    }
    if split.labels is not None:
        index = {name: i for i, name in enumerate(bundle.metadata.classes)}
        predicted = np.asarray([index[name] for name in table.column(PREDICTED_LABEL).to_pylist()])
        metrics = classification_metrics(split.labels, predicted, list(bundle.metadata.classes))
        summary.update(accuracy=metrics["accuracy"], macro_f1=metrics["macro_f1"])
        print(f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}")
    print(
        f"predicted {len(split)} patches in {summary['seconds']:.1f} s "
        f"(Ray start-up {summary['startup_seconds']:.1f} s, inference {summary['inference_seconds']:.1f} s, "
        f"{len(split) / summary['inference_seconds']:.0f} patches/s); wrote {args.output}",
        flush=True,
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input, with one line on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        predict(args)
    except (BundleError, PatchFormatError, OSError, ValueError) as err:
        print(f"error: {one_line(err, limit=None)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # Run the importable module's main: Ray pickles a class defined in __main__ by value, torch globals and all, and
    # that fails; ``workflows.predict.Predictor`` travels by reference and the actors import it.
    from workflows import predict as _module

    sys.exit(_module.main())
