"""Tests of the classic baselines: fitted and scored on the same splits, skipped with a note above their size limit."""

from __future__ import annotations

import dataclasses

import pytest

from data.synthetic import generate
from workflows.serving.baselines import (
    BASELINES,
    BaselineData,
    format_comparison,
    format_test_summary,
    run_baselines,
    skip_notes,
)

COUNTS = {"train": 70, "val": 14, "test": 70}


@pytest.fixture(scope="module")
def dataset():
    return generate(COUNTS, seed=4)


def test_baselines_are_fitted_and_scored(dataset):
    first = run_baselines(dataset)
    assert list(first) == ["random_forest", "logistic_regression"]
    chance = 1 / dataset.metadata.num_classes
    for body in first.values():
        assert set(body) == {"name", "accuracy", "macro_f1", "kappa", "seconds"}
        assert body["accuracy"] > chance
    again = run_baselines(dataset)
    assert {key: body["accuracy"] for key, body in again.items()} == {
        key: body["accuracy"] for key, body in first.items()
    }  # fixed seeds: the same figures every run


def test_a_test_split_read_as_batches_scores_as_the_split_in_memory(dataset):
    test = dataset.test
    batches = [(test.pixels[i : i + 32], test.labels[i : i + 32]) for i in range(0, len(test), 32)]
    data = dataclasses.replace(BaselineData.from_dataset(dataset), test=lambda: batches)
    streamed, whole = run_baselines(data), run_baselines(dataset)
    for key in whole:
        assert {k: v for k, v in streamed[key].items() if k != "seconds"} == {
            k: v for k, v in whole[key].items() if k != "seconds"
        }


def test_a_baseline_above_its_limit_is_skipped_with_a_note(dataset):
    cells = len(dataset.train) * dataset.train.pixels[0].size
    small = (dataclasses.replace(BASELINES[0], max_cells=cells - 1), BASELINES[1])
    results = run_baselines(dataset, small)
    forest = results["random_forest"]
    assert set(forest) == {"name", "skipped"} and "accuracy" in results["logistic_regression"]
    note = forest["skipped"]
    assert "\n" not in note and note.startswith("random forest skipped")
    assert f"{len(dataset.train)} patches x {dataset.train.pixels[0].size} features" in note
    metrics = {"variant": "ensemble+tta", "accuracy": 0.9571, "baselines": results}
    assert skip_notes(metrics) == [note]
    line = format_comparison(metrics)
    logistic = results["logistic_regression"]["accuracy"]
    assert line == f"ResNet ensemble+TTA 0.957 · random forest skipped · logistic regression {logistic:.3f}"


def test_the_printed_summary(dataset):
    variants = {
        "single": {"accuracy": 0.8705, "macro_f1": 0.86, "kappa": 0.85},
        "ensemble": {"accuracy": 0.885, "macro_f1": 0.88, "kappa": 0.86},
        "ensemble+tta": {"accuracy": 0.888, "macro_f1": 0.887, "kappa": 0.87},
    }
    metrics = {
        **variants["ensemble+tta"],
        "variant": "ensemble+tta",
        "variants": variants,
        "per_class": {"water": {"precision": 1.0, "recall": 0.9, "f1": 0.95, "support": 10}},
        "tta_views": {"augment": "d4", "views": 8},
        "evaluation_seconds": 2.5,
        "baselines": {"random_forest": {"name": "random forest", "accuracy": 0.831}},
    }
    lines = format_test_summary(metrics).splitlines()
    assert "8 d4 view(s)" in lines[0] and "2.5 s" in lines[0]
    assert [line.lstrip("* ").split()[0] for line in lines[1:4]] == ["single", "ensemble", "ensemble+TTA"]
    assert lines[3].startswith("*") and "accuracy 0.8880" in lines[3]
    assert lines[-1] == "ResNet ensemble+TTA 0.888 · random forest 0.831"
