"""Print, for datasets of growing size, the driver's peak memory and speed of train.py and predict.py.

For each size (training patches; validation and test are small, fixed splits) the script writes a synthetic dataset
folder (``data.synthetic``, generated and written chunk by chunk so that generation memory stays bounded) into a
temporary folder, removed at the end, also on failure (unless ``--keep``). Then, each as a subprocess of this
checkout under GNU ``/usr/bin/time -v`` on its own local Ray cluster (``--address local``):

* ``workflows/train.py --num-workers 1 --epochs E`` on the dataset folder (train/val/test files: the Ray Data
  streaming path). s/epoch is the median of history.json's ``epoch_seconds`` without epoch 1 (all of it when
  ``E`` is 1). At sizes up to 50,000 it also trains, in the same run, on the *in-memory path*: the same folder
  read whole by ``data.folder.read_dataset`` and fed to Ray Data from the arrays, as every folder was read before
  Ray Data read the Parquet (the subprocess replaces ``workflows.jobs.training_run.open_inputs`` with
  ``read_dataset`` and its ``build_inputs`` with ``benchmarks.common.in_memory_inputs``; nothing else differs, so
  both train on the same rows).
* ``workflows/predict.py --split train`` with the bundle that run exported (1M patches are predicted at 1M),
  against plain batched PyTorch in this process (the bundle's own forward on the same file, read in chunks, each
  chunk's best of two runs). Both
  sides skip test-time augmentation unless ``--tta``: with its 8 views the 1M-patch predictions alone would take
  about half an hour on 2 CPUs.

Driver peak RSS is the peak resident memory of the script's own process (``VmHWM`` of the driver, polled), the
process whose memory must not grow with the data. ``/usr/bin/time``'s "Maximum resident set size" is printed
beside it: it is the largest of the driver and every descendant the driver waited for, which includes Ray's raylet
and its workers (a training worker holds its shard), so it can exceed the driver's own figure. The memory target is
judged on train.py and predict.py on the dataset folder; the in-memory reference run reads every pixel in the driver
by design, and its peak is printed beside, not counted.

Example:
    python benchmarks/scale.py                         # 50,000, 200,000 and 1,000,000 patches (20-30 minutes)
    python benchmarks/scale.py --sizes 50000 200000
    python benchmarks/scale.py --sizes 1000000 --epochs 1
    python benchmarks/scale.py --quick                 # 2,000 and 5,000 patches (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    ROOT,
    checkout_env,
    format_table,
    median_after_warmup,
    plain_predict,
    predict_command,
    predict_summary,
)
from data.atomic import write_file_atomic  # noqa: E402
from data.format import PARQUET_SUFFIX  # noqa: E402
from data.landcover import default_metadata  # noqa: E402
from data.synthetic import generate  # noqa: E402
from data.writing import to_table, write_split  # noqa: E402
from workflows.jobs.training_run import HISTORY_FILE  # noqa: E402
from workflows.serving.bundle import BUNDLE_DIR  # noqa: E402

TIME = Path("/usr/bin/time")
TRAIN_SCRIPT = ROOT / "workflows" / "train.py"
FULL_SIZES = (50_000, 200_000, 1_000_000)
QUICK_SIZES = (2_000, 5_000)
HELD_OUT = 2_000  # validation and test patches each: small, so that the training split is what grows
QUICK_HELD_OUT = 200
DEFAULT_EPOCHS = 2  # the first epoch is warm-up; s/epoch is the median of the others
SEED = 0
# Patches generated and written at a time (one Parquet row group each): about 235 MB of 14x8x8 float32 pixels.
WRITE_ROWS = 65_536
# Rows the plain side reads and classifies at a time, and runs of each chunk's inference (the best counts: on a
# shared machine other processes only ever slow a run down).
PLAIN_CHUNK_ROWS = 65_536
PLAIN_REPEATS = 2
# Free disk needed beyond the raw pixel bytes of a dataset (zstd Parquet is smaller; predictions and logs add some).
DISK_MARGIN = 1.25
# How often the driver's peak resident memory is read while a subprocess runs.
POLL_S = 0.2
# How long a stopped run's driver gets to shut its Ray cluster down before it is killed.
STOP_WAIT_S = 60

# The targets.
RSS_TARGET_BYTES = 1.5e9  # driver peak RSS at every size (GB = 10^9 bytes)
TRAIN_TARGET_SIZE = 50_000  # streamed s/epoch <= TRAIN_TARGET_RATIO x the in-memory path's, at this size
TRAIN_TARGET_RATIO = 1.1
IN_MEMORY_MAX = TRAIN_TARGET_SIZE  # the in-memory path is run at sizes up to this (it holds every pixel)
PREDICT_TARGET_SIZE = 1_000_000  # at this size: predict.py's patches/s against plain batched PyTorch's
PREDICT_RAY_TARGET = 0.8  # its Ray Data part (inference, Ray start-up excluded)
PREDICT_E2E_TARGET = 0.6  # end to end (the subprocess's wall time)

# Train.py through the in-memory path: the job's reader replaced by the whole-dataset reader and its inputs built from
# the arrays (benchmarks.common.in_memory_inputs), and no check for CPUs left to streamed reads (nothing streams);
# nothing else changed.
IN_MEMORY_TRAIN = (
    "import sys; import workflows.jobs.training_run as run; from data.folder import read_dataset; "
    "from benchmarks.common import in_memory_inputs; run.open_inputs = read_dataset; "
    "run.build_inputs = in_memory_inputs; run.check_room_to_read = lambda *args: None; "
    "from workflows.train import main; sys.exit(main(sys.argv[1:]))"
)
MAX_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")
KIB = 1024


@dataclass
class Measured:
    """One subprocess run under ``/usr/bin/time -v``.

    Attributes:
        stdout: What it printed.
        seconds: Its wall time.
        driver_bytes: Peak resident memory of the process itself (``VmHWM``).
        time_bytes: ``/usr/bin/time``'s maximum resident set size (the process or a descendant it waited for).
    """

    stdout: str
    seconds: float
    driver_bytes: float
    time_bytes: float


@dataclass
class SizeResult:
    """Everything measured at one dataset size; None where not measured."""

    size: int
    held_out: int
    train: Measured | None = None
    epochs: list[float] = field(default_factory=list)
    in_memory: Measured | None = None
    in_memory_epochs: list[float] = field(default_factory=list)
    predict: Measured | None = None
    predict_inference: float = math.nan
    plain_inference: float = math.nan
    plain_with_reading: float = math.nan
    failure: str | None = None  # the step that failed and its error's last line; later steps were not run

    @property
    def s_per_epoch(self) -> float:
        """Streamed path: median epoch seconds without epoch 1."""
        return median_after_warmup(self.epochs) if self.epochs else math.nan

    @property
    def in_memory_s_per_epoch(self) -> float:
        """In-memory path: median epoch seconds without epoch 1 (NaN when not run)."""
        return median_after_warmup(self.in_memory_epochs) if self.in_memory_epochs else math.nan

    @property
    def predict_seconds(self) -> float:
        """predict.py's wall time (NaN when it did not finish)."""
        return self.predict.seconds if self.predict else math.nan

    def rate(self, seconds: float) -> float:
        """Patches per second of a prediction over the training split."""
        return self.size / seconds


