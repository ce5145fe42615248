"""Tests of the model bundle: export from checkpoints (one or an ensemble), the validating loader, the prediction
modes (ensemble, test-time augmentation), version-1 bundles, and the data compatibility check."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import CHANNELS, make_checkpoint

from data.format import PatchMetadata
from data.pipeline import augmentation_elements, d4_transform
from data.synthetic import generate
from resnet import ResNet, ResNetConfig
from workflows.serving.bundle import (
    INFO_FILE,
    LEGACY_MODE,
    WEIGHTS_FILE,
    BundleError,
    PredictionMode,
    check_compatible,
    export_bundle,
    load_bundle,
    member_file,
)
from workflows.serving.evaluate import model_from_state, predict_probabilities
from workflows.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("checkpoint") / "ck")


@pytest.fixture
def bundle(checkpoint, tmp_path) -> Path:
    return export_bundle(checkpoint, tmp_path / "bundle")


def rewrite_info(bundle: Path, change) -> None:
    info = json.loads((bundle / INFO_FILE).read_text())
    change(info)
    (bundle / INFO_FILE).write_text(json.dumps(info))


def assert_one_line_error(bundle_dir: Path, *fragments: str) -> None:
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle_dir)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_round_trip_gives_the_checkpoint_model_and_statistics(checkpoint, bundle):
    assert sorted(p.name for p in bundle.iterdir()) == sorted([INFO_FILE, WEIGHTS_FILE])
    loaded = load_bundle(bundle)
    state = load_checkpoint(checkpoint)
    assert loaded.model_config.to_dict() == state["model_config"]
    assert loaded.metadata == PatchMetadata.from_json(state["metadata"])
    assert loaded.band_stats.to_dict() == state["band_stats"]
    assert not loaded.model.training
    assert loaded.info["epoch"] == 3 and loaded.info["train_config"]["seed"] == 0
    assert loaded.info["source_checkpoint"] == str(checkpoint.resolve())
    for name, tensor in loaded.model.state_dict().items():
        torch.testing.assert_close(tensor, state["model"][name], rtol=0, atol=0)
    # weights.pt is a plain state_dict of tensors
    weights = torch.load(bundle / WEIGHTS_FILE, weights_only=True)
    assert set(weights) == set(state["model"]) and all(isinstance(v, torch.Tensor) for v in weights.values())
    pixels = generate({"test": 21}, seed=9).test.pixels
    expected = predict_probabilities(model_from_state(state), pixels, loaded.band_stats)
    np.testing.assert_array_equal(loaded.predict_probabilities(pixels, tta=False), expected)
    assert loaded.mode == PredictionMode(ensemble=True, tta=True)  # the shipped default
    assert loaded.info["members"][0]["file"] == WEIGHTS_FILE and loaded.info["tta_augment"] == "d4"


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[Path]:
    """Two checkpoints of one ensemble: same data and statistics, models from different seeds."""
    root = tmp_path_factory.mktemp("members")
    return [make_checkpoint(root / f"ck{i}", model_seed=10 + i) for i in range(2)]


@pytest.fixture
def ensemble(members, tmp_path) -> Path:
    return export_bundle(members, tmp_path / "ensemble", members=[{"trial_id": "a", "val_acc": 0.8}, {"trial_id": "b"}])


def mean_over_views(model: ResNet, pixels: np.ndarray, stats, elements) -> np.ndarray:
    """The TTA reference: the model's probabilities on each moved copy of the patches, averaged."""
    views = [predict_probabilities(model, d4_transform(pixels, np.full(len(pixels), k)), stats) for k in elements]
    return np.mean(views, axis=0)


