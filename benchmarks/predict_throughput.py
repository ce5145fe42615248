"""Print patches per second of predict.py (its Ray Data part and end to end) beside plain batched PyTorch, one run.

Example:
    python benchmarks/predict_throughput.py                     # 50,000 patches
    python benchmarks/predict_throughput.py --patches 1000000   # 1M patches (3.6 GB of Parquet in --workdir)
    python benchmarks/predict_throughput.py --quick             # 5,000 patches

The input file is written chunk by chunk and the plain PyTorch figure is measured on at most ``--plain-patches`` of
its rows (the cost per patch does not depend on the count), so memory stays small at any size. predict.py runs as
a user runs it, a subprocess with its own local Ray, under GNU ``/usr/bin/time -v``; its driver's own peak resident
memory is also sampled (``time`` reports the largest of the driver and the Ray processes it reaped).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from data.format import decode_pixels, to_table
from data.pipeline import compute_band_stats
from data.synthetic import generate
from resnet import ResNet, ResNetConfig
from workflows.bundle import export_bundle, load_bundle
from workflows.loop import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "workflows" / "predict.py"
FULL_PATCHES = 50_000
QUICK_PATCHES = 5_000
SEED = 0
# Patches generated and written at a time: about 180 MB of 14 x 8 x 8 float32 pixels.
CHUNK_PATCHES = 50_000
# Patches the plain PyTorch inference is timed on at most (its throughput is per patch).
PLAIN_PATCHES = 100_000
# predict.py's summary line: "... (Ray start-up 3.2 s, inference 12.5 s, ...".
SUMMARY = re.compile(r"Ray start-up ([\d.]+) s, inference ([\d.]+) s")
MAX_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")
RSS_POLL_S = 0.1
# Targets of issue #12 at 1M patches: the Ray Data part and the whole run against plain batched PyTorch.
RAY_DATA_TARGET, END_TO_END_TARGET = 0.8, 0.6


def make_inputs(folder: Path, patches: int) -> tuple[Path, Path]:
    """Write ``patches`` synthetic patches to one Parquet file, chunk by chunk, and a bundle of a fresh model."""
    data_file = folder / "patches.parquet"
    writer, stats, metadata = None, None, None
    for index, start in enumerate(range(0, patches, CHUNK_PATCHES)):
        dataset = generate({"test": min(CHUNK_PATCHES, patches - start)}, seed=SEED + index)
        chunk = dataset.test
        ids = np.asarray([f"c{index:03d}-{pid}" for pid in chunk.patch_ids], dtype=object)  # unique across chunks
        table = to_table(dataclasses.replace(chunk, patch_ids=ids), dataset.metadata)
        if writer is None:
            writer = pq.ParquetWriter(data_file, table.schema, compression="zstd")
            stats, metadata = compute_band_stats(chunk.pixels), dataset.metadata
        writer.write_table(table)
    assert writer is not None and stats is not None and metadata is not None
    writer.close()
    torch.manual_seed(SEED)
    config = ResNetConfig.from_metadata(metadata)
    model = ResNet(config)
    checkpoint = folder / "checkpoint"
    checkpoint.mkdir()
    save_checkpoint(
        checkpoint,
        {
            "model": model.state_dict(),
            "optimizer": torch.optim.AdamW(model.parameters()).state_dict(),
            "epoch": 0,
            "band_stats": stats.to_dict(),
            "model_config": config.to_dict(),
            "train_config": {},
            "metadata": metadata.to_json(),
            "metrics": {},
        },
    )
    return data_file, export_bundle(checkpoint, folder / "bundle")


def plain(data_file: Path, bundle_dir: Path, patches: int, repeats: int, tta: bool) -> tuple[int, float, float]:
    """Plain batched PyTorch in this process (normalise and forward, batches of 1024), with TTA or without.

    Returns:
        The patches timed (the file's first ``patches``), and the wall and CPU seconds of the best of ``repeats``
        runs: on a shared machine other processes only ever make a run slower.
    """
    bundle = load_bundle(bundle_dir)
    with pq.ParquetFile(data_file) as parquet:
        batch = next(parquet.iter_batches(batch_size=patches))
    pixels = np.array(decode_pixels(pa.Table.from_batches([batch]), bundle.metadata))  # (N, C, H, W)
    best, cpu = float("inf"), float("nan")
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        bundle.predict_probabilities(pixels, tta=tta)
        if time.perf_counter() - started < best:
            best, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    return len(pixels), best, cpu


class ProcessWatch(threading.Thread):
    """Samples one process until it ends: its own peak resident memory, and the CPU time of it and its descendants.

    The descendants are the local Ray cluster the driver started (GCS, raylet, workers and actors): their CPU time,
    last seen per process, is the pipeline's whole cost, a figure that other load on the machine does not inflate.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak = pid, 0
        self.cpu: dict[int, float] = {}

    def run(self) -> None:
        """Sample until the process ends."""
        try:
            process = psutil.Process(self.pid)
            while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                self.peak = max(self.peak, process.memory_info().rss)
                for member in [process, *process.children(recursive=True)]:
                    try:
                        times = member.cpu_times()
                        self.cpu[member.pid] = times.user + times.system
                    except psutil.Error:
                        continue
                time.sleep(RSS_POLL_S)
        except psutil.Error:
            pass

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds of the process and every descendant seen."""
        return sum(self.cpu.values())


def ray_script(data_file: Path, bundle_dir: Path, output: Path, extra: list[str]) -> dict[str, float]:
    """predict.py as a subprocess with its own local Ray, under ``/usr/bin/time -v``.

    Returns:
        ``whole``, ``startup`` and ``inference`` seconds, ``max_rss`` (what ``time`` reports) and ``driver_rss``
        (the driver process's own sampled peak) in bytes, and ``cpu_seconds`` of the driver and its Ray cluster.
    """
    args = ["--model", bundle_dir, "--input", data_file, "--output", output, "--address", "local", *extra]
    command = ["/usr/bin/time", "-v", sys.executable, str(SCRIPT), *map(str, args)]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    driver = None
    for _ in range(100):  # time's child: the Python driver
        children = psutil.Process(process.pid).children()
        if children:
            driver = ProcessWatch(children[0].pid)
            driver.start()
            break
        time.sleep(0.01)
    stdout, stderr = process.communicate()
    elapsed = time.perf_counter() - started
    if driver is not None:
        driver.join()
    if process.returncode != 0:
        raise RuntimeError(f"predict.py failed:\n{stderr[-3000:]}")
    found, rss = SUMMARY.search(stdout), MAX_RSS.search(stderr)
    if found is None or rss is None:
        raise RuntimeError(f"predict.py printed no summary line:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return {
        "whole": elapsed,
        "startup": float(found.group(1)),
        "inference": float(found.group(2)),
        "max_rss": int(rss.group(1)) * 1024,
        "driver_rss": driver.peak if driver is not None else float("nan"),
        "cpu_seconds": driver.cpu_seconds if driver is not None else float("nan"),
    }


def main() -> None:
    """Build the inputs, time both ways, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_PATCHES} patches instead of {FULL_PATCHES}")
    parser.add_argument("--patches", type=int, default=None, help="number of patches (overrides --quick)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the plain inference (the best counts)")
    parser.add_argument("--plain-patches", type=int, default=PLAIN_PATCHES, help="patches the plain run times")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the input (default: system temp)")
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="both ways average the 8 D4 views (8 forward passes a patch); the default, one view, is the mode the "
        "issue's figures were measured in and the one where Ray's own costs weigh most",
    )
    parser.add_argument("--predict-args", default="", help="extra flags for predict.py, for example '--num-cpus 2'")
    args = parser.parse_args()
    patches = args.patches or (QUICK_PATCHES if args.quick else FULL_PATCHES)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())  # other processes on the machine skew every figure
    with tempfile.TemporaryDirectory(prefix="predict-bench-", dir=args.workdir) as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        data_file, bundle_dir = make_inputs(folder, patches)
        print(f"{patches} patches and a bundle written in {time.perf_counter() - started:.1f} s", flush=True)
        timed, plain_seconds, plain_cpu = plain(
            data_file, bundle_dir, min(patches, args.plain_patches), args.repeats, args.tta
        )
        plain_rate = timed / plain_seconds
        print(f"plain PyTorch: {timed} patches in {plain_seconds:.1f} s", flush=True)
        extra = ["--tta" if args.tta else "--no-tta", *args.predict_args.split()]
        run = ray_script(data_file, bundle_dir, folder / "predictions.parquet", extra)
    print(
        f"torch threads in-process: {torch.get_num_threads()}; CPUs: {os.cpu_count()}; load average at start: {load}; "
        f"views per patch: {8 if args.tta else 1}"
    )
    rows = [
        (f"plain PyTorch, inference only ({timed} patches)", timed, plain_seconds),
        ("predict.py end to end (subprocess, Ray start-up)", patches, run["whole"]),
        ("predict.py Ray Data part (no start-up)", patches, run["inference"]),
    ]
    for name, count, seconds in rows:
        print(f"{name:<52}{seconds:>8.1f} s{count / seconds:>10.0f} patches/s")
    print(f"Ray start-up inside predict.py: {run['startup']:.1f} s")
    ray_data, end_to_end = (patches / run["inference"]) / plain_rate, (patches / run["whole"]) / plain_rate
    print(f"ratio predict.py Ray Data part / plain: {ray_data:.2f}x (target at 1M patches >= {RAY_DATA_TARGET}x)")
    print(f"ratio predict.py end to end / plain: {end_to_end:.2f}x (target at 1M patches >= {END_TO_END_TARGET}x)")
    plain_cpu_rate, ray_cpu_rate = timed / plain_cpu, patches / run["cpu_seconds"]
    print(
        f"CPU time: plain {plain_cpu / timed * 1e6:.0f} us/patch, predict.py and its Ray processes "
        f"{run['cpu_seconds'] / patches * 1e6:.0f} us/patch ({ray_cpu_rate / plain_cpu_rate:.2f}x plain's patches "
        "per CPU second; other load on the machine does not change this figure)"
    )
    print(
        f"predict.py peak resident memory: driver process {run['driver_rss'] / 2**30:.2f} GB (sampled), "
        f"/usr/bin/time -v maximum {run['max_rss'] / 2**30:.2f} GB"
    )


if __name__ == "__main__":
    main()
