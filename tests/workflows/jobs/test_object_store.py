"""Training and tuning with the data and the results in an object store: moto's S3 server on 127.0.0.1.

The dataset is read from ``s3://`` by the driver's footer checks and by Ray Data; Ray Train and Ray Tune keep their
checkpoints there, the members log there, and the files the driver writes are uploaded when the job ends.
"""

import json

import pyarrow.fs as pafs
import pytest

from data import DEFAULT_DATASET_DIR
from data.storage import locate
from workflows.jobs.experiment import ExperimentConfig, tune_experiment
from workflows.jobs.training_run import TrainJob, train_run
from workflows.training.config import TrainConfig


@pytest.fixture(scope="module")
def store(s3_server, ray_cluster):
    """A bucket holding the default dataset under ``default/`` (the server starts before the cluster)."""
    bucket = s3_server.bucket("satresnet")
    target = locate(f"{bucket}/default")
    pafs.copy_files(
        str(DEFAULT_DATASET_DIR),
        target.path,
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=target.filesystem,
    )
    return bucket


def _files(uri: str) -> list[str]:
    """Every object below ``uri``, relative to it."""
    location = locate(uri)
    infos = location.filesystem.get_file_info(pafs.FileSelector(location.path, recursive=True, allow_not_found=True))
    return sorted(i.path[len(location.path) + 1 :] for i in infos if i.type == pafs.FileType.File)


@pytest.mark.slow
def test_train_reads_s3_and_keeps_its_checkpoints_and_results_there(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    results = f"{store}/train-run"
    job = TrainJob(
        data=f"{store}/default",
        results=results,
        training=TrainConfig(epochs=2, channels=16, num_workers=1, cpus_per_worker=1),
    )
    outcome = train_run(job)
    assert outcome.results == results and outcome.bundle == f"{results}/bundle"
    assert outcome.best_checkpoint.startswith(f"{results}/ray/")
    files = _files(results)
    for name in ("config.yaml", "history.json", "test_metrics.json", "bundle/weights.pt", "bundle/bundle.json"):
        assert name in files, files
    assert any(name.startswith("ray/") and "checkpoint" in name for name in files), files
    assert any(name.startswith("tensorboard/") for name in files), files
    saved = json.loads(locate(f"{results}/test_metrics.json").read_bytes())
    assert saved["accuracy"] == pytest.approx(outcome.metrics["accuracy"]) and saved["accuracy"] > 1 / 7
    assert len(json.loads(locate(f"{results}/history.json").read_bytes())) == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_tune_population_keeps_its_checkpoints_and_member_logs_in_s3(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = f"{store}/experiment"
    config = ExperimentConfig(
        data=f"{store}/default",
        results=results,
        population=2,
        perturbation_interval=2,
        training=ExperimentConfig().training.replace(epochs=4, channels=16),
    )
    outcome = tune_experiment(config)
    assert outcome.results == results
    files = _files(results)
    checkpoints = {name.split("/")[1] for name in files if name.startswith("tune/") and "/checkpoint_" in name}
    assert len(checkpoints) == 2, files  # both members' checkpoints live in the bucket
    logs = sorted(name for name in files if name.startswith("members/"))
    assert len(logs) == 2, files
    for name in logs:
        rows = [json.loads(line) for line in locate(f"{results}/{name}").read_bytes().decode().splitlines()]
        assert [row["epoch"] for row in rows][-1] == 4
    for name in ("experiment.json", "config.yaml", "test_metrics.json", "pbt.json", "bundle/weights.pt"):
        assert name in files, files
    assert any(name.startswith("report/") and name.endswith(".png") for name in files), files
    assert not any(name.startswith("train_runs/") for name in files), files  # removed once Tune has its copies
    pbt = json.loads(locate(f"{results}/pbt.json").read_bytes())
    assert set(pbt["trials"]) == {row.removeprefix("members/").removesuffix(".jsonl") for row in logs}
    assert outcome.metrics["accuracy"] > 1 / 7
    assert list(tmp_path.iterdir()) == []


def test_resume_reads_the_saved_experiment_from_the_store(s3_server):
    from workflows.jobs.experiment import EXPERIMENT_FILE, _experiment

    bucket = s3_server.bucket("resumable")
    saved = ExperimentConfig.from_mapping(dict(population=3, epochs=7, perturbation_interval=3, channels=16))
    locate(f"{bucket}/exp/{EXPERIMENT_FILE}").write_bytes(json.dumps(saved.settings()).encode())
    config, results = _experiment(ExperimentConfig(results=f"{bucket}/exp", resume=True))
    assert (config.population, config.training.epochs, config.training.channels) == (3, 7, 16)
    assert results.uri == f"{bucket}/exp"
    with pytest.raises(ValueError, match=rf"^{bucket}/empty: nothing to resume"):
        _experiment(ExperimentConfig(results=f"{bucket}/empty", resume=True))
