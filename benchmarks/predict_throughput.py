"""Print patches per second of predict.py (Ray Data, end to end and without start-up) beside plain batched PyTorch.

Example:
    python benchmarks/predict_throughput.py            # 50,000 patches
    python benchmarks/predict_throughput.py --quick    # 5,000 patches
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import band_stats, plain_predict, run_predict  # noqa: E402
from data.synthetic import generate  # noqa: E402
from data.writing import write_split  # noqa: E402
from resnet import ResNet, ResNetConfig  # noqa: E402
from workflows.serving.bundle import export_bundle  # noqa: E402
from workflows.training.checkpoint import save_checkpoint  # noqa: E402

FULL_PATCHES = 50_000
QUICK_PATCHES = 5_000
SEED = 0


def make_inputs(folder: Path, patches: int) -> tuple[Path, Path]:
    """Write ``patches`` synthetic patches to a Parquet file and a bundle of a freshly initialised model."""
    dataset = generate({"test": patches}, seed=SEED)
    data_file = folder / "patches.parquet"
    write_split(data_file, dataset.test, dataset.metadata)
    torch.manual_seed(SEED)
    config = ResNetConfig.from_metadata(dataset.metadata)
    model = ResNet(config)
    checkpoint = folder / "checkpoint"
    checkpoint.mkdir()
    save_checkpoint(
        checkpoint,
        {
            "model": model.state_dict(),
            "optimizer": torch.optim.AdamW(model.parameters()).state_dict(),
            "epoch": 0,
            "band_stats": band_stats(dataset.test.pixels).to_dict(),
            "model_config": config.to_dict(),
            "train_config": {},
            "metadata": dataset.metadata.to_json(),
            "metrics": {},
        },
    )
    return data_file, export_bundle(checkpoint, folder / "bundle")


def main() -> None:
    """Build the inputs, time both ways, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_PATCHES} patches instead of {FULL_PATCHES}")
    parser.add_argument("--patches", type=int, default=None, help="number of patches (overrides --quick)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the plain inference (the best counts)")
    args = parser.parse_args()
    patches = args.patches or (QUICK_PATCHES if args.quick else FULL_PATCHES)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())  # other processes on the machine skew every figure
    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        data_file, bundle_dir = make_inputs(folder, patches)
        print(f"{patches} patches and a bundle written in {time.perf_counter() - started:.1f} s")
        # The whole file in memory, each run of the inference the best of --repeats.
        plain_seconds, plain_with_read = plain_predict(data_file, bundle_dir, args.repeats)
        whole, startup, inference = run_predict(data_file, bundle_dir, folder / "predictions.parquet")
    print(f"torch threads in-process: {torch.get_num_threads()}; CPUs: {os.cpu_count()}; load average at start: {load}")
    rows = [
        ("plain PyTorch, inference only", plain_seconds),
        ("plain PyTorch, incl. reading Parquet", plain_with_read),
        ("predict.py end to end (subprocess, Ray start-up)", whole),
        ("predict.py Ray Data part (no start-up)", inference),
    ]
    for name, seconds in rows:
        print(f"{name:<52}{seconds:>8.1f} s{patches / seconds:>10.0f} patches/s")
    print(f"Ray start-up inside predict.py: {startup:.1f} s")
    ratio = plain_seconds / whole
    print(f"ratio predict.py end to end / plain inference: {ratio:.2f}x (target >= 0.6x at 1M patches: scale.py)")
    print(f"ratio predict.py Ray Data part / plain inference: {plain_seconds / inference:.2f}x")


if __name__ == "__main__":
    main()
