"""Launching Train runs: how a run's end treats Train's errors, and a long-lived PBT member's run."""

import logging
import shutil
import threading

import pytest
from builders import ray_inputs
from ray.util.placement_group import placement_group_table

from data import DEFAULT_DATASET_DIR
from data.folder import read_dataset
from workflows.training.config import GRAD_CLIP, LR, TrainConfig
from workflows.training.launch import MemberRun, RunInputs, _Run, unique_run_name
from workflows.training.mailbox import Mailbox, control_folder
from workflows.training.placement import recorded_placement_group


class _TrainFailed(Exception):
    """Stands in for an error Train's fit() raised."""


def _ended_run(tmp_path, outcome):
    """A run whose fit() thread has already ended with ``outcome``."""
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    mailbox = Mailbox(control_folder(str(tmp_path / "runs"), "r"))
    return _Run(name="r", mailbox=mailbox, owner=None, thread=thread, outcome=outcome)


def test_ending_a_run_that_failed_by_itself_logs_trains_error(tmp_path, caplog):
    run = _ended_run(tmp_path, {"error": _TrainFailed("worker 1 died")})
    with caplog.at_level(logging.ERROR, logger="workflows.training.launch"):
        run.end()  # the caller is already leaving: its own error, not Train's, must propagate
    assert [record.exc_info[1] for record in caplog.records] == [run.outcome["error"]]
    assert "worker 1 died" in caplog.text
    assert not run.control.exists()


def test_an_error_already_raised_to_the_caller_is_not_logged_again(tmp_path, caplog):
    run = _ended_run(tmp_path, {"error": _TrainFailed("gave up")})
    with pytest.raises(_TrainFailed):
        run.close()
    with caplog.at_level(logging.ERROR, logger="workflows.training.launch"):
        run.end()
    assert not caplog.records


def test_ending_a_run_that_finished_logs_nothing(tmp_path, caplog):
    run = _ended_run(tmp_path, {"result": "done"})
    with caplog.at_level(logging.INFO, logger="workflows.training.launch"):
        run.end()
    assert not caplog.records
    assert run.close() == "done"


@pytest.fixture(scope="module")
def member_data(ray_cluster):
    dataset = read_dataset(DEFAULT_DATASET_DIR)
    stats, datasets = ray_inputs(DEFAULT_DATASET_DIR)
    return dataset, stats, datasets


def test_a_member_run_takes_one_command_per_epoch_and_loads_a_checkpoint_in_place(member_data, tmp_path, alive_actors):
    """The long-lived PBT member: two workers, epochs on command, an exploit that is a checkpoint load."""
    dataset, stats, datasets = member_data
    cfg = TrainConfig(epochs=4, channels=16, num_workers=2, cpus_per_worker=0.9, batch_size=64, seed=0)
    inputs = RunInputs(cfg, dataset.metadata, stats, datasets, tmp_path / "runs", unique_run_name("m"))
    member = MemberRun(inputs, owner="test/member")
    try:
        first, first_checkpoint = member.step({LR: cfg.lr, GRAD_CLIP: cfg.grad_clip})
        kept = tmp_path / "epoch-1"
        shutil.copytree(first_checkpoint, kept)  # as Tune keeps a copy
        second, _ = member.step({LR: cfg.lr, GRAD_CLIP: cfg.grad_clip})
        assert (first["epoch"], second["epoch"]) == (1, 2)
        assert "_placement_group" not in first, "infrastructure state in the metrics"
        # Rank 0 recorded the workers' placement group, for the member's next run should this process die.
        assert placement_group_table()[recorded_placement_group("test/member")]["state"] == "CREATED"
        controllers = {a["ActorID"] for a in alive_actors("TrainController")}
        # The exploit: epoch 1's state back, new settings, the same workers.
        third, _ = member.step({LR: 1e-4, GRAD_CLIP: None}, load=str(kept))
        assert third["epoch"] == 2, "continues from the loaded checkpoint's epoch"
        assert third[LR] == pytest.approx(1e-4) and third[GRAD_CLIP] == 0.0
        assert {a["ActorID"] for a in alive_actors("TrainController")} == controllers, "a new Train run started"
        # Back to the freshly seeded state, as when Tune hands the process to a trial that starts from scratch.
        fresh, _ = member.step({LR: cfg.lr, GRAD_CLIP: cfg.grad_clip}, fresh=True)
        assert fresh["epoch"] == 1
    finally:
        member.stop()
    assert not member.run.thread.is_alive()
    assert not member.control.exists()
    assert recorded_placement_group("test/member") is None, "the run ended: Train removed the group"
