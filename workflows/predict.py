"""Batch prediction with Ray Data: classify a Parquet file or dataset split with an exported model bundle.

Example:
    python workflows/predict.py --model results/bundle --input data/default --split test --output preds.parquet

The patches stream from ``ray.data.read_parquet`` through a pool of model actors to Parquet written by Ray's write
tasks; the driver never holds pixels or predictions. The output has one row per patch, in input order:
``patch_id``, ``predicted_label`` and one ``prob_<class>`` column per class of the model. It is one Parquet file,
or for large inputs a folder of part files (see ``--layout``) that appears only once complete. When the input has
labels, accuracy and macro-F1 are printed too (from confusion counts summed per write task).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import ray

from data.atomic import check_creatable, write_file_atomic, write_folder_atomic
from data.format import DATASET_FILES, PARQUET_SUFFIX, SPLITS, PatchFormatError
from data.messages import brief_list, one_line
from workflows.bundle import Bundle, BundleError, check_compatible, load_bundle
from workflows.cluster import cluster_cpus, cluster_gpus, connect
from workflows.evaluate import metrics_from_confusion
from workflows.flags import non_negative_float, positive_float, positive_int
from workflows.inference import BLOCK_ROWS, PREDICT_BATCH_SIZE, ActorResources, write_predictions
from workflows.patch_stream import PatchSource, input_error, open_source
from workflows.predictions import OUTPUT_METADATA_KEY, PART_FILE_PATTERN, PartWritten, join_parts

# --layout: one Parquet file, a folder of part files, or the one that suits the number of patches.
AUTO, FILE, FOLDER = "auto", "file", "folder"
LAYOUTS = (AUTO, FILE, FOLDER)
# Patches up to which --layout auto writes one file (about 50 bytes a patch here: 5 MB), joined from the part files
# by one Ray task at the end; past it, a folder keeps the part files as they are.
SINGLE_FILE_ROWS = 100_000
# Progress shows each tenth of the patches: the write tasks' part files hold a tenth each, at most PART_FILE_ROWS.
PROGRESS_STEPS = 10
PART_FILE_ROWS = 50_000


def build_parser() -> argparse.ArgumentParser:
    """Flags of the prediction script."""
    parser = argparse.ArgumentParser(
        description="Classify patches with an exported model bundle using Ray Data (one model load per actor). "
        "Writes Parquet of patch_id, predicted_label and prob_<class> columns, in input order; prints accuracy and "
        "macro-F1 when the input has labels.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="model bundle folder (bundle.json, weights*.pt)")
    parser.add_argument("--input", type=Path, required=True, help="a Parquet file of patches or a dataset folder")
    parser.add_argument("--split", choices=SPLITS, default="test", help="split to classify when --input is a folder")
    parser.add_argument("--output", type=Path, required=True, help="Parquet file (or folder, see --layout) to write")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=AUTO,
        help=f"file: one Parquet file; folder: a folder of part files part-00000.parquet, part-00001.parquet, ... "
        f"(a tenth of the patches each, at most {PART_FILE_ROWS:,}, in input order; pyarrow and pandas read the "
        f"folder as one table); auto: one file up to {SINGLE_FILE_ROWS:,} patches, else a folder. Either appears "
        "under its name only once complete",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file or folder")
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
        "--concurrency",
        type=positive_int,
        default=None,
        help="model actors (default: as many as the cluster's CPUs, or GPUs with --gpus-per-actor, hold at once)",
    )
    parser.add_argument(
        "--cpus-per-actor",
        type=positive_float,
        default=ActorResources.cpus,
        help="CPUs each model actor holds; it runs that many torch threads",
    )
    parser.add_argument(
        "--gpus-per-actor",
        type=non_negative_float,
        default=ActorResources.gpus,
        help="GPUs each model actor holds (a fraction shares one); above 0 the models run on CUDA",
    )
    parser.add_argument("--address", default=None, help="Ray cluster address ('local' starts a private one)")
    parser.add_argument(
        "--num-cpus", type=positive_int, default=None, help="CPUs of a new local cluster (default: all)"
    )
    return parser


def choose_layout(layout: str, rows: int) -> str:
    """The layout of an output of ``rows`` patches: ``file`` or ``folder`` (``auto`` decides by size)."""
    if layout != AUTO:
        return layout
    return FILE if rows <= SINGLE_FILE_ROWS else FOLDER


def prediction_files(folder: Path) -> set[str]:
    """The part files a predictions folder holds: what writing predictions over it may replace."""
    present = [entry.name for entry in folder.iterdir()] if folder.is_dir() else []
    return set(filter(PART_FILE_PATTERN.fullmatch, present))


def check_output(path: Path, overwrite: bool, layout: str = AUTO) -> None:
    """Refuse an output that exists (unless ``overwrite``), is not ours to replace, or cannot be written.

    A folder is ours when it holds nothing but part files; it can only be replaced by a folder. Before the input
    is read the layout may still be ``auto``.

    Raises:
        FileExistsError: The output exists and may not be replaced.
        OutputLocationError: A part of the output's folder is a file, or it is not writable.
    """
    if path.is_dir() and not path.is_symlink():
        foreign = sorted(e.name for e in path.iterdir() if not (e.is_file() and PART_FILE_PATTERN.fullmatch(e.name)))
        if foreign:
            raise FileExistsError(
                f"{path}: is a folder holding {brief_list(foreign)}, not a folder of predictions; choose another "
                "--output"
            )
        if layout == FILE:
            raise FileExistsError(
                f"{path}: is a folder of predictions and --layout {FILE} writes one file; pass --layout {FOLDER} or "
                "choose another --output"
            )
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{path}: already exists; pass --overwrite or choose another --output")
    check_creatable(path, "--output", folder=layout == FOLDER)


def check_not_a_source(output: Path, input_path: Path, bundle_dir: Path) -> None:
    """Refuse an output that is the input, holds it, is a file of the input dataset folder, or is in the bundle.

    Paths are compared resolved (symbolic links followed) and, where both exist, with ``os.path.samefile`` (hard
    links), so no spelling of the path lets the predictions replace what they are computed from.

    Raises:
        FileExistsError: One line naming what the output would replace.
    """
    if _inside(output, bundle_dir) or _inside(bundle_dir, output):
        raise FileExistsError(
            f"--output {output}: is inside the --model bundle folder {bundle_dir}, or holds it; choose another --output"
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
        if _same_file(output, source) or _inside(source, output):
            raise FileExistsError(
                f"--output {output}: is the input file {source}, or holds it; predictions must not replace the "
                "patches, choose another --output"
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


def write_output(args: argparse.Namespace, source: PatchSource, layout: str, **inference: Any) -> list[PartWritten]:
    """Run the inference into a temporary folder and publish it: renamed as the folder, or joined into the one file.

    Raises:
        RuntimeError: Ray Data wrote another number of rows than the input holds.
    """
    rows_per_part = min(PART_FILE_ROWS, math.ceil(source.rows / PROGRESS_STEPS))
    if layout == FOLDER:
        owned = prediction_files(args.output)
        with write_folder_atomic(args.output, owned, "predictions", overwrite=args.overwrite) as tmp:
            parts = write_predictions(source, folder=tmp, rows_per_file=rows_per_part, **inference)
            _check_rows(parts, source)
        return parts
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{args.output.name}.", suffix=".tmp", dir=args.output.parent) as tmp:
        parts = write_predictions(source, folder=Path(tmp), rows_per_file=rows_per_part, **inference)
        _check_rows(parts, source)
        joined = join_parts(Path(tmp), parts)
        check_output(args.output, args.overwrite, layout)  # nobody wrote it meanwhile
        write_file_atomic(args.output, functools.partial(_copy, joined))
    return parts


def _copy(path: Path, handle: Any) -> None:
    """Copy a file's bytes into ``handle``."""
    with path.open("rb") as source:
        shutil.copyfileobj(source, handle)


