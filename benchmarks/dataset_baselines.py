"""Print the test accuracy of two non-deep baselines on a patch dataset, to show how hard it is.

(a) Logistic regression (standardised) on the per-band patch means: what the mean spectrum alone gives.
(b) A random forest on all pixels flattened: spectra plus whatever spatial detail a forest can use.
A CNN that exploits texture should beat both; DESIGN.md asks the default dataset to leave room for that.

Usage: ``python benchmarks/dataset_baselines.py [--dataset FOLDER]`` (default: the embedded dataset).
"""

from __future__ import annotations

import argparse
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
from data.format import PatchDataset, read_dataset  # noqa: E402

FOREST_TREES = 300
FOREST_SEED = 0


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


def main() -> None:
    """Read the dataset, fit both baselines and print their test accuracies."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dataset", type=Path, default=DEFAULT_DATASET_DIR, help="dataset folder (default: %(default)s)"
    )
    parser.add_argument("--trees", type=int, default=FOREST_TREES, help="random forest size (default: %(default)s)")
    args = parser.parse_args()

    dataset = read_dataset(args.dataset)
    print(f"dataset {args.dataset}: " + ", ".join(f"{name} {len(s)}" for name, s in dataset.splits.items()))
    start = time.perf_counter()
    accuracy = band_means_accuracy(dataset)
    print(
        f"(a) logistic regression on per-band means: test accuracy {accuracy:.1%} ({time.perf_counter() - start:.1f} s)"
    )
    start = time.perf_counter()
    accuracy = pixels_forest_accuracy(dataset, trees=args.trees)
    print(
        f"(b) random forest ({args.trees} trees) on pixels: test accuracy {accuracy:.1%} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    chance = np.bincount(dataset.test.labels).max() / len(dataset.test)
    print(f"majority-class rate on test: {chance:.1%}")


if __name__ == "__main__":
    main()
