"""Print patches per second of predict.py (Ray Data, end to end and without start-up) beside plain batched PyTorch.

Example:
    python benchmarks/predict_throughput.py            # 50,000 patches
    python benchmarks/predict_throughput.py --quick    # 5,000 patches
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from data.format import read_split, write_split
from data.pipeline import compute_band_stats
from data.synthetic import generate
from resnet import ResNet, ResNetConfig
from serving.bundle import export_bundle, load_bundle
from training.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "workflows" / "predict.py"
FULL_PATCHES = 50_000
QUICK_PATCHES = 5_000
SEED = 0
# predict.py's summary line: "... (Ray start-up 3.2 s, inference 12.5 s, ...".
SUMMARY = re.compile(r"Ray start-up ([\d.]+) s, inference ([\d.]+) s")


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
            "band_stats": compute_band_stats(dataset.test.pixels).to_dict(),
            "model_config": config.to_dict(),
            "train_config": {},
            "metadata": dataset.metadata.to_json(),
            "metrics": {},
        },
    )
    return data_file, export_bundle(checkpoint, folder / "bundle")


def plain(data_file: Path, bundle_dir: Path, repeats: int) -> tuple[float, float]:
    """Seconds for in-process inference (normalise and forward, batches of 1024), without and with reading.

    The best of ``repeats`` runs: on a shared machine other processes only ever make a run slower.
    """
    started = time.perf_counter()
    split, _ = read_split(data_file)
    bundle = load_bundle(bundle_dir)
    reading = time.perf_counter() - started
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        bundle.predict_probabilities(split.pixels)
        best = min(best, time.perf_counter() - started)
    return best, best + reading


def ray_script(data_file: Path, bundle_dir: Path, output: Path) -> tuple[float, float, float]:
    """predict.py as a subprocess with its own local Ray: (whole run, Ray start-up, inference) seconds."""
    started = time.perf_counter()
    args = ["--model", bundle_dir, "--input", data_file, "--output", output, "--address", "local"]
    result = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"predict.py failed:\n{result.stderr[-3000:]}")
    found = SUMMARY.search(result.stdout)
    if found is None:
        raise RuntimeError(f"predict.py printed no summary line:\n{result.stdout[-2000:]}")
    return elapsed, float(found.group(1)), float(found.group(2))


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
        plain_seconds, plain_with_read = plain(data_file, bundle_dir, args.repeats)
        whole, startup, inference = ray_script(data_file, bundle_dir, folder / "predictions.parquet")
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
    print(f"ratio predict.py end to end / plain inference: {plain_seconds / whole:.2f}x (target >= 0.5x)")
    print(f"ratio predict.py Ray Data part / plain inference: {plain_seconds / inference:.2f}x")


if __name__ == "__main__":
    main()
