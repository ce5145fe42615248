"""Tests of the test evaluation: the variants side by side (streamed through Ray Data, with today's in-memory figures),
metrics from confusion counts, and the members' ranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray
import ray.data
from test_bundle import COUNTS, make_checkpoint

from data import DEFAULT_DATASET_DIR
from data.format import PatchFormatError, PatchMetadata, read_dataset, to_table, write_split
from data.pipeline import BandStats
from data.synthetic import generate
from workflows.evaluate import (
    classification_metrics,
    evaluate_checkpoint,
    evaluate_members,
    format_variants,
    metrics_from_confusion,
    rank_members,
    read_members,
)
from workflows.inference import (
    NO_TTA,
    confusion_counts,
    ensemble_probabilities,
    member_view_probabilities,
    model_from_state,
    tta_views,
)
from workflows.loop import load_checkpoint


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[Path]:
    """Two checkpoints of one ensemble (same data, models from different seeds)."""
    root = tmp_path_factory.mktemp("members")
    return [make_checkpoint(root / f"ck{i}", model_seed=20 + i) for i in range(2)]


def loaded(checkpoint: Path):
    state = load_checkpoint(checkpoint)
    return model_from_state(state), BandStats.from_dict(state["band_stats"])


def test_variants_of_an_ensemble_side_by_side(members, ray_cluster):
    test = generate(COUNTS, seed=0).test  # the members' own data
    metrics = evaluate_members(members, test)
    assert list(metrics["variants"]) == ["single", "ensemble", "ensemble+tta"]
    assert metrics["variant"] == "ensemble+tta"
    shipped = metrics["variants"]["ensemble+tta"]
    assert {key: metrics[key] for key in shipped} == shipped  # the top-level metrics are the shipped variant's
    assert set(metrics) >= {"per_class", "confusion_matrix", "class_names", "evaluation_seconds"}
    assert metrics["tta_views"] == {"augment": "d4", "views": 8}
    assert metrics["variants"]["single"]["accuracy"] == evaluate_checkpoint(members[0], test)["accuracy"]
    (a, stats), (b, _) = loaded(members[0]), loaded(members[1])
    averaged = ensemble_probabilities([a, b], test.pixels, stats).argmax(axis=1)
    assert metrics["variants"]["ensemble"]["accuracy"] == pytest.approx(np.mean(averaged == test.labels))
    lines = format_variants(metrics).splitlines()
    assert len(lines) == 3 and lines[-1].startswith("* ensemble+TTA") and "macro-F1" in lines[0]


def test_variants_of_one_model(members, ray_cluster):
    metrics = evaluate_members(members[:1], generate(COUNTS, seed=0).test)
    assert list(metrics["variants"]) == ["single", "single+tta"] and metrics["variant"] == "single+tta"


def test_members_of_other_experiments_are_refused(members, tmp_path):
    flips = make_checkpoint(tmp_path / "flips", model_seed=21, augment="flips")
    with pytest.raises(ValueError, match="its augment differs"):
        read_members([members[0], flips])
    with pytest.raises(ValueError, match="pass at least one"):
        read_members([])


def test_rank_members_keeps_the_healthy_best_first():
    final = {
        "a": {"val_acc": 0.7, "diverged": False},
        "b": {"val_acc": 0.9, "diverged": False},
        "c": {"val_acc": 0.95, "diverged": True},
        "d": {"val_acc": float("nan"), "diverged": False},
    }
    assert rank_members(final, "val_acc", "max") == ["b", "a", "d"]
    assert rank_members(final, "val_acc", "min") == ["a", "b", "d"]
    everyone_diverged = {key: {**body, "diverged": True} for key, body in final.items()}
    assert rank_members(everyone_diverged, "val_acc", "max") == ["c"]


# --- The streamed evaluation gives today's in-memory figures -------------------------------------------------------


def in_memory_reference(checkpoint_dirs, split):
    """Today's evaluation, in this process: every member on every view of the whole split, scikit-learn on the rows."""
    states = read_members(checkpoint_dirs)
    metadata = PatchMetadata.from_json(states[0]["metadata"])
    _, views = tta_views(states[0].get("train_config"), metadata)
    elements = views if views[0] == NO_TTA[0] else np.concatenate([NO_TTA, views])
    models = [model_from_state(state) for state in states]
    stats = BandStats.from_dict(states[0]["band_stats"])
    probabilities = member_view_probabilities(models, split.pixels, stats, elements)
    plain, tta = probabilities[:, 0], probabilities[:, len(elements) - len(views) :]
    candidates = {"single": plain[0]}
    if len(models) > 1:
        candidates["ensemble"] = plain.mean(axis=0)
    candidates["ensemble+tta" if len(models) > 1 else "single+tta"] = tta.mean(axis=(0, 1))
    classes = list(metadata.classes)
    return {name: in_memory_metrics(split.labels, p.argmax(axis=1), classes) for name, p in candidates.items()}


