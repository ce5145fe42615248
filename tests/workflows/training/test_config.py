"""The training config and the entry scripts' flags: where --results may go, --augment checked."""

from pathlib import Path

import pytest

from data import DEFAULT_DATASET_DIR
from workflows import train, tune
from workflows.jobs.training_run import TrainJob
from workflows.training.config import AUGMENTATIONS, TrainConfig, ranking_score, results_location


@pytest.mark.parametrize("script", [train, tune])
def test_a_results_bucket_that_does_not_exist_is_one_line_and_nothing_is_created(
    script, s3_server, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert script.main(["--results", "s3://no-such-bucket/run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --results s3://no-such-bucket/run: bucket 'no-such-bucket' does not exist")
    assert err.strip().count("\n") == 0
    assert list(tmp_path.iterdir()) == []


def test_a_results_uri_in_an_existing_bucket_is_taken_as_typed(s3_server):
    bucket = s3_server.bucket("runs")
    location = results_location(f"{bucket}/exp", "tune", DEFAULT_DATASET_DIR)
    assert location.uri == "s3://runs/exp" and not location.local


def test_a_local_results_folder_is_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert results_location("out/run", "train", DEFAULT_DATASET_DIR).path == str(tmp_path / "out" / "run")
    assert Path(results_location(None, "train", DEFAULT_DATASET_DIR).path).parent == tmp_path / "results"


def test_augmentation_defaults_to_d4_and_survives_the_ray_boundary():
    assert TrainConfig().augment == "d4" and AUGMENTATIONS == ("d4", "flips", "none")
    flips = TrainConfig(augment="flips")
    assert TrainConfig(**flips.to_dict()) == flips
    assert TrainConfig(lr=1e-3).augment == "d4"


def test_unknown_augmentation_is_refused_in_one_line():
    with pytest.raises(ValueError) as refused:
        TrainConfig(augment="rot90")
    assert str(refused.value) == "augment must be one of d4, flips, none, got 'rot90'"


@pytest.mark.parametrize("script", [train, tune])
def test_scripts_take_augment_from_the_config_choices(script, capsys):
    parser = script.build_parser()
    assert parser.parse_args([]).augment == TrainConfig().augment
    assert parser.parse_args(["--augment", "none"]).augment == "none"
    with pytest.raises(SystemExit):
        parser.parse_args(["--augment", "rot90"])
    err = capsys.readouterr().err
    assert "invalid choice: 'rot90'" in err and "d4" in err and "flips" in err


def test_train_script_puts_augment_into_its_config():
    assert TrainJob.from_mapping(train.build_parser().parse_args(["--augment", "flips"])).training.augment == "flips"


def test_the_mode_defaults_to_the_metrics_direction_and_a_metric_must_be_reported():
    assert TrainConfig().mode == "max" and TrainConfig(metric="val_loss").mode == "min"
    assert TrainConfig(metric="val_loss", mode="max").mode == "max"
    with pytest.raises(ValueError, match="metric must be one of val_acc"):
        TrainConfig(metric="accuracy")


def test_ranking_score_is_higher_for_better_and_lowest_for_missing():
    assert ranking_score({"val_acc": 0.9}, "val_acc", "max") > ranking_score({"val_acc": 0.5}, "val_acc", "max")
    assert ranking_score({"val_loss": 0.1}, "val_loss", "min") > ranking_score({"val_loss": 2.0}, "val_loss", "min")
    for missing in ({}, {"val_acc": float("nan")}, {"val_acc": None}, {"val_acc": True}):
        assert ranking_score(missing, "val_acc", "max") == float("-inf")
