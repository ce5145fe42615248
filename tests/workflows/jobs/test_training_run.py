"""The training run's typed settings: one set of defaults behind train.py's flags, and its config file round trip."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflows.jobs.training_run import TrainJob, _results_location, train_run
from workflows.train import build_parser
from workflows.training.config import TrainConfig
from workflows.training.config_file import NOT_IN_FILES, dump_config

REPO = Path(__file__).resolve().parents[3]


def test_the_flags_are_the_job_and_training_fields_with_the_same_defaults():
    parsed = build_parser().parse_args([])
    flags = {k for k in vars(parsed) if k not in NOT_IN_FILES}
    assert flags == set(TrainJob().settings())
    assert TrainJob.from_mapping(parsed) == TrainJob()


def test_flat_keys_split_into_the_job_and_its_training():
    job = TrainJob.from_mapping({"epochs": 3, "gpu": False, "lr": 0.01, "max_failures": 0, "print_config": True})
    assert job.max_failures == 0 and job.training == TrainConfig(epochs=3, lr=0.01)
    assert TrainJob.from_mapping(job.settings()) == dataclasses.replace(job, overwrite=False)
    with pytest.raises(ValueError, match="lr must be"):
        TrainJob.from_mapping({"lr": -1.0})


def test_a_folder_with_results_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "test_metrics.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds test_metrics.json"):
        _results_location(TrainJob(results=str(tmp_path)))
    assert _results_location(TrainJob(results=str(tmp_path), overwrite=True)).path == str(tmp_path.resolve())


def test_print_config_reads_back_as_the_same_run(tmp_path):
    def printed(*flags):
        done = subprocess.run(
            [sys.executable, "workflows/train.py", *flags, "--print-config"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = printed("--epochs", "7", "--metric", "val_loss", "--gpu")
    body = yaml.safe_load(first)
    assert body["epochs"] == 7 and body["mode"] == "min" and body["gpu"] is True
    path = tmp_path / "run.yaml"
    path.write_text(first)
    assert printed("--config", str(path)) == first
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    toml = tmp_path / "run.toml"
    toml.write_text(dump_config(body, "toml"))
    set_values = {k: v for k, v in body.items() if v is not None}  # TOML has no null: unset keys are comments
    assert tomllib.loads(printed("--config", str(toml))) == set_values


def test_workers_holding_the_cpus_streamed_reads_need_are_refused_before_the_scan(ray_cluster, tmp_path, monkeypatch):
    # Splits too big for the object store are read from Parquet on every pass; with both CPUs held by the worker,
    # no read task could start and the run would wait for ever.
    monkeypatch.setattr("data.streaming.MATERIALIZE_SHARE", 0.0)
    scanned = []
    monkeypatch.setattr("workflows.jobs.training_run.build_inputs", scanned.append)
    job = TrainJob.from_mapping({"results": str(tmp_path / "run"), "num_workers": 1, "cpus_per_worker": 2.0})
    with pytest.raises(
        ValueError, match=r"^the training and validation splits do not fit \d+% of Ray's object store"
    ) as err:
        train_run(job)
    assert "--num-workers 1 x --cpus-per-worker 2 hold 2 of the cluster's 2 CPUs: leave 1 free" in str(err.value)
    assert scanned == [] and not (tmp_path / "run").exists()
