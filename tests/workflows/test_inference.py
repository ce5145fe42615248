"""Tests of the inference library: TTA and ensemble averages in process, actor resources, and the model actors' class
called in this process."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from test_bundle import make_checkpoint

from data.format import to_table
from data.pipeline import BandStats, augmentation_elements, d4_transform
from data.synthetic import generate
from workflows.bundle import export_bundle, load_bundle
from workflows.inference import (
    NO_TTA,
    ActorResources,
    Predictor,
    ensemble_probabilities,
    member_view_probabilities,
    model_from_state,
    predict_probabilities,
)
from workflows.loop import load_checkpoint
from workflows.patch_stream import BlockCheck
from workflows.predictions import PREDICTED_LABEL, TRUE_INDEX, probability_column


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


def test_actor_resources_size_threads_and_pools():
    assert (
        ActorResources().threads == 1 and ActorResources(cpus=0.5).threads == 1 and ActorResources(cpus=3).threads == 3
    )
    assert ActorResources().device().type == "cpu" and ActorResources(gpus=0.25).device().type == "cuda"
    assert ActorResources(cpus=2).pool_size(cluster_cpus=5, cluster_gpus=0) == 2
    assert ActorResources(gpus=0.5).pool_size(cluster_cpus=16, cluster_gpus=1) == 2
    assert ActorResources(cpus=4).pool_size(cluster_cpus=2, cluster_gpus=0) == 1  # at least one
    with pytest.raises(ValueError, match="cpus > 0"):
        ActorResources(cpus=0)


def test_the_predictor_classifies_a_block_as_the_bundle_does(members, tmp_path):
    bundle_dir = export_bundle(members, tmp_path / "bundle")
    bundle = load_bundle(bundle_dir)
    dataset = generate({"test": 21}, seed=9)
    check = BlockCheck("in.parquet", dataset.metadata, labelled=True)
    predictor = Predictor(functools.partial(load_bundle, bundle_dir), check, ensemble=False)
    out = predictor(to_table(dataset.test, dataset.metadata))
    expected = bundle.predict_probabilities(dataset.test.pixels, ensemble=False)
    classes = list(bundle.metadata.classes)
    probabilities = np.stack([out.column(probability_column(c)).to_numpy() for c in classes], axis=1)
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-6)
    assert out.column(PREDICTED_LABEL).to_pylist() == [classes[k] for k in expected.argmax(axis=1)]
    assert out.column(TRUE_INDEX).to_pylist() == dataset.test.labels.tolist()
    empty = predictor(to_table(dataset.test, dataset.metadata).slice(0, 0))
    assert empty.num_rows == 0 and empty.schema == out.schema  # a carved-away block keeps the schema
