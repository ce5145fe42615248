"""Batch prediction with Ray Data: classify a Parquet file or dataset split with an exported model bundle.

Example:
    python workflows/predict.py --model results/bundle --input data/default --split test --output preds.parquet
    python workflows/predict.py --model results/bundle --input s3://bucket/patches.parquet --output s3://bucket/preds

The output has one row per patch, in input order: ``patch_id``, ``predicted_label`` and one ``prob_<class>``
column per class of the model; an ``--output`` ending in ``.parquet`` is one file, any other name a folder of part
files. ``--input`` and ``--output`` may be object-store URIs (credentials and endpoint from the standard ``AWS_*``
environment variables); ``--model`` is a local folder. When the input has labels, accuracy and macro-F1 are printed
too. The work is :func:`workflows.serving.predict.predict_run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

from data.format import SPLITS, PatchFormatError
from data.messages import one_line
from workflows.jobs.flags import positive_int
from workflows.serving.bundle import BundleError
from workflows.serving.predict import PredictConfig, config_defaults, predict_run

DEFAULTS = config_defaults()


def build_parser() -> argparse.ArgumentParser:
    """Flags of the prediction script."""
    parser = argparse.ArgumentParser(
        description="Classify patches with an exported model bundle using Ray Data (one model load per actor). "
        "Writes patch_id, predicted_label and prob_<class> columns; prints accuracy and macro-F1 when the input "
        "has labels. --input and --output take a local path or an object-store URI (s3://bucket/prefix, or any "
        "URI pyarrow.fs resolves); for S3 the credentials and endpoint come from the standard AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION and AWS_ENDPOINT_URL (an S3-compatible server) environment "
        "variables, which Ray's workers inherit.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        help="model bundle folder (bundle.json, weights*.pt) on this machine: a local path, not a URI",
    )
    parser.add_argument(
        "--input", required=True, help="a Parquet file of patches or a dataset folder: a local path or a URI"
    )
    parser.add_argument(
        "--split", choices=SPLITS, default=DEFAULTS["split"], help="split to classify when --input is a folder"
    )
    parser.add_argument(
        "--output",
        required=True,
        help="a local path or a URI. A name ending in .parquet: one Parquet file; any other name: a folder of part "
        "files (for large inputs), in input order by file name. Written under a temporary name beside it and moved "
        "into place when complete",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file or folder")
    parser.add_argument(
        "--batch-size", type=positive_int, default=DEFAULTS["batch_size"], help="patches per forward pass"
    )
    parser.add_argument(
        "--ensemble",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS["ensemble"],
        help="average all the bundle's members; --no-ensemble: its best member alone (default: the bundle's mode)",
    )
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS["tta"],
        help="average over the flips/rotations the model was trained with; --no-tta: the patches as they are "
        "(default: the bundle's mode)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=DEFAULTS["concurrency"],
        help="model actors (default and most: one per cluster CPU but one, which reads and writes)",
    )
    parser.add_argument(
        "--address", default=DEFAULTS["address"], help="Ray cluster address ('local' starts a private one)"
    )
    parser.add_argument(
        "--num-cpus", type=positive_int, default=DEFAULTS["num_cpus"], help="CPUs of a new local cluster (default: all)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input, 1 for a run that failed, with one line on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        config = PredictConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PredictConfig)})
        result = predict_run(config, progress=functools.partial(print, flush=True))
    except (BundleError, PatchFormatError, OSError, ValueError) as err:
        print(f"error: {one_line(err, limit=None)}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # the run failed its own check of the output: nothing was put in place
        print(f"error: {one_line(err, limit=None)}; no output was written", file=sys.stderr)
        return 1
    if result.accuracy is not None:
        print(f"accuracy {result.accuracy:.4f}   macro-F1 {result.macro_f1:.4f}")
    print(
        f"predicted {result.patches} patches in {result.seconds:.1f} s "
        f"(Ray start-up {result.startup_seconds:.1f} s, inference {result.inference_seconds:.1f} s, "
        f"{result.patches / result.inference_seconds:.0f} patches/s); wrote {result.output}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
