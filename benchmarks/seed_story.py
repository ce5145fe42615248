"""Replay the seed story: the user's original model against the fixed ResNet, epoch by epoch, and plot both.

The original (``tests/resnet/seed_model.py``, bugs included: 8x8 upsampled to 64x64, one block used twice, a
projection shortcut built inside ``forward``, activations on ``self``, softmax probabilities fed to
``CrossEntropyLoss``) trains on raw, unnormalised pixels. The seed does not say which optimizer the user ran, so
this script ASSUMES plain Adam, lr 1e-3, batch 32, no gradient clipping, no augmentation, and a plain loop with no
guard against non-finite steps. The fixed ResNet trains on normalised pixels with ``TrainConfig()`` defaults (AdamW,
D4 augmentation, label smoothing, clipping). Both start from the same seed. Per epoch the script records the mean
training loss (as each loop computes it), the training accuracy on the batches seen during the epoch, and the
validation accuracy; it prints a table, writes a two-panel PNG (loss on a log scale; accuracy with the chance
level) and says whether the original shows the seed's symptom (loss growing, accuracy near chance).

The original costs about 64x the fixed model's compute per patch (it runs at 64x64), so the full run takes a while
on a small CPU; ``--quick`` trains 2 epochs on a stratified subset.

Usage: ``python benchmarks/seed_story.py [--data FOLDER] [--epochs 10] [--out docs/figures/seed_story.png]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    NormalisedData,
    accuracy,
    fit_epoch,
    format_table,
    iterate_batches,
    subset,
    train_resnet,
)
from data import DEFAULT_DATASET_DIR  # noqa: E402
from data.folder import read_dataset  # noqa: E402
from data.format import PatchDataset  # noqa: E402
from workflows.training.config import TrainConfig  # noqa: E402

SEED_MODEL_FILE = REPO / "tests" / "resnet" / "seed_model.py"
DEFAULT_OUT = REPO / "docs" / "figures" / "seed_story.png"
EPOCHS = 10
QUICK_EPOCHS = 2
# Quick mode's stratified subset (patches per split): enough for the figures to be numbers, not for conclusions.
QUICK_SIZES = {"train": 112, "val": 70}
# The assumed original optimizer settings (the seed is silent about them).
ORIGINAL_LR = 1e-3
ORIGINAL_BATCH = 32
ASSUMPTION = (
    f"original: plain Adam lr {ORIGINAL_LR:g}, batch {ORIGINAL_BATCH}, no clipping, no augmentation, raw pixels "
    "(ASSUMED: the seed does not give the user's optimizer settings)"
)


def load_seed_model_class() -> type[nn.Module]:
    """Load ``SeedResNet`` from the test tree by file path (``tests/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("seed_model", SEED_MODEL_FILE)
    if spec is None or spec.loader is None:
        raise ImportError(f"{SEED_MODEL_FILE}: cannot load the original model")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SeedResNet


def train_original(dataset: PatchDataset, epochs: int, seed: int, log: bool = True) -> list[dict[str, float]]:
    """Train the original model as its user did and record loss and accuracy per epoch.

    Args:
        dataset: The dataset; the model sees its raw pixels.
        epochs: Epochs to train.
        seed: Seed of the weights, the shuffle and the shortcut's fresh weights.
        log: Print one line per epoch as it finishes.

    Returns:
        One dict per epoch: ``epoch``, ``train_loss``, ``train_acc``, ``val_acc``, ``seconds``.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    meta = dataset.metadata
    model = load_seed_model_class()(meta.num_bands, meta.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=ORIGINAL_LR)
    loss_fn = nn.CrossEntropyLoss()  # fed the model's softmax probabilities, as in the user's code
    train, val = dataset.train, dataset.val
    history = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        batches = iterate_batches(train.pixels, train.labels, ORIGINAL_BATCH, rng, augment=False)
        record = {"epoch": epoch, **fit_epoch(model, optimizer, loss_fn, batches, None, guarded=False)}
        record["seconds"] = time.perf_counter() - started
        record["val_acc"] = accuracy(model, val.pixels, val.labels)
        history.append(record)
        if log:
            print(_progress("original", record), flush=True)
    return history


def _progress(name: str, record: dict[str, float]) -> str:
    return (
        f"  {name} epoch {record['epoch']:>2}: loss {record['train_loss']:.4g}  train acc {record['train_acc']:.3f}  "
        f"val acc {record['val_acc']:.3f}  ({record['seconds']:.1f} s)"
    )


def probability_loss_bounds(num_classes: int) -> tuple[float, float]:
    """The range of ``CrossEntropyLoss`` when it is fed probabilities: it cannot exceed ln(e + K - 1).

    Returns:
        (lowest, highest): the loss of a one-hot probability vector on the right class and on a wrong class.
    """
    top = math.log(math.e + num_classes - 1)
    return top - 1.0, top


def verdict(history: list[dict[str, float]], chance: float) -> str:
    """Whether a run shows the seed's symptom (loss growing every epoch to infinity, accuracy near chance), in a line.

    Accuracy counts as near chance when no epoch's training or validation accuracy exceeds chance by 0.1.
    """
    losses = [r["train_loss"] for r in history]
    best_acc = max(max(r["train_acc"], r["val_acc"]) for r in history)
    growing = len(losses) > 1 and all(b > a for a, b in zip(losses, losses[1:], strict=False))
    diverged = any(not math.isfinite(v) for v in losses)
    near_chance = best_acc < chance + 0.1
    if diverged:
        loss_text = "reached a non-finite value"
    elif growing:
        loss_text = f"grew every epoch ({losses[0]:.4f} to {losses[-1]:.4f})"
    else:
        loss_text = (
            f"did not grow every epoch ({losses[0]:.4f} to {losses[-1]:.4f}, range {min(losses):.4f}-{max(losses):.4f})"
        )
    if (growing or diverged) and near_chance:
        label = "SHOWS the seed's symptom"
    elif near_chance:
        label = "shows HALF the seed's symptom (accuracy near chance, but the loss does not blow up)"
    elif growing or diverged:
        label = "shows HALF the seed's symptom (loss blows up, but accuracy rises above chance)"
    else:
        label = "does NOT show the seed's symptom"
    return f"{label}: loss {loss_text}; best train/val accuracy {best_acc:.3f} (chance {chance:.3f})"


def plot(original: list[dict[str, float]], fixed: list[dict[str, float]], num_classes: int, out: Path) -> None:
    """Two panels: training loss per epoch (log y, with a uniform guess's loss) and accuracy with chance level."""
    chance = 1.0 / num_classes
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    runs = (("original (raw data, 64x64, softmax into CE)", original, "tab:red"), ("fixed ResNet", fixed, "tab:blue"))
    for label, history, color in runs:
        epochs = [r["epoch"] for r in history]
        losses = [r["train_loss"] if math.isfinite(r["train_loss"]) else np.nan for r in history]
        ax_loss.plot(epochs, losses, "o-", color=color, label=label)
        ax_acc.plot(epochs, [r["train_acc"] for r in history], "o-", color=color, label=f"{label}: train")
        ax_acc.plot(epochs, [r["val_acc"] for r in history], "s--", color=color, alpha=0.7, label=f"{label}: val")
    ax_loss.axhline(math.log(num_classes), color="grey", linestyle=":", label=f"uniform guess (ln {num_classes})")
    ax_loss.set_yscale("log")
    ax_loss.set(xlabel="epoch", ylabel="mean training loss (log scale)", title="Training loss")
    ax_acc.axhline(chance, color="grey", linestyle=":", label=f"chance ({chance:.2f})")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
    ax_loss.legend(fontsize=8)
    ax_acc.legend(fontsize=7, loc="center right")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    """Train both models, print the per-epoch table and the verdict, and write the figure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATASET_DIR, help="dataset folder (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs for both models (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=TrainConfig().seed, help="seed of both runs (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write (default: %(default)s)")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_EPOCHS} epochs on a stratified subset {QUICK_SIZES}"
    )
    args = parser.parse_args()

    dataset = read_dataset(args.data)
    epochs = args.epochs
    if args.quick:
        dataset, epochs = subset(dataset, QUICK_SIZES, seed=args.seed), min(epochs, QUICK_EPOCHS)
    meta = dataset.metadata
    chance = 1.0 / meta.num_classes
    cfg = TrainConfig(epochs=epochs, seed=args.seed)
    sizes = ", ".join(f"{name} {len(split)}" for name, split in dataset.splits.items())
    print(
        f"seed story on {args.data} ({sizes}); {epochs} epochs, seed {args.seed}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(ASSUMPTION)
    print(
        f"fixed: normalised pixels, D4 augmentation, {cfg.optimizer} lr {cfg.lr:g}, weight decay {cfg.weight_decay:g}, "
        f"label smoothing {cfg.label_smoothing:g}, grad clip {cfg.grad_clip:g}, batch {cfg.batch_size}"
    )

    started = time.perf_counter()
    original = train_original(dataset, epochs, args.seed)
    data = NormalisedData.from_dataset(dataset)
    fixed = train_resnet(
        dataset, data, cfg, on_epoch=lambda record, _model: print(_progress("fixed", record), flush=True)
    ).history

    headers = ["epoch", "orig loss", "orig train acc", "orig val acc", "fixed loss", "fixed train acc", "fixed val acc"]
    rows = [
        [o["epoch"], f"{o['train_loss']:.4f}", f"{o['train_acc']:.3f}", f"{o['val_acc']:.3f}"]
        + [f"{f['train_loss']:.4f}", f"{f['train_acc']:.3f}", f"{f['val_acc']:.3f}"]
        for o, f in zip(original, fixed, strict=True)
    ]
    print()
    print(format_table(headers, rows))
    low, high = probability_loss_bounds(meta.num_classes)
    seconds = [r["seconds"] for r in original], [r["seconds"] for r in fixed]
    print(
        f"seconds per training epoch (median): original {np.median(seconds[0]):.1f}, fixed {np.median(seconds[1]):.2f}"
    )
    print(f"chance level (1/{meta.num_classes} classes): {chance:.3f}")
    print(f"original: {verdict(original, chance)}")
    print(f"fixed:    {verdict(fixed, chance)}")
    print(
        f"note: CrossEntropyLoss fed softmax probabilities is bounded to [{low:.3f}, {high:.3f}] for "
        f"{meta.num_classes} classes, so this model's loss cannot reach infinity."
    )
    plot(original, fixed, meta.num_classes, args.out)
    print(f"figure: {args.out}   total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