def check_time_tool() -> None:
    """Refuse to start without GNU time, in one line.

    Raises:
        SystemExit: ``/usr/bin/time`` is missing or is not GNU time.
    """
    try:
        version = subprocess.run([str(TIME), "--version"], capture_output=True, text=True, check=False)
        gnu = "GNU" in version.stdout + version.stderr
    except OSError:
        gnu = False
    if not gnu:
        raise SystemExit(
            f"error: {TIME} (GNU time) is missing; install it (Debian/Ubuntu: apt-get install -y time) to measure "
            "the driver's peak memory"
        )


def check_disk(folder: Path, patches: int) -> None:
    """Refuse a dataset that would not fit on the disk holding ``folder``, in one line.

    Raises:
        SystemExit: Less free space than the dataset's raw pixel bytes times ``DISK_MARGIN``.
    """
    needed = patches * default_metadata().values_per_patch * np.dtype(np.float32).itemsize * DISK_MARGIN
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise SystemExit(
            f"error: {folder}: {free / 1e9:.1f} GB free, {patches:,} patches need about {needed / 1e9:.1f} GB; "
            "free some space or pass --work-dir on a larger disk"
        )


def write_synthetic(folder: Path, train: int, held_out: int) -> None:
    """A dataset folder of ``train`` training and ``held_out`` validation and test patches, from the generator.

    The training split is generated and written ``WRITE_ROWS`` patches at a time (each chunk from its own seed, its
    ids numbered on across chunks), so that no step holds more than a chunk; the file is renamed into place when
    complete.
    """
    folder.mkdir(parents=True)
    small = generate({"val": held_out, "test": held_out}, seed=SEED)
    for name, split in small.splits.items():
        write_split(folder / f"{name}{PARQUET_SUFFIX}", split, small.metadata)
    width = len(str(train - 1))

    def write(handle) -> None:
        writer = None
        for chunk, start in enumerate(range(0, train, WRITE_ROWS)):
            rows = min(WRITE_ROWS, train - start)
            part = generate({"train": rows}, seed=SEED + 1 + chunk)
            split = part.train
            split.patch_ids = np.array([f"train-{start + i:0{width}d}" for i in range(rows)], dtype=object)
            table = to_table(split, part.metadata)  # the format's checks, and its metadata on the schema
            if writer is None:
                writer = pq.ParquetWriter(handle, table.schema, compression="zstd")
            writer.write_table(table)
        writer.close()

    write_file_atomic(folder / f"train{PARQUET_SUFFIX}", write)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _peak_rss_bytes(pid: int) -> float:
    """``VmHWM`` (peak resident memory) of a running process, in bytes; 0 once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * KIB
    except OSError:
        pass
    return 0.0


def run_measured(command: Sequence[str], logs: Path, name: str) -> Measured:
    """Run ``command`` under ``/usr/bin/time -v`` from the checkout's root, polling the peak memory of its process.

    Its output goes to ``logs/<name>.out`` and ``.err``; time's report to ``logs/<name>.time``.

    Raises:
        RuntimeError: The command failed (with the end of its error output and where the logs are).
    """
    out, err, report = (logs / f"{name}.{kind}" for kind in ("out", "err", "time"))
    started = time.perf_counter()
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [str(TIME), "-v", "-o", str(report), *command], cwd=ROOT, env=checkout_env(), stdout=stdout, stderr=stderr
        )
        driver, peak = None, 0.0
        try:
            while process.poll() is None:
                driver = driver or next(iter(_children(process.pid)), None)
                if driver is not None:
                    peak = max(peak, _peak_rss_bytes(driver))
                time.sleep(POLL_S)
        except BaseException:
            _stop(process, driver)
            raise
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {process.returncode}; logs in {logs}):\n{err.read_text()[-3000:]}")
    found = MAX_RSS.search(report.read_text())
    if found is None:
        raise RuntimeError(f"{report}: no 'Maximum resident set size' line from {TIME} -v")
    return Measured(out.read_text(), seconds, peak, float(found.group(1)) * KIB)


def _stop(process: subprocess.Popen, driver: int | None) -> None:
    """Interrupt a measured run (this script was stopped): the driver gets SIGINT, so that it stops its Ray cluster."""
    if driver is not None:
        try:
            os.kill(driver, signal.SIGINT)
            process.wait(timeout=STOP_WAIT_S)
            return
        except (OSError, subprocess.TimeoutExpired):
            pass
    process.kill()
    process.wait()


def train_command(data: Path, results: Path, epochs: int, in_memory: bool) -> list[str]:
    """train.py (or its in-memory variant) with 1 worker on a private local cluster, other settings default."""
    flags = ["--data", data, "--results", results, "--address", "local", "--num-workers", 1, "--epochs", epochs]
    head = [sys.executable, "-c", IN_MEMORY_TRAIN] if in_memory else [sys.executable, str(TRAIN_SCRIPT)]
    return head + [str(flag) for flag in flags]


def epoch_seconds(results: Path) -> list[float]:
    """Each epoch's ``epoch_seconds`` from a run's history.json."""
    return [float(epoch["epoch_seconds"]) for epoch in json.loads((results / HISTORY_FILE).read_text())]


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return ", ".join(f"{v:.1f}" for v in os.getloadavg())


def say(text: str) -> None:
    """A progress line, flushed (the benchmark runs for many minutes)."""
    print(text, flush=True)


def measure_size(
    size: int, held_out: int, work: Path, epochs: int, tta: bool, keep: bool, predict_file: bool
) -> SizeResult:
    """Write one dataset and measure train.py (both paths where they apply) and predict.py on it.

    A subprocess that fails ends this size's measurements: the result records the failure, the figures before it,
    and the next size still runs.
    """
    result = SizeResult(size, held_out)
    predictions = work / (f"predictions-{size}" + (PARQUET_SUFFIX if predict_file else ""))
    results = work / f"train-{size}"
    try:
        _measure(result, work, epochs, tta, results, predictions)
    except RuntimeError as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        result.failure = lines[0] + (f" ... {lines[-1].strip()}" if len(lines) > 1 else "")
        say(f"[{size:,}] FAILED: {result.failure}")
    finally:
        if not keep:  # the next size needs the disk
            for path in (work / f"data-{size}", results, predictions):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
    return result


def _measure(result: SizeResult, work: Path, epochs: int, tta: bool, results: Path, predictions: Path) -> None:
    """The steps of :func:`measure_size`, filling ``result`` as they go."""
    size, held_out = result.size, result.held_out
    folder, logs = work / f"data-{size}", work / "logs"
    logs.mkdir(exist_ok=True)
    check_disk(work, size + 2 * held_out)
    started = time.perf_counter()
    write_synthetic(folder, size, held_out)
    megabytes = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    say(
        f"[{size:,}] wrote {size:,} + {held_out:,} + {held_out:,} patches ({megabytes:.0f} MB) in "
        f"{time.perf_counter() - started:.0f} s; load average {load_average()}"
    )

    result.train = run_measured(train_command(folder, results, epochs, in_memory=False), logs, f"train-{size}")
    result.epochs = epoch_seconds(results)
    say(
        f"[{size:,}] train.py, streamed: epochs {_seconds(result.epochs)}, driver peak "
        f"{_gb(result.train.driver_bytes)} GB, wall {result.train.seconds:.0f} s; load average {load_average()}"
    )
    if size <= IN_MEMORY_MAX:
        memory_results = work / f"train-{size}-in-memory"
        command = train_command(folder, memory_results, epochs, in_memory=True)
        result.in_memory = run_measured(command, logs, f"train-{size}-in-memory")
        result.in_memory_epochs = epoch_seconds(memory_results)
        shutil.rmtree(memory_results, ignore_errors=True)
        say(
            f"[{size:,}] train.py, in memory: epochs {_seconds(result.in_memory_epochs)}, driver peak "
            f"{_gb(result.in_memory.driver_bytes)} GB, wall {result.in_memory.seconds:.0f} s; "
            f"load average {load_average()}"
        )

    bundle, source = results / BUNDLE_DIR, folder / f"train{PARQUET_SUFFIX}"
    result.plain_inference, result.plain_with_reading = plain_predict(
        source, bundle, repeats=PLAIN_REPEATS, chunk_rows=PLAIN_CHUNK_ROWS, tta=tta
    )
    say(
        f"[{size:,}] plain PyTorch: inference {result.plain_inference:.1f} s, with reading "
        f"{result.plain_with_reading:.1f} s; load average {load_average()}"
    )
    extra = ["--split", "train", "--tta" if tta else "--no-tta"]
    command = predict_command(folder, bundle, predictions, *extra)
    result.predict = run_measured(command, logs, f"predict-{size}")
    _, result.predict_inference = predict_summary(result.predict.stdout)
    say(
        f"[{size:,}] predict.py: wall {result.predict.seconds:.1f} s, Ray Data part {result.predict_inference:.1f} "
        f"s, driver peak {_gb(result.predict.driver_bytes)} GB; load average {load_average()}"
    )


def _seconds(values: Sequence[float]) -> str:
    return " ".join(f"{v:.1f}" for v in values) + " s"


def _gb(value: float) -> str:
    return f"{value / 1e9:.2f}" if math.isfinite(value) else "-"


def _peak(measured: Measured | None) -> float:
    return measured.driver_bytes if measured is not None else math.nan


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if math.isfinite(value) else "-"


def _figure(value: float, digits: int = 0) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "-"


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def target_peak(row: SizeResult) -> float:
    """The driver peak the memory target is about: train.py's and predict.py's on the dataset folder.

    The in-memory reference run is left out: that path reads every pixel in the driver by design (a folder whose
    splits must be carved), and it runs only at the sizes where it is compared; its figure is printed beside.
    """
    return max((m.driver_bytes for m in (row.train, row.predict) if m is not None), default=math.nan)


def verdicts(row: SizeResult) -> list[str]:
    """The targets that apply at this size, each met or missed."""
    out = [f"RSS {_verdict(target_peak(row) <= RSS_TARGET_BYTES)}"] if math.isfinite(target_peak(row)) else []
    train_ratio = row.s_per_epoch / row.in_memory_s_per_epoch
    if row.size == TRAIN_TARGET_SIZE and math.isfinite(train_ratio):
        out.append(f"train {_verdict(train_ratio <= TRAIN_TARGET_RATIO)}")
    if row.size == PREDICT_TARGET_SIZE and row.predict is not None:
        ray_met = row.plain_inference / row.predict_inference >= PREDICT_RAY_TARGET
        e2e_met = row.plain_inference / row.predict.seconds >= PREDICT_E2E_TARGET
        out.append(f"predict Ray Data {_verdict(ray_met)}, end to end {_verdict(e2e_met)}")
    if row.failure is not None:
        out.append(f"FAILED: {row.failure.split(' (')[0]}")
    return out


def format_results(rows: Sequence[SizeResult]) -> str:
    """The table: one row per size, with the ratios and the targets' verdicts."""
    headers = [
        "train patches",
        "train RSS GB",
        "s/epoch",
        "in-mem s/epoch",
        "stream/in-mem",
        "predict RSS GB",
        "e2e p/s",
        "Ray Data p/s",
        "plain p/s",
        "e2e/plain",
        "Ray Data/plain",
        "targets",
    ]
    cells = []
    for row in rows:
        cells.append(
            [
                f"{row.size:,}",
                _gb(_peak(row.train)),
                _figure(row.s_per_epoch, 2),
                _figure(row.in_memory_s_per_epoch, 2),
                _ratio(row.s_per_epoch / row.in_memory_s_per_epoch),
                _gb(_peak(row.predict)),
                _figure(row.rate(row.predict_seconds)),
                _figure(row.rate(row.predict_inference)),
                _figure(row.rate(row.plain_inference)),
                _ratio(row.plain_inference / row.predict_seconds),
                _ratio(row.plain_inference / row.predict_inference),
                "; ".join(verdicts(row)),
            ]
        )
    return format_table(headers, cells, left=(0, -1))