def _check_rows(parts: list[PartWritten], source: PatchSource) -> None:
    written = sum(part.rows for part in parts)
    if written != source.rows:
        raise RuntimeError(f"Ray Data wrote {written} predictions for {source.rows} patches of {source.where}")


def _progress(total: int, started: float) -> Any:
    """A callback printing ``predicted done/total patches (rate/s)`` each time another tenth is done."""
    shown = {"next": total / PROGRESS_STEPS}

    def report(done: int) -> None:
        if done >= shown["next"] or done == total:
            rate = done / max(time.perf_counter() - started, 1e-9)
            print(f"predicted {done}/{total} patches ({rate:.0f}/s)", flush=True)
            shown["next"] = done + total / PROGRESS_STEPS

    return report


def predict(args: argparse.Namespace) -> dict[str, Any]:
    """Validate everything, stream the inference and write the output; returns a summary.

    Raises:
        BundleError: The bundle is invalid or the input does not match it.
        PatchFormatError: The input is not in the patch format (a block's problem names its file row).
        FileExistsError: The output exists and ``--overwrite`` was not given, or it would replace an input.
        OSError: The output cannot be written.
        ValueError: A flag has an impossible value, or the output's folder cannot be written.
    """
    if args.batch_size < 1 or (args.concurrency is not None and args.concurrency < 1):
        raise ValueError("--batch-size and --concurrency must be at least 1")
    resources = ActorResources(cpus=args.cpus_per_actor, gpus=args.gpus_per_actor)
    check_output(args.output, args.overwrite)
    check_not_a_source(args.output, args.input, args.model)
    bundle = load_bundle(args.model)
    source = open_source(args.input, args.split)
    check_compatible(bundle.metadata, source.metadata, source.where, labelled=source.labelled)
    layout = choose_layout(args.layout, source.rows)
    check_output(args.output, args.overwrite, layout)

    started = time.perf_counter()
    started_ray = not ray.is_initialized()
    connect(args.address, args.num_cpus)
    try:
        connected = time.perf_counter()
        parts = _stream(args, source, bundle, layout, resources, started=connected)
        finished = time.perf_counter()
    finally:
        if started_ray:
            # Disconnect (and stop a cluster that this call started) now, not at interpreter exit: torn down then,
            # the local GCS logged "KillActor RPC failed ... Socket closed" for the pool's actors after our output.
            ray.shutdown()

    summary: dict[str, Any] = {
        "patches": source.rows,
        "seconds": finished - started,
        "startup_seconds": connected - started,
        "inference_seconds": finished - connected,
        "layout": layout,
        "files": len(parts) if layout == FOLDER else 1,
    }
    if source.labelled:
        metrics = metrics_from_confusion(
            np.sum([part.confusion for part in parts], axis=0), list(bundle.metadata.classes)
        )
        summary.update(accuracy=metrics["accuracy"], macro_f1=metrics["macro_f1"])
        print(f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}")
    shown = f"{args.output} ({len(parts)} part files)" if layout == FOLDER else str(args.output)
    print(
        f"predicted {source.rows} patches in {summary['seconds']:.1f} s "
        f"(Ray start-up {summary['startup_seconds']:.1f} s, inference {summary['inference_seconds']:.1f} s, "
        f"{source.rows / summary['inference_seconds']:.0f} patches/s); wrote {shown}",
        flush=True,
    )
    return summary


