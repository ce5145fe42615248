"""Pins for workflows/training/ray_private.py: Ray 2.60's Train still reads what we set and still has what we override.

Each test imports the Ray code that consumes a setting or that we override, so it fails when that code changes, not
merely when a name disappears from Ray's source. None starts a cluster.
"""

import importlib
import logging
import os
from unittest.mock import MagicMock

import pytest
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2._internal import constants as train_constants
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.execution.controller import controller
from ray.train.v2._internal.execution.worker_group.worker_group import WorkerGroup

from workflows.training import ray_private
from workflows.training.ray_private import TRAIN_ENV, TorchTrainerWithoutCleaner, apply_train_settings

# Our setting -> the name of Ray's constant holding it, as TrainController and WorkerGroup import it.
TRAIN_CONSTANTS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "HEALTH_CHECK_INTERVAL_S_ENV_VAR",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "WORKER_GROUP_START_TIMEOUT_S_ENV_VAR",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "ENABLE_PREEMPTION_WATCHER_ENV_VAR",
}


def test_every_train_setting_is_pinned():
    assert set(TRAIN_ENV) == set(TRAIN_CONSTANTS)


@pytest.mark.parametrize("name", sorted(TRAIN_CONSTANTS))
def test_train_passes_each_setting_from_the_caller_to_its_controller_and_workers(name):
    # We set them in the process that calls fit(); Train copies only these to the controller and workers.
    assert getattr(train_constants, TRAIN_CONSTANTS[name]) == name
    assert name in train_constants.ENV_VARS_TO_PROPAGATE


@pytest.mark.parametrize("name", ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"])
def test_the_train_controller_reads_its_settings_when_built(name):
    constant = TRAIN_CONSTANTS[name]
    assert getattr(controller, constant) == name
    assert constant in controller.TrainController.__init__.__code__.co_names


def test_the_preemption_watcher_setting_turns_it_off(monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", TRAIN_ENV["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"])
    assert not controller.ray_constants.env_bool(
        controller.ENABLE_PREEMPTION_WATCHER_ENV_VAR, controller.DEFAULT_ENABLE_PREEMPTION_WATCHER
    )


def test_a_worker_group_takes_its_start_timeout_from_the_environment(monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", TRAIN_ENV["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"])
    group = WorkerGroup(MagicMock(), MagicMock())
    assert group._worker_group_start_timeout_s == float(TRAIN_ENV["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"])


def test_a_value_the_user_set_wins(monkeypatch):
    for name in TRAIN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1.5")
    apply_train_settings()
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "1.5"
    assert os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] == TRAIN_ENV["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"]


def _default_callbacks(trainer_class, tmp_path):
    trainer = trainer_class(
        lambda: None,
        scaling_config=ScalingConfig(num_workers=1),
        run_config=RunConfig(name="pin", storage_path=str(tmp_path)),
    )
    return [type(callback) for callback in trainer._create_default_callbacks()]


def test_a_stock_trainer_has_the_placement_group_cleaner_and_ours_does_not(tmp_path):
    stock = _default_callbacks(TorchTrainer, tmp_path)
    ours = _default_callbacks(TorchTrainerWithoutCleaner, tmp_path)
    assert PlacementGroupCleanerCallback in stock, "Ray no longer adds the cleaner here: the override does nothing"
    assert PlacementGroupCleanerCallback not in ours
    assert ours == [kind for kind in stock if kind is not PlacementGroupCleanerCallback]


def test_the_loggers_we_quiet_are_the_ones_ray_logs_on():
    progress = importlib.import_module(ray_private.RAY_DATA_PROGRESS_LOGGER)
    assert progress.logger.name == ray_private.RAY_DATA_PROGRESS_LOGGER
    for name in ray_private.RAY_DATA_UDF_ERROR_LOGGERS:
        assert importlib.import_module(name).logger.name == name
    from ray.train.v2._internal.execution import context as train_context

    assert train_context.logger is logging.getLogger(train_context.__file__)