def test_ensemble_bundle_averages_its_members_probabilities(members, ensemble):
    assert sorted(p.name for p in ensemble.iterdir()) == sorted([INFO_FILE, WEIGHTS_FILE, member_file(1)])
    loaded = load_bundle(ensemble)
    assert len(loaded.models) == 2 and not any(model.training for model in loaded.models)
    assert [(m["file"], m["trial_id"]) for m in loaded.info["members"]] == [(WEIGHTS_FILE, "a"), (member_file(1), "b")]
    assert loaded.info["members"][0]["val_acc"] == 0.8
    assert loaded.info["members"][1]["source_checkpoint"] == str(members[1].resolve())
    models = [model_from_state(load_checkpoint(ck)) for ck in members]
    pixels = generate({"test": 21}, seed=9).test.pixels
    single = [predict_probabilities(model, pixels, loaded.band_stats) for model in models]
    np.testing.assert_allclose(loaded.predict_probabilities(pixels, tta=False), (single[0] + single[1]) / 2, atol=1e-6)
    np.testing.assert_array_equal(loaded.predict_probabilities(pixels, ensemble=False, tta=False), single[0])
    # The default: both members over the 8 views of D4 (the checkpoints name no augmentation: D4 by default).
    d4 = augmentation_elements("d4")
    tta = [mean_over_views(model, pixels, loaded.band_stats, d4) for model in models]
    np.testing.assert_allclose(loaded.predict_probabilities(pixels), (tta[0] + tta[1]) / 2, atol=1e-6)
    np.testing.assert_allclose(loaded.predict_probabilities(pixels, ensemble=False), tta[0], atol=1e-6)
    assert not np.allclose(single[0], single[1], atol=1e-3)  # two different models, or the test proves nothing