def _stream(
    args: argparse.Namespace,
    source: PatchSource,
    bundle: Bundle,
    layout: str,
    resources: ActorResources,
    started: float,
) -> list[PartWritten]:
    """Size the actor pool, say what runs, and stream the predictions to the output on the connected cluster.

    Raises:
        PatchFormatError: A block of the input is not in the patch format.
        ValueError: The actors ask for GPUs and the cluster has none.
    """
    gpus = cluster_gpus()
    if resources.gpus > 0 and not gpus:
        raise ValueError(f"--gpus-per-actor {resources.gpus:g}: the Ray cluster has no GPUs; leave the flag out")
    concurrency = args.concurrency or resources.pool_size(cluster_cpus(), gpus)
    concurrency = min(concurrency, math.ceil(source.rows / BLOCK_ROWS))
    mode = bundle.prediction_mode(args.ensemble, args.tta)
    members, views = len(bundle.models) if mode.ensemble else 1, len(bundle.views) if mode.tta else 1
    print(
        f"classifying {source.rows} patches from {source.where} with {concurrency} model actors "
        f"({members} member(s) x {views} view(s) each)",
        flush=True,
    )
    classes = list(bundle.metadata.classes)
    description = {"model": str(args.model.resolve()), "input": source.where, "classes": classes}
    try:
        return write_output(
            args,
            source,
            layout,
            load=functools.partial(load_bundle, str(args.model.resolve())),
            classes=classes,
            file_metadata={OUTPUT_METADATA_KEY: json.dumps(description)},
            batch_size=args.batch_size,
            concurrency=concurrency,
            resources=resources,
            ensemble=mode.ensemble,
            tta=mode.tta,
            progress=_progress(source.rows, started),
        )
    except Exception as err:  # noqa: BLE001 - only the input's own problems are turned into one line
        raise input_error(err, source.where) from None


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
    sys.exit(main())
