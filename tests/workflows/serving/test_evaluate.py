"""Tests of the test evaluation: TTA and ensemble averages, the variants side by side, and the members' ranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import COUNTS, make_checkpoint

from data.pipeline import BandStats, augmentation_elements, d4_transform
from data.synthetic import generate
from workflows.serving.evaluate import (
    NO_TTA,
    ensemble_probabilities,
    evaluate_members,
    format_variants,
    member_view_probabilities,
    model_from_state,
    predict_probabilities,
    rank_members,
    read_members,
)
from workflows.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[Path]:
    """Two checkpoints of one ensemble (same data, models from different seeds)."""
    root = tmp_path_factory.mktemp("members")
    return [make_checkpoint(root / f"ck{i}", model_seed=20 + i) for i in range(2)]


def loaded(checkpoint: Path):
    state = load_checkpoint(checkpoint)
    return model_from_state(state), BandStats.from_dict(state["band_stats"])


def test_tta_over_d4_is_the_mean_over_the_8_moved_inputs(members):
    model, stats = loaded(members[0])
    pixels = generate({"test": 30}, seed=3).test.pixels
    moved = [predict_probabilities(model, d4_transform(pixels, np.full(len(pixels), k)), stats) for k in range(8)]
    tta = ensemble_probabilities([model], pixels, stats, augmentation_elements("d4"))
    np.testing.assert_allclose(tta, np.mean(moved, axis=0), atol=1e-6)
    np.testing.assert_allclose(tta.sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(tta, moved[0], atol=1e-3)  # the views differ, or the test proves nothing


def test_no_augmentation_is_a_single_view(members):
    model, stats = loaded(members[0])
    pixels = generate({"test": 30}, seed=3).test.pixels
    assert augmentation_elements("none").tolist() == NO_TTA.tolist()
    np.testing.assert_array_equal(
        ensemble_probabilities([model], pixels, stats, augmentation_elements("none")),
        predict_probabilities(model, pixels, stats),
    )


def test_ensemble_is_the_mean_of_its_members(members):
    (a, stats), (b, _) = loaded(members[0]), loaded(members[1])
    pixels = generate({"test": 30}, seed=3).test.pixels
    views = augmentation_elements("flips")
    per_member = member_view_probabilities([a, b], pixels, stats, views)
    assert per_member.shape == (2, len(views), 30, a.config.num_classes)
    np.testing.assert_allclose(
        ensemble_probabilities([a, b], pixels, stats),
        (predict_probabilities(a, pixels, stats) + predict_probabilities(b, pixels, stats)) / 2,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        ensemble_probabilities([a, b], pixels, stats, views), per_member.mean(axis=(0, 1)), atol=1e-6
    )
    assert member_view_probabilities([a], pixels[:0], stats, views).shape == (1, len(views), 0, a.config.num_classes)
    assert ensemble_probabilities([a], pixels[:0], stats).shape == (0, a.config.num_classes)


def test_variants_of_an_ensemble_side_by_side(members):
    test = generate(COUNTS, seed=0).test  # the members' own data
    metrics = evaluate_members(members, test)
    assert list(metrics["variants"]) == ["single", "ensemble", "ensemble+tta"]
    assert metrics["variant"] == "ensemble+tta"
    shipped = metrics["variants"]["ensemble+tta"]
    assert {key: metrics[key] for key in shipped} == shipped  # the top-level metrics are the shipped variant's
    assert set(metrics) >= {"per_class", "confusion_matrix", "class_names", "evaluation_seconds"}
    assert metrics["tta_views"] == {"augment": "d4", "views": 8}
    (a, stats), (b, _) = loaded(members[0]), loaded(members[1])
    alone = predict_probabilities(a, test.pixels, stats).argmax(axis=1)
    assert metrics["variants"]["single"]["accuracy"] == pytest.approx(np.mean(alone == test.labels))
    averaged = ensemble_probabilities([a, b], test.pixels, stats).argmax(axis=1)
    assert metrics["variants"]["ensemble"]["accuracy"] == pytest.approx(np.mean(averaged == test.labels))
    lines = format_variants(metrics).splitlines()
    assert len(lines) == 3 and lines[-1].startswith("* ensemble+TTA") and "macro-F1" in lines[0]


def test_variants_of_one_model(members):
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


def test_a_split_read_as_batches_scores_as_the_split_in_memory(members):
    split = generate({"test": 70}, seed=5).test
    whole = evaluate_members(members, split)
    batches = [(split.pixels[i : i + 16], split.labels[i : i + 16]) for i in range(0, 70, 16)]  # uneven last batch
    streamed = evaluate_members(members, lambda: batches)
    for key in ("accuracy", "macro_f1", "kappa", "confusion_matrix", "per_class", "variants"):
        assert streamed[key] == whole[key], key
    assert sum(map(sum, streamed["confusion_matrix"])) == 70
    with pytest.raises(ValueError, match="no patches to evaluate"):
        evaluate_members(members, lambda: [])
