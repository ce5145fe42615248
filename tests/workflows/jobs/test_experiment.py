"""The experiment's typed settings: one set of defaults behind the flags, resume reads the saved experiment back."""

import dataclasses
import json
from pathlib import Path

import pytest

from data import DEFAULT_DATASET_DIR
from data.streaming import open_dataset_files
from workflows.jobs.experiment import EXPERIMENT_FILE, INVOCATION_ONLY, ExperimentConfig, _experiment, _member_config
from workflows.training.config_file import NOT_IN_FILES
from workflows.tune import build_parser


def test_the_flags_are_the_config_fields_with_the_same_defaults():
    parsed = build_parser().parse_args([])
    flags = {k for k in vars(parsed) if k not in NOT_IN_FILES}
    assert flags == set(ExperimentConfig().settings())
    assert ExperimentConfig.from_mapping(parsed) == ExperimentConfig()


def test_a_namespace_becomes_a_frozen_config_and_unknown_keys_are_ignored():
    args = build_parser().parse_args(["--population", "3", "--initial-lr-range", "0.01", "0.1"])
    config = ExperimentConfig.from_mapping(args)
    assert config.population == 3 and config.initial_lr_range == (0.01, 0.1)
    assert ExperimentConfig.from_mapping({"epochs": 7, "print_config": False}).training.epochs == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.population = 1


def test_the_smoke_test_shrinks_the_experiment(tmp_path):
    config, results = _experiment(ExperimentConfig(smoke_test=True, results=str(tmp_path / "exp")))
    shape = (config.population, config.training.epochs, config.perturbation_interval, config.training.channels)
    assert shape == (2, 4, 2, 16)
    assert results.path == str((tmp_path / "exp").resolve())


def test_resume_takes_the_saved_experiment_with_this_invocations_folder_and_cluster(tmp_path):
    results = tmp_path / "exp"
    results.mkdir()
    saved = ExperimentConfig.from_mapping(
        dict(population=3, epochs=9, perturbation_interval=3, results="/elsewhere", num_cpus=8)
    )
    (results / EXPERIMENT_FILE).write_text(json.dumps(saved.settings()))
    asked = ExperimentConfig.from_mapping(
        dict(resume=True, results=str(results), address="local", num_cpus=2, epochs=99)
    )
    config, folder = _experiment(asked)
    assert folder.path == str(results.resolve())
    assert (config.population, config.training.epochs, config.perturbation_interval) == (3, 9, 3)
    assert (config.results, config.address, config.num_cpus, config.resume) == (str(results), "local", 2, True)
    assert isinstance(config.data, Path) and isinstance(config.initial_lr_range, tuple)
    assert not set(INVOCATION_ONLY) & set(saved.settings())


def test_resume_without_a_saved_experiment_says_so(tmp_path):
    with pytest.raises(ValueError, match=f"nothing to resume \\(no {EXPERIMENT_FILE}\\)"):
        _experiment(ExperimentConfig(resume=True, results=str(tmp_path / "exp")))


def test_members_leave_streamed_reads_a_cpu_or_are_refused(ray_cluster, monkeypatch):
    monkeypatch.setattr("data.streaming.MATERIALIZE_SHARE", 0.0)  # the splits stream from Parquet on every pass
    source = open_dataset_files(DEFAULT_DATASET_DIR)
    base, concurrent = _member_config(ExperimentConfig(), source)
    assert concurrent * base.num_workers * base.cpus_per_worker <= 2 - 1  # one CPU left for the reads
    asked = ExperimentConfig.from_mapping({"cpus_per_worker": 2.0})
    with pytest.raises(ValueError, match=r"hold 2 of the cluster's 2 CPUs: leave 1 free"):
        _member_config(asked, source)
    monkeypatch.setattr("data.streaming.MATERIALIZE_SHARE", 0.3)  # in memory: the members may take every CPU
    base, concurrent = _member_config(ExperimentConfig(), source)
    assert concurrent * base.cpus_per_worker > 1
