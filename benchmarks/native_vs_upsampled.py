"""Measure what the original model's 8x8 to 64x64 upsampling costs and buys, on the fixed ResNet.

The same network (``TrainConfig()`` defaults, same seed, same data) at native resolution and with
``ResNetConfig.upsample_to=64``: forward FLOPs per patch (``torch.utils.flop_counter.FlopCounterMode``, via
``benchmarks/model_cost.py``), parameter count, seconds per training epoch (median over the epochs after the
first, which pays one-off set-up costs) and test accuracy of the last epoch's weights after E epochs.

The upsampled model needs ~64x the compute, so its run is limited by ``--budget`` seconds of training: it stops
after the last epoch that fits (measured as it goes), and the script says how many epochs that was. The native run
is evaluated on test after every epoch (cheap), so it is also reported at the upsampled run's epoch count, a
like-for-like comparison. ``--quick`` runs 2 epochs on a stratified subset of the data.

Usage: ``python benchmarks/native_vs_upsampled.py [--data FOLDER] [--epochs 10] [--budget 300] [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import NormalisedData, TrainResult, accuracy, format_table, subset, train_resnet  # noqa: E402
from benchmarks.model_cost import UPSAMPLED, cost  # noqa: E402
from data import DEFAULT_DATASET_DIR  # noqa: E402
from data.folder import read_dataset  # noqa: E402
from resnet import ResNetConfig  # noqa: E402
from workflows.training.config import TrainConfig  # noqa: E402

EPOCHS = 10
QUICK_EPOCHS = 2
# Seconds of training the upsampled run may spend; with the native run, FLOP counting and the test evaluation at
# 64x64 (about one more epoch), the full run aims at ten minutes on a busy 2-CPU machine. Epoch times vary 2-4x
# with the machine's load: with 360 s one run took 627 s in all, when its last epoch ran 133 s against a 45 s median.
BUDGET_S = 300.0
# Quick mode's stratified subset (patches per split), small enough for a 64x64 run inside two minutes.
QUICK_SIZES = {"train": 112, "val": 70, "test": 280}


def seconds_per_epoch(result: TrainResult) -> tuple[float, str]:
    """Median training seconds per epoch over the epochs after the first, and how it was taken."""
    seconds = [r["seconds"] for r in result.history]
    if len(seconds) > 1:
        return statistics.median(seconds[1:]), f"median of epochs 2-{len(seconds)}"
    return seconds[0], "epoch 1 only (includes set-up)"


def main() -> None:
    """Count FLOPs and parameters, train both variants, and print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATASET_DIR, help="dataset folder (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs E (default: %(default)s)")
    parser.add_argument("--upsample-to", type=int, default=UPSAMPLED, help="upsampled size (default: %(default)s)")
    parser.add_argument(
        "--budget", type=float, default=BUDGET_S, help="training seconds for the upsampled run (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=TrainConfig().seed, help="seed of both runs (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EPOCHS} epochs on a subset {QUICK_SIZES}")
    args = parser.parse_args()

    started = time.perf_counter()
    dataset = read_dataset(args.data)
    epochs = args.epochs
    if args.quick:
        dataset, epochs = subset(dataset, QUICK_SIZES, seed=args.seed), min(epochs, QUICK_EPOCHS)
    cfg = TrainConfig(epochs=epochs, seed=args.seed)
    data = NormalisedData.from_dataset(dataset)
    sizes = ", ".join(f"{name} {len(split)}" for name, split in dataset.splits.items())
    print(f"dataset {args.data} ({sizes}); E={epochs}, seed {cfg.seed}; torch threads {torch.get_num_threads()}")

    variants = {"native": None, "upsampled": args.upsample_to}
    costs = {
        name: cost(ResNetConfig.from_metadata(dataset.metadata, channels=cfg.channels, upsample_to=size))
        for name, size in variants.items()
    }

    native_test_acc: list[float] = []

    def native_epoch(record: dict[str, float], model: torch.nn.Module) -> None:
        native_test_acc.append(accuracy(model, data.pixels["test"], data.labels["test"]))
        print(f"  native epoch {record['epoch']}: {record['seconds']:.2f} s, test acc {native_test_acc[-1]:.4f}")

    def upsampled_epoch(record: dict[str, float], _model: torch.nn.Module) -> None:
        print(f"  upsampled epoch {record['epoch']}: {record['seconds']:.1f} s, train loss {record['train_loss']:.3f}")

    results = {
        "native": train_resnet(dataset, data, cfg, select_best=False, on_epoch=native_epoch),
        "upsampled": train_resnet(
            dataset,
            data,
            cfg,
            upsample_to=args.upsample_to,
            select_best=False,
            on_epoch=upsampled_epoch,
            budget_s=args.budget,
        ),
    }
    up_epochs = len(results["upsampled"].history)
    chosen = (
        f"all {epochs} epochs fit in the {args.budget:.0f} s budget"
        if up_epochs == epochs
        else f"stopped after {up_epochs} of {epochs} epochs: one more would pass the {args.budget:.0f} s budget"
    )
    print(f"upsampled run: {chosen}")

    rows = []
    for name, size in variants.items():
        params, flops = costs[name]
        result = results[name]
        per_epoch, how = seconds_per_epoch(result)
        side = size or dataset.metadata.height
        rows.append(
            [
                f"{name} ({side}x{size or dataset.metadata.width})",
                f"{flops / 1e6:,.1f}",
                f"{params:,}",
                f"{per_epoch:.2f}",
                how,
                len(result.history),
                f"{result.test['accuracy']:.4f}",
            ]
        )
    native_at = native_test_acc[up_epochs - 1]
    rows.append(["native, same epochs as upsampled", "", "", "", "", up_epochs, f"{native_at:.4f}"])
    print()
    headers = ["model", "MFLOPs/patch", "parameters", "s/epoch", "s/epoch taken as", "epochs", "test acc"]
    print(format_table(headers, rows, left=(0, 4)))
    (p_n, f_n), (p_u, f_u) = costs["native"], costs["upsampled"]
    s_n, s_u = seconds_per_epoch(results["native"])[0], seconds_per_epoch(results["upsampled"])[0]
    print(f"\nupsampled / native: {f_u / f_n:.1f}x FLOPs, {p_u / p_n:.1f}x parameters, {s_u / s_n:.1f}x s/epoch")
    print(f"train patches per epoch: {len(dataset.train)}; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
