"""Compare the fixed ResNet with non-deep baselines on a patch dataset: test accuracy and macro-F1, as a table.

Baselines (scikit-learn, fitted on train, scored on test):
  majority class; logistic regression (standardised) on per-band patch means and on all pixels; k-nearest
  neighbours on standardised pixels with k chosen on the validation split from 1, 3, 5, 11, 21; a random forest
  (500 trees, fixed seed, as the main job fits it: ``workflows.serving.baselines``) on all pixels.
The ResNet is trained in this process (no Ray) with ``TrainConfig()`` defaults: normalised pixels, D4
augmentation, AdamW with the config's lr, weight decay, label smoothing and gradient clipping; the epoch with the
best validation accuracy is evaluated on test. It runs once per seed (``--seeds 3``: seeds 0, 1, 2) and is
reported as mean ± sample standard deviation. ``--tune-results DIR ...`` adds, per finished PBT experiment, the
test metrics it wrote (``DIR/test_metrics.json``, from ``workflows/tune.py``): a row per prediction variant (single
best member, ensemble, ensemble + TTA) and per baseline fitted in the same run (random forest, logistic regression).

Usage: ``python benchmarks/baselines.py [--data FOLDER] [--seeds 3] [--tune-results DIR ...] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.dummy import DummyClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import NormalisedData, format_table, mean_sd, train_resnet  # noqa: E402
from data import DEFAULT_DATASET_DIR  # noqa: E402
from data.folder import read_dataset  # noqa: E402
from data.format import PatchDataset  # noqa: E402
from workflows.serving.baselines import (  # noqa: E402
    FOREST_SEED,
    FOREST_TREES,
    BaselineData,
    Features,
    band_means,
    flat_pixels,
    logistic_regression,
    random_forest,
    score,
)
from workflows.serving.evaluate import TEST_METRICS_FILE, shown_variant  # noqa: E402
from workflows.training.config import TrainConfig  # noqa: E402

KNN_CHOICES = (1, 3, 5, 11, 21)
SEEDS = 3
QUICK_EPOCHS = 3


def knn_choose_k(dataset: PatchDataset, choices: tuple[int, ...] = KNN_CHOICES) -> tuple[int, dict[int, float]]:
    """The k (among ``choices`` not above the training size) with the best validation accuracy; ties go to the smaller.

    Returns:
        The chosen k and the validation accuracy of every k tried.
    """
    x_train, x_val = flat_pixels(dataset.train.pixels), flat_pixels(dataset.val.pixels)
    accuracies = {}
    for k in (k for k in choices if k <= len(x_train)):
        model = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=k))
        model.fit(x_train, dataset.train.labels)
        accuracies[k] = float(np.mean(model.predict(x_val) == dataset.val.labels))
    return max(accuracies, key=lambda k: (accuracies[k], -k)), accuracies


def sklearn_baselines(dataset: PatchDataset, trees: int = FOREST_TREES) -> list[tuple[str, dict[str, Any], str]]:
    """Fit and score every non-deep baseline.

    Returns:
        (name, test metrics, note) per baseline, in the table's order.
    """
    rows = []

    def run(name: str, model: Any, features: Features, note: str = "") -> None:
        started = time.perf_counter()
        metrics = score(BaselineData.from_dataset(dataset), model, features)
        rows.append((name, metrics, f"{note}{'; ' if note else ''}{time.perf_counter() - started:.1f} s"))
        print(f"  {name}: test accuracy {metrics['accuracy']:.4f}", flush=True)

    run("majority class", DummyClassifier(strategy="most_frequent"), flat_pixels)
    run("logistic regression, band means", logistic_regression(), band_means, "standardised")
    run("logistic regression, all pixels", logistic_regression(), flat_pixels, "standardised")
    k, val_acc = knn_choose_k(dataset)
    tried = ", ".join(f"{key}:{value:.3f}" for key, value in val_acc.items())
    knn = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=k))
    run(f"k-nearest neighbours (k={k})", knn, flat_pixels, f"k by val acc {{{tried}}}")
    run(f"random forest ({trees} trees)", random_forest(trees), flat_pixels, f"seed {FOREST_SEED}")
    return rows


def resnet_runs(dataset: PatchDataset, cfg: TrainConfig, seeds: list[int]) -> list[dict[str, Any]]:
    """Train and test the fixed ResNet once per seed.

    Returns:
        Per seed: ``seed``, ``accuracy``, ``macro_f1``, ``best_epoch``, ``seconds``.
    """
    data = NormalisedData.from_dataset(dataset)
    runs = []
    for seed in seeds:
        started = time.perf_counter()
        result = train_resnet(dataset, data, cfg.replace(seed=seed))
        runs.append(
            {
                "seed": seed,
                "accuracy": result.test["accuracy"],
                "macro_f1": result.test["macro_f1"],
                "best_epoch": result.best_epoch,
                "seconds": time.perf_counter() - started,
            }
        )
        print(
            f"  ResNet seed {seed}: test accuracy {result.test['accuracy']:.4f}  macro-F1 {result.test['macro_f1']:.4f}"
            f"  (best epoch {result.best_epoch}/{cfg.epochs}, {runs[-1]['seconds']:.0f} s)",
            flush=True,
        )
    return runs


def read_tune_results(folder: Path) -> list[list[str]]:
    """Table rows of a finished ``workflows/tune.py`` experiment: each prediction variant, then each baseline.

    An experiment from before the variants were recorded gives one row, its best member's.

    Raises:
        SystemExit: The folder holds no readable ``test_metrics.json`` with accuracy and macro-F1.
    """
    path = folder / TEST_METRICS_FILE
    try:
        body = json.loads(path.read_text())
        variants = body.get("variants") or {"single": body}
        rows = [
            [f"PBT {shown_variant(name)}", f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}", str(folder)]
            for name, m in variants.items()
        ]
        for baseline in (body.get("baselines") or {}).values():
            if "skipped" in baseline:
                rows.append([f"{baseline['name']} (same run)", "-", "-", baseline["skipped"]])
            else:
                figures = [f"{baseline[key]:.4f}" for key in ("accuracy", "macro_f1")]
                rows.append([f"{baseline['name']} (same run)", *figures, f"{str(folder)}; {baseline['seconds']:.1f} s"])
        return rows
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise SystemExit(
            f"{path}: not a finished PBT experiment's test metrics ({err}); pass the results folder"
        ) from None


def main() -> None:
    """Fit the baselines, train the ResNet over the seeds and print the comparison table."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATASET_DIR, help="dataset folder (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=SEEDS, help="ResNet runs, seeds 0..N-1 (default: %(default)s)")
    parser.add_argument(
        "--epochs", type=int, default=defaults.epochs, help="ResNet epochs (default: TrainConfig's %(default)s)"
    )
    parser.add_argument("--trees", type=int, default=FOREST_TREES, help="random forest size (default: %(default)s)")
    parser.add_argument(
        "--tune-results",
        type=Path,
        nargs="+",
        default=[],
        metavar="DIR",
        help="finished PBT experiments' results folders (rows for their variants and same-run baselines)",
    )
    parser.add_argument("--quick", action="store_true", help=f"one ResNet seed, {QUICK_EPOCHS} epochs (a smoke test)")
    args = parser.parse_args()
    seeds, epochs = (1, min(args.epochs, QUICK_EPOCHS)) if args.quick else (args.seeds, args.epochs)

    started = time.perf_counter()
    dataset = read_dataset(args.data)
    sizes = ", ".join(f"{name} {len(split)}" for name, split in dataset.splits.items())
    print(f"dataset {args.data} ({sizes}); torch threads {torch.get_num_threads()}")
    rows = [
        [name, f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}", note]
        for name, m, note in sklearn_baselines(dataset, args.trees)
    ]
    best_baseline = max(float(row[1]) for row in rows)
    cfg = defaults.replace(epochs=epochs)
    runs = resnet_runs(dataset, cfg, list(range(seeds)))
    (acc, acc_sd), (f1, f1_sd) = mean_sd([r["accuracy"] for r in runs]), mean_sd([r["macro_f1"] for r in runs])
    epochs_chosen = ", ".join(str(r["best_epoch"]) for r in runs)
    rows.append(
        [
            f"fixed ResNet ({epochs} epochs, n={seeds})",
            f"{acc:.4f} ± {acc_sd:.4f}",
            f"{f1:.4f} ± {f1_sd:.4f}",
            f"seeds 0..{seeds - 1}; best val epochs {epochs_chosen}; {sum(r['seconds'] for r in runs):.0f} s",
        ]
    )
    for folder in args.tune_results:
        rows.extend(read_tune_results(folder))

    print()
    print(format_table(["model", "test accuracy", "test macro-F1", "notes"], rows, left=(0, -1)))
    margin = acc - best_baseline
    print(
        f"\nResNet mean accuracy {acc:.4f} vs best baseline {best_baseline:.4f}: "
        f"{'beats' if margin > 0 else 'does NOT beat'} every baseline by {margin:+.4f}"
        f"{' (worst seed ' + format(min(r['accuracy'] for r in runs), '.4f') + ')' if seeds > 1 else ''}"
    )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