def without_timing(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key != "evaluation_seconds"}


@pytest.mark.parametrize("count", [2, 1], ids=["ensemble", "single"])
def test_streamed_evaluation_equals_the_in_memory_one(members, count, tmp_path, ray_cluster):
    """From the in-memory split and from a Ray dataset of the Parquet rows: today's figures, exactly."""
    dataset = generate(COUNTS, seed=0)  # the members' own data, so the variants differ
    test = dataset.test
    reference = in_memory_reference(members[:count], test)
    from_split = evaluate_members(members[:count], test)
    write_split(tmp_path / "test.parquet", test, dataset.metadata)
    from_rows = evaluate_members(members[:count], ray.data.read_parquet(str(tmp_path / "test.parquet")))
    assert without_timing(from_split) == without_timing(from_rows)
    assert list(from_split["variants"]) == list(reference)
    shipped = list(reference)[-1]
    assert from_split["variant"] == shipped
    assert {key: from_split[key] for key in reference[shipped]} == reference[shipped]
    for name, figures in reference.items():
        assert from_split["variants"][name] == {key: figures[key] for key in ("accuracy", "macro_f1", "kappa")}
    assert len({m["accuracy"] for m in reference.values()}) > 1 or count == 1  # the variants differ: a real test


def test_streamed_evaluation_of_the_default_test_split_equals_the_in_memory_one(members, ray_cluster):
    """The embedded dataset's 1,400 test patches, read by Ray Data in its own blocks: the same figures as today."""
    reference = in_memory_reference(members, read_dataset(DEFAULT_DATASET_DIR).test)
    metrics = evaluate_members(members, ray.data.read_parquet(str(DEFAULT_DATASET_DIR / "test.parquet")))
    assert {key: metrics[key] for key in reference["ensemble+tta"]} == reference["ensemble+tta"]
    for name, figures in reference.items():
        assert metrics["variants"][name] == {key: figures[key] for key in ("accuracy", "macro_f1", "kappa")}


def test_a_bad_row_of_a_ray_dataset_is_named_by_its_patch_id(members, tmp_path, ray_cluster):
    dataset = generate({"test": 28}, seed=0)
    table = to_table(dataset.test, dataset.metadata)
    labels = table.column("label").to_pylist()
    labels[9] = "volcano"
    rows = ray.data.from_arrow(table.set_column(table.column_names.index("label"), "label", pa.array(labels)))
    with pytest.raises(PatchFormatError) as caught:
        evaluate_members(members[:1], rows)
    message = str(caught.value)
    assert message.startswith(f"test split: patch '{dataset.test.patch_ids[9]}': unknown label 'volcano'")
    assert "\n" not in message


def test_metrics_from_confusion_equal_the_row_metrics():
    rng = np.random.default_rng(3)
    classes = [f"c{i}" for i in range(5)]
    for truth, predicted in [
        (rng.integers(0, 5, 400), rng.integers(0, 5, 400)),
        (rng.integers(0, 3, 50), rng.integers(0, 4, 50)),  # classes never seen or never predicted
        (np.zeros(9, dtype=int), np.zeros(9, dtype=int)),
    ]:
        expected = in_memory_metrics(truth, predicted, classes)
        assert metrics_from_confusion(confusion_counts(truth, predicted, 5), classes) == expected
        assert classification_metrics(truth, predicted, classes) == expected


def in_memory_metrics(truth, predicted, classes):
    """scikit-learn on the rows, as classification_metrics computed them before the counts."""
    from sklearn.metrics import (
        accuracy_score,
        cohen_kappa_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    labels = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=labels, zero_division=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = float(cohen_kappa_score(truth, predicted, labels=labels))
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)),
        "kappa": kappa,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(truth, predicted, labels=labels).tolist(),
        "class_names": list(classes),
    }
