"""Print the test accuracy of two non-deep baselines on a patch dataset, to show how hard it is.

(a) Logistic regression (standardised) on the per-band patch means: what the mean spectrum alone gives.
(b) A random forest on all pixels flattened: spectra plus whatever spatial detail a forest can use.
A CNN that exploits texture should beat both; docs/DESIGN.md asks the default dataset to leave room for that.

The dataset is a folder (``--data``, default the embedded dataset) or a synthetic preset generated in memory for
each of several generator seeds (``--preset small-patch --generator-seeds 0 1 2``), reported per seed and as mean
± sample standard deviation; the forest's own seed stays fixed.

Usage: ``python benchmarks/dataset_baselines.py [--data FOLDER | --preset NAME [--generator-seeds S ...]]
[--trees N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import DEFAULT_DATASET_DIR  # noqa: E402
from data.folder import read_dataset  # noqa: E402
from data.format import PatchDataset  # noqa: E402
from data.synthetic import PRESETS  # noqa: E402

FOREST_TREES = 300
FOREST_SEED = 0
GENERATOR_SEEDS = (0, 1, 2)


def band_means_accuracy(dataset: PatchDataset) -> float:
    """Test accuracy of a standardised logistic regression on per-band patch means, trained on train."""
    train, test = dataset.train, dataset.test
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    model.fit(train.pixels.mean(axis=(2, 3)), train.labels)
    return float(accuracy_score(test.labels, model.predict(test.pixels.mean(axis=(2, 3)))))


def pixels_forest_accuracy(dataset: PatchDataset, trees: int = FOREST_TREES, seed: int = FOREST_SEED) -> float:
    """Test accuracy of a random forest on all pixels flattened, trained on train."""
    train, test = dataset.train, dataset.test
    model = RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=-1)
    model.fit(train.pixels.reshape(len(train), -1), train.labels)
    return float(accuracy_score(test.labels, model.predict(test.pixels.reshape(len(test), -1))))


def report(name: str, dataset: PatchDataset, trees: int) -> tuple[float, float]:
    """Fit both baselines on one dataset, print their test accuracies and return them (logistic, forest)."""
    print(f"dataset {name}: " + ", ".join(f"{split} {len(s)}" for split, s in dataset.splits.items()))
    start = time.perf_counter()
    logistic = band_means_accuracy(dataset)
    print(
        f"(a) logistic regression on per-band means: test accuracy {logistic:.1%} ({time.perf_counter() - start:.1f} s)"
    )
    start = time.perf_counter()
    forest = pixels_forest_accuracy(dataset, trees=trees)
    print(
        f"(b) random forest ({trees} trees, seed {FOREST_SEED}) on pixels: test accuracy {forest:.1%} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    chance = np.bincount(dataset.test.labels).max() / len(dataset.test)
    print(f"majority-class rate on test: {chance:.1%}")
    return logistic, forest


def main() -> None:
    """Read or generate the dataset(s), fit both baselines and print their test accuracies."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--data", "--dataset", type=Path, default=DEFAULT_DATASET_DIR, help="dataset folder (default: %(default)s)"
    )
    source.add_argument("--preset", choices=tuple(PRESETS), help="generate this synthetic preset instead")
    parser.add_argument(
        "--generator-seeds",
        type=int,
        nargs="+",
        default=GENERATOR_SEEDS,
        metavar="SEED",
        help="with --preset: the generator seeds, one dataset each (default: %(default)s)",
    )
    parser.add_argument("--trees", type=int, default=FOREST_TREES, help="random forest size (default: %(default)s)")
    args = parser.parse_args()

    if args.preset is None:
        report(str(args.data), read_dataset(args.data), args.trees)
        return
    preset = PRESETS[args.preset]
    logistic, forest = [], []
    for seed in args.generator_seeds:
        dataset = preset.generate(preset.counts, seed)
        scores = report(f"{args.preset} (generator seed {seed})", dataset, args.trees)
        logistic.append(scores[0])
        forest.append(scores[1])
        print()
    for name, values in (("logistic regression, band means", logistic), ("random forest, pixels", forest)):
        spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        shown = ", ".join(f"{v:.3f}" for v in values)
        print(f"{name}: test accuracy {statistics.mean(values):.3f}{spread} (seeds {args.generator_seeds}: {shown})")


if __name__ == "__main__":
    main()