def format_time_rss(rows: Sequence[SizeResult]) -> str:
    """``/usr/bin/time``'s maximum RSS beside the driver's own peak, for every subprocess."""
    lines = ["/usr/bin/time -v 'Maximum resident set size' (driver or a descendant it waited for) vs the driver alone:"]
    for row in rows:
        runs = [("train.py", row.train), ("train.py in memory", row.in_memory), ("predict.py", row.predict)]
        shown = [f"{name} {_gb(m.time_bytes)} / {_gb(m.driver_bytes)} GB" for name, m in runs if m is not None]
        lines.append(f"  {row.size:,}: " + ", ".join(shown))
    return "\n".join(lines)


def format_targets(rows: Sequence[SizeResult]) -> str:
    """One line per target: what was measured and whether it was met, or that its size was not run."""
    by_size = {row.size: row for row in rows}
    measured = [row for row in rows if math.isfinite(target_peak(row))]
    if not measured:
        return "no driver peak was measured"
    peak = max(measured, key=target_peak)
    peak_bytes = target_peak(peak)
    lines = [
        f"target driver peak RSS <= {RSS_TARGET_BYTES / 1e9:.1f} GB at every size run (train.py and predict.py on "
        f"the dataset folder; the in-memory reference run is not counted): largest "
        f"{_gb(peak_bytes)} GB (at {peak.size:,}): {_verdict(peak_bytes <= RSS_TARGET_BYTES)}"
        + ("" if PREDICT_TARGET_SIZE in by_size else f" (sizes run: {', '.join(f'{s:,}' for s in by_size)})")
    ]
    row = by_size.get(TRAIN_TARGET_SIZE)
    if row is None or not math.isfinite(row.s_per_epoch / row.in_memory_s_per_epoch):
        lines.append(
            f"target train.py s/epoch <= {TRAIN_TARGET_RATIO}x in-memory at {TRAIN_TARGET_SIZE:,}: not measured"
        )
    else:
        ratio = row.s_per_epoch / row.in_memory_s_per_epoch
        lines.append(
            f"target train.py s/epoch <= {TRAIN_TARGET_RATIO}x in-memory at {TRAIN_TARGET_SIZE:,}: streamed "
            f"{row.s_per_epoch:.2f} s vs in-memory {row.in_memory_s_per_epoch:.2f} s = {ratio:.2f}x: "
            f"{_verdict(ratio <= TRAIN_TARGET_RATIO)}"
        )
    row = by_size.get(PREDICT_TARGET_SIZE)
    if row is None or row.predict is None:
        lines.append(f"target predict.py vs plain PyTorch at {PREDICT_TARGET_SIZE:,}: not measured")
    else:
        ray_ratio = row.plain_inference / row.predict_inference
        e2e_ratio = row.plain_inference / row.predict.seconds
        lines.append(
            f"target predict.py Ray Data part >= {PREDICT_RAY_TARGET}x plain at {PREDICT_TARGET_SIZE:,}: "
            f"{ray_ratio:.2f}x: {_verdict(ray_ratio >= PREDICT_RAY_TARGET)}; end to end >= {PREDICT_E2E_TARGET}x: "
            f"{e2e_ratio:.2f}x: {_verdict(e2e_ratio >= PREDICT_E2E_TARGET)}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Flags of the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"sizes {', '.join(f'{s:,}' for s in QUICK_SIZES)} with {QUICK_HELD_OUT} validation and test patches",
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        metavar="N",
        help=f"training patches of each dataset (default: {' '.join(map(str, FULL_SIZES))}; --quick: "
        f"{' '.join(map(str, QUICK_SIZES))})",
    )
    parser.add_argument(
        "--held-out",
        type=int,
        metavar="N",
        help=f"validation and test patches each (default: {HELD_OUT:,}; --quick: {QUICK_HELD_OUT})",
    )
    parser.add_argument(
        "--epochs", type=int, default=DEFAULT_EPOCHS, help="train.py epochs (s/epoch: median without the first)"
    )
    parser.add_argument("--tta", action="store_true", help="predict over the bundle's 8 D4 views (both sides)")
    parser.add_argument(
        "--predict-file",
        action="store_true",
        help="predict.py writes one .parquet file (default: a folder of part files, its mode for large inputs)",
    )
    parser.add_argument("--work-dir", type=Path, help="where the temporary folder goes (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (datasets, runs, logs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Measure every size and print the table; returns the exit code."""
    args = build_parser().parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    held_out = args.held_out or (QUICK_HELD_OUT if args.quick else HELD_OUT)
    if min(sizes) < 1 or held_out < 1 or args.epochs < 1:
        raise SystemExit("error: --sizes, --held-out and --epochs must be positive")
    check_time_tool()
    # Stopped with SIGTERM (a timeout, kill), still remove the temporary folder in main's finally.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    start_load = load_average()
    say(
        f"sizes {', '.join(f'{s:,}' for s in sizes)} training patches, {held_out:,} validation and {held_out:,} test "
        f"each; train.py --num-workers 1 --epochs {args.epochs}; predict.py --split train "
        f"{'--tta' if args.tta else '--no-tta'} into {'one file' if args.predict_file else 'a folder'}; "
        f"load average at start {start_load}"
    )
    work = Path(tempfile.mkdtemp(prefix="scale-bench-", dir=args.work_dir))
    say(f"work folder {work}")
    try:
        rows = [
            measure_size(size, held_out, work, args.epochs, args.tta, args.keep, args.predict_file) for size in sizes
        ]
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        f"machine: {os.cpu_count()} CPUs; torch threads in this process (plain side) {torch.get_num_threads()}; "
        f"load average at start {start_load}, at end {load_average()}"
    )
    print(
        "compared: train.py s/epoch on the train/val/test folder (Ray Data streaming path) vs the same folder "
        "through the in-memory path (read_dataset + in_memory_inputs), same rows, 1 worker x 1 CPU, median epoch "
        f"seconds without epoch 1 of {args.epochs}; predict.py on the training split (--address local, "
        f"{'with' if args.tta else 'without'} TTA, e2e = subprocess wall time, Ray Data part = its inference "
        "seconds) vs plain batched PyTorch (bundle.predict_probabilities on the same file, inference only, best of "
        f"{PLAIN_REPEATS} per {PLAIN_CHUNK_ROWS:,}-row chunk); "
        "RSS = the driver process's own peak (VmHWM)"
    )
    print(format_results(rows))
    print(format_time_rss(rows))
    print(format_targets(rows))
    failed = [row for row in rows if row.failure is not None]
    for row in failed:
        print(f"FAILED at {row.size:,}: {row.failure}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
