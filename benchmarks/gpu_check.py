"""Check the ``--gpu`` path on a machine with GPUs: train.py and a PBT smoke test with 2 workers per run.

Each worker holds one GPU; Ray Train then picks the NCCL backend, which reduces only CUDA tensors, so this is where
the all-reduced metrics (``workflows.training.loop``) and the command broadcast between epochs must be on the training
device. It needs 2 GPUs for train.py and 2 per PBT member (members run one at a time when GPUs are short).
Without them it says so and exits 2; nothing else in the project depends on a GPU.

Example:
    python benchmarks/gpu_check.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2


def _run(command: list[str]) -> tuple[int, float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    return done.returncode, time.perf_counter() - started, (done.stdout + done.stderr)[-3000:]


def main() -> int:
    """Run both checks and print what each did; returns the exit code."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus < WORKERS:
        print(f"this check needs {WORKERS} GPUs; torch sees {gpus}: nothing checked", file=sys.stderr)
        return 2
    print(f"GPUs: {gpus} x {torch.cuda.get_device_name(0)}")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        train = [
            sys.executable, "workflows/train.py", "--gpu", "--num-workers", str(WORKERS), "--epochs", "3",
            "--channels", "16", "--address", "local", "--results", f"{tmp}/train",
        ]  # fmt: skip
        code, seconds, tail = _run(train)
        history = Path(tmp, "train", "history.json")
        epochs = len(json.loads(history.read_text())) if history.is_file() else 0
        print(f"train.py --gpu, {WORKERS} workers: exit {code}, {epochs} epochs, {seconds:.0f} s")
        failed += code != 0
        if code:
            print(tail)
        tune = [
            sys.executable, "workflows/tune.py", "--smoke-test", "--gpu", "--num-workers", str(WORKERS),
            "--address", "local", "--results", f"{tmp}/tune",
        ]  # fmt: skip
        code, seconds, tail = _run(tune)
        print(f"tune.py --smoke-test --gpu, {WORKERS} workers per member: exit {code}, {seconds:.0f} s")
        failed += code != 0
        if code:
            print(tail)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
