"""Tests of the model bundle: export from a checkpoint, the validating loader, and the data compatibility check."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from data.format import PatchMetadata
from data.pipeline import compute_band_stats, normalise
from data.synthetic import generate
from resnet import ResNet, ResNetConfig
from workflows.bundle import (
    INFO_FILE,
    WEIGHTS_FILE,
    BundleError,
    check_compatible,
    export_bundle,
    load_bundle,
)
from workflows.evaluate import model_from_state, predict_probabilities
from workflows.loop import load_checkpoint, save_checkpoint

COUNTS = {"train": 70, "val": 14, "test": 28}
CHANNELS = 16  # small and quick; the format does not depend on the width


def make_checkpoint(directory: Path, seed: int = 0) -> Path:
    """A checkpoint as the training loop writes it, from a model that took a few steps (so BatchNorm has stats)."""
    dataset = generate(COUNTS, seed=seed)
    stats = compute_band_stats(dataset.train.pixels)
    torch.manual_seed(seed)
    config = ResNetConfig.from_metadata(dataset.metadata, channels=CHANNELS)
    model = ResNet(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.from_numpy(normalise(dataset.train.pixels, stats))
    y = torch.from_numpy(dataset.train.labels)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        directory,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": 3,
            "band_stats": stats.to_dict(),
            "model_config": config.to_dict(),
            "train_config": {"lr": 1e-3, "seed": seed},
            "metadata": dataset.metadata.to_json(),
            "metrics": {"val_acc": 0.5},
        },
    )
    return directory


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
    np.testing.assert_array_equal(loaded.predict_probabilities(pixels), expected)


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


@pytest.mark.parametrize(("payload", "name"), [(Payload(), "test_bundle.Payload"), (CodeRunner(), "system")])
def test_weights_with_arbitrary_objects_are_refused_for_safety(bundle, payload, name):
    torch.save({"stem.0.weight": payload}, bundle / WEIGHTS_FILE)
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(bundle / WEIGHTS_FILE))
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
