"""The checkpoint format: a training state round-trips, and a folder that is not a checkpoint is refused in one line."""

import numpy as np
import pytest
import torch
from torch import nn

from data.format import PatchMetadata
from data.pipeline import BandStats
from resnet import ResNet, ResNetConfig
from workflows.training.checkpoint import (
    CHECKPOINT_FILE,
    load_checkpoint,
    model_from_state,
    run_facts,
    save_checkpoint,
    training_state,
)
from workflows.training.config import TrainConfig

METADATA = PatchMetadata(bands=("b1", "b2", "b3", "b4"), height=8, width=8, classes=("a", "b", "c"))


def _run() -> tuple[ResNet, torch.optim.Optimizer, dict]:
    torch.manual_seed(0)
    config = ResNetConfig.from_metadata(METADATA, channels=8)
    model = ResNet(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(2, 4, 8, 8)).sum().backward()
    optimizer.step()  # the optimizer now has moments to save
    stats = BandStats(mean=np.arange(4.0), std=np.ones(4))
    facts = run_facts(stats, config, TrainConfig(lr=0.01, augment="flips"), METADATA)
    return model, optimizer, facts


def test_a_training_state_round_trips_and_rebuilds_the_network(tmp_path):
    model, optimizer, facts = _run()
    state = training_state(nn.DataParallel(model), optimizer, epoch=3, command=5, facts=facts, metrics={"val_acc": 0.5})
    save_checkpoint(tmp_path, state)
    loaded = load_checkpoint(tmp_path)
    assert (loaded["epoch"], loaded["command"], loaded["metrics"]) == (3, 5, {"val_acc": 0.5})
    assert TrainConfig(**loaded["train_config"]) == TrainConfig(lr=0.01, augment="flips")
    assert PatchMetadata.from_json(loaded["metadata"]) == METADATA
    assert BandStats.from_dict(loaded["band_stats"]).mean.tolist() == [0.0, 1.0, 2.0, 3.0]
    # The wrapper's prefix is not saved (DDP wraps the same way): the bare network loads the weights.
    assert not any(key.startswith("module.") for key in loaded["model"])
    rebuilt = model_from_state(loaded)
    assert not rebuilt.training
    x = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))
    fresh = torch.optim.AdamW(rebuilt.parameters(), lr=0.01)
    fresh.load_state_dict(loaded["optimizer"])
    assert fresh.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]


def test_a_folder_without_a_checkpoint_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match=f"no {CHECKPOINT_FILE} in this checkpoint folder"):
        load_checkpoint(tmp_path)


def test_a_state_missing_required_keys_is_refused_naming_them(tmp_path):
    torch.save({"model": {}, "epoch": 1}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match="checkpoint lacks band_stats, metadata, model_config, optimizer"):
        load_checkpoint(tmp_path)


def test_a_file_that_is_not_a_torch_state_is_refused_in_one_line(tmp_path):
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError) as caught:
        load_checkpoint(tmp_path)
    assert str(tmp_path / CHECKPOINT_FILE) in str(caught.value)
    assert "\n" not in str(caught.value)


class Payload:
    """An arbitrary object: unpickling it could run code, so ``weights_only`` loading refuses it."""


def test_arbitrary_pickled_objects_are_not_loaded(tmp_path):
    torch.save({**dict.fromkeys(("model", "optimizer", "epoch", "band_stats", "model_config", "metadata")),
                "payload": Payload()}, tmp_path / CHECKPOINT_FILE)  # fmt: skip
    with pytest.raises(ValueError, match=CHECKPOINT_FILE):
        load_checkpoint(tmp_path)