def test_a_model_trained_without_augmentation_predicts_one_view(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ck", augment="none")
    loaded = load_bundle(export_bundle(checkpoint, tmp_path / "bundle"))
    assert loaded.info["tta_augment"] == "none" and loaded.views.tolist() == [0]
    pixels = generate({"test": 21}, seed=9).test.pixels
    np.testing.assert_array_equal(loaded.predict_probabilities(pixels), loaded.predict_probabilities(pixels, tta=False))


def test_a_version_1_bundle_loads_as_one_member_without_tta(checkpoint, bundle):
    rewrite_info(bundle, lambda info: [info.pop(key) for key in ("members", "tta_augment", "prediction")])
    rewrite_info(bundle, lambda info: info.update(version=1))
    loaded = load_bundle(bundle)
    assert len(loaded.models) == 1 and loaded.mode == LEGACY_MODE
    assert len(loaded.views) == 8  # trained with D4 before the group was recorded: TTA can still be asked for
    pixels = generate({"test": 21}, seed=9).test.pixels
    expected = predict_probabilities(model_from_state(load_checkpoint(checkpoint)), pixels, loaded.band_stats)
    np.testing.assert_array_equal(loaded.predict_probabilities(pixels), expected)


def test_a_version_2_bundle_names_its_tta_group_tta_views(bundle):
    rewrite_info(bundle, lambda info: info.update(version=2, tta_views=info.pop("tta_augment")))
    assert len(load_bundle(bundle).views) == 8
    rewrite_info(bundle, lambda info: info.pop("tta_views"))
    assert_one_line_error(bundle, "lacks tta_views")


def test_members_that_disagree_are_refused(members, tmp_path):
    other = make_checkpoint(tmp_path / "other", seed=5)  # other data, so other band statistics
    with pytest.raises(BundleError, match="band_stats differs") as caught:
        export_bundle([members[0], other], tmp_path / "bundle")
    assert "\n" not in str(caught.value) and not (tmp_path / "bundle").exists()
    with pytest.raises(BundleError, match="2 member records for 1 checkpoints"):
        export_bundle([members[0]], tmp_path / "bundle", members=[{}, {}])


def test_a_smaller_bundle_replaces_a_larger_one(members, ensemble):
    export_bundle(members[0], ensemble, overwrite=True)
    assert sorted(p.name for p in ensemble.iterdir()) == sorted([INFO_FILE, WEIGHTS_FILE])
    assert len(load_bundle(ensemble).models) == 1


def test_a_missing_or_misnamed_member_file(ensemble):
    (ensemble / member_file(1)).unlink()
    assert_one_line_error(ensemble, str(ensemble / member_file(1)), "missing")
    rewrite_info(ensemble, lambda info: info["members"][1].update(file="../checkpoint.pt"))
    assert_one_line_error(ensemble, "member 1 names weights file '../checkpoint.pt'")
    rewrite_info(ensemble, lambda info: info["members"][1].update(file=WEIGHTS_FILE))
    assert_one_line_error(ensemble, "members share a weights file")


def test_invalid_ensemble_records(ensemble):
    rewrite_info(ensemble, lambda info: info.update(members=[]))
    assert_one_line_error(ensemble, "'members' must be a non-empty list")
    rewrite_info(ensemble, lambda info: info.update(members=[{"file": WEIGHTS_FILE}], tta_augment="spin"))
    assert_one_line_error(ensemble, "'tta_augment' is invalid", "spin")
    rewrite_info(ensemble, lambda info: info.update(tta_augment="d4", prediction={"ensemble": "yes", "tta": True}))
    assert_one_line_error(ensemble, "'prediction' must be an object")
    rewrite_info(ensemble, lambda info: info.pop("prediction"))
    assert_one_line_error(ensemble, "lacks prediction")


def test_extra_values_are_stored(checkpoint, tmp_path):
    out = export_bundle(checkpoint, tmp_path / "b", extra={"metrics": {"accuracy": 0.9}, "note": "best of PBT"})
    info = load_bundle(out).info
    assert info["metrics"] == {"accuracy": 0.9} and info["note"] == "best of PBT"


def test_export_refuses_an_existing_folder_unless_overwrite(checkpoint, bundle):
    before = (bundle / INFO_FILE).read_text()
    with pytest.raises(FileExistsError, match="already exists"):
        export_bundle(checkpoint, bundle)
    assert (bundle / INFO_FILE).read_text() == before
    export_bundle(checkpoint, bundle, extra={"note": "again"}, overwrite=True)
    assert load_bundle(bundle).info["note"] == "again"
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["bundle"]  # no temporary folders left


def test_export_never_replaces_a_folder_that_is_not_a_bundle(checkpoint, tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not only bundle files"):
        export_bundle(checkpoint, tmp_path / "results", overwrite=True)
    assert (tmp_path / "results" / "notes.txt").read_text() == "keep me"


def test_export_of_a_bad_checkpoint_writes_nothing(tmp_path):
    (tmp_path / "ck").mkdir()
    with pytest.raises(BundleError, match="no checkpoint.pt"):
        export_bundle(tmp_path / "ck", tmp_path / "bundle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_missing_folder_and_files(bundle, tmp_path):
    assert_one_line_error(tmp_path / "nowhere", "no such model bundle folder")
    (bundle / WEIGHTS_FILE).unlink()
    assert_one_line_error(bundle, WEIGHTS_FILE, "missing")
    (bundle / INFO_FILE).unlink()
    assert_one_line_error(bundle, INFO_FILE, "missing")


def test_garbage_weights(bundle):
    (bundle / WEIGHTS_FILE).write_bytes(b"\x00not a torch file" * 20)
    assert_one_line_error(bundle, str(bundle / WEIGHTS_FILE), "corrupt")


def test_truncated_weights(bundle):
    data = (bundle / WEIGHTS_FILE).read_bytes()
    (bundle / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    assert_one_line_error(bundle, WEIGHTS_FILE, "corrupt")


class Payload:
    """An arbitrary object: weights_only loading must refuse to unpickle it."""


class CodeRunner:
    """A pickle that would run a command when loaded without weights_only."""

    def __reduce__(self):
        return (os.system, ("echo owned",))


@pytest.mark.parametrize("member", [0, 1])  # the best member's weights.pt and another member's weights-1.pt
@pytest.mark.parametrize(("payload", "name"), [(Payload(), "test_bundle.Payload"), (CodeRunner(), "system")])
def test_weights_with_arbitrary_objects_are_refused_for_safety(ensemble, member, payload, name):
    torch.save({"stem.0.weight": payload}, ensemble / member_file(member))
    with pytest.raises(BundleError) as caught:
        load_bundle(ensemble)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(ensemble / member_file(member)))
    for fragment in ("refused for safety", "objects other than tensors", "could run code", name):
        assert fragment in message, message
    for advice in ("weights_only", "corrupt", "truncated", "trusted source"):
        assert advice not in message, message  # neither PyTorch's advice to bypass the check nor a wrong diagnosis


def test_weights_of_another_shape(bundle):
    config = ResNetConfig.from_dict(json.loads((bundle / INFO_FILE).read_text())["model_config"])
    torch.save(ResNet(dataclasses.replace(config, channels=2 * CHANNELS)).state_dict(), bundle / WEIGHTS_FILE)
    assert_one_line_error(bundle, WEIGHTS_FILE, "stem.0.weight", "has shape", "needs")


def test_weights_with_missing_and_unexpected_names(bundle):
    weights = torch.load(bundle / WEIGHTS_FILE, weights_only=True)
    weights["extra.weight"] = weights.pop("head.4.weight")
    torch.save(weights, bundle / WEIGHTS_FILE)
    assert_one_line_error(bundle, "missing head.4.weight", "unexpected extra.weight")


def test_non_finite_weights(bundle):
    weights = torch.load(bundle / WEIGHTS_FILE, weights_only=True)
    weights["head.4.bias"][0] = float("nan")
    torch.save(weights, bundle / WEIGHTS_FILE)
    assert_one_line_error(bundle, "head.4.bias", "non-finite")


def test_invalid_json(bundle):
    (bundle / INFO_FILE).write_text('{"format": ')
    assert_one_line_error(bundle, str(bundle / INFO_FILE), "not valid JSON")


def test_json_without_a_required_key(bundle):
    rewrite_info(bundle, lambda info: info.pop("band_stats"))
    assert_one_line_error(bundle, INFO_FILE, "lacks band_stats")


def test_json_of_another_format_version(bundle):
    rewrite_info(bundle, lambda info: info.update(version=99))
    assert_one_line_error(bundle, "version 99")


def test_config_inconsistent_with_metadata(bundle):
    channels = load_bundle(bundle).model_config.in_channels
    rewrite_info(bundle, lambda info: info["metadata"].update(bands=info["metadata"]["bands"][:-1], units=None))
    assert_one_line_error(bundle, "inconsistent", f"in_channels is {channels} but metadata has {channels - 1} bands")


def test_band_stats_of_the_wrong_length(bundle):
    rewrite_info(bundle, lambda info: info["band_stats"].update(mean=info["band_stats"]["mean"][:3]))
    assert_one_line_error(bundle, "band_stats.mean has 3 values")


def test_invalid_model_config_and_metadata(bundle):
    rewrite_info(bundle, lambda info: info["model_config"].update(chanels=3))
    assert_one_line_error(bundle, "'model_config' is invalid", "chanels")
    rewrite_info(bundle, lambda info: (info["model_config"].pop("chanels"), info["metadata"].update(height=0)))
    assert_one_line_error(bundle, "'metadata' is invalid", "height")


def metadata(**changes) -> PatchMetadata:
    return dataclasses.replace(generate({"test": 7}, seed=1).metadata, **changes)


def test_compatible_data_passes():
    check_compatible(metadata(), metadata(), "input.parquet")
    check_compatible(metadata(), metadata(classes=("a", "b")), "input.parquet", labelled=False)


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"bands": ("B1", "B2"), "units": None}, ["2 bands (B1, B2) where the model expects"]),
        ({"height": 99}, ["height 99 where the model expects"]),
        ({"width": 1}, ["width 1 where the model expects"]),
        ({"classes": ("a", "b")}, ["classes (a, b) differ", "drop the label column"]),
    ],
)
def test_incompatible_data_names_what_differs(changes, fragments):
    with pytest.raises(BundleError) as caught:
        check_compatible(metadata(), metadata(**changes), "input.parquet")
    message = str(caught.value)
    assert message.startswith("input.parquet: does not match the model bundle") and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_swapped_band_names_are_caught():
    bands = metadata().bands
    swapped = (bands[1], bands[0], *bands[2:])
    with pytest.raises(BundleError, match=f"band 0 is '{bands[1]}' where the model expects '{bands[0]}'"):
        check_compatible(metadata(), metadata(bands=swapped), "x")
