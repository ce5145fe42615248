"""Bad input to the entry scripts: one line, exit 2, no traceback, nothing left behind or changed, and Ray not started.

Each script's ``main(argv)`` runs in this process; ``ray.is_initialized()`` being False after it returned 2 proves
the check came before Ray.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch
from builders import make_checkpoint

from data.format import METADATA_KEY, PatchFormatError, PatchMetadata
from data.importer import NpzImportError, dataset_from_arrays
from data.reading import read_split
from data.synthetic import generate
from data.writing import write_dataset, write_split
from workflows import import_data, make_dataset, predict, train, tune
from workflows.serving.bundle import WEIGHTS_FILE, BundleError, check_compatible, export_bundle
from workflows.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
CLIP_EXPECTED = "expected a number >= 0 (0 turns clipping off)"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint, its bundle, a labelled dataset folder and one Parquet file of patches."""
    root = tmp_path_factory.mktemp("bad_input")
    checkpoint = make_checkpoint(root / "checkpoint")
    dataset = generate({"train": 35, "test": 14}, seed=11)
    write_dataset(root / "dataset", dataset)
    write_split(root / "patches.parquet", dataset.test, dataset.metadata)
    return {
        "checkpoint": checkpoint,
        "bundle": export_bundle(checkpoint, root / "bundle"),
        "dataset": root / "dataset",
        "patches": root / "patches.parquet",
    }


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots`` with its bytes (names of folders included), to prove nothing changed."""
    found = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in paths:
            found[str(path)] = path.read_bytes() if path.is_file() else b"<folder>"
    return found


def assert_refused(code: int, capsys, *fragments: str) -> str:
    """Exit 2, one ``error:`` line on stderr naming ``fragments``, nothing on stdout, and Ray never started."""
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in captured.err, captured.err
    assert not ray.is_initialized()
    return captured.err.strip()


def predict_main(*args: str | Path) -> int:
    return predict.main([str(a) for a in args])


# --- 1. predict never replaces its input or the bundle -------------------------------------------------------------


def test_predict_refuses_an_output_that_is_its_input(files, tmp_path, capsys):
    before = snapshot(files["patches"], files["dataset"], files["bundle"])
    (tmp_path / "link.parquet").symlink_to(files["patches"])
    os.link(files["patches"], tmp_path / "hard.parquet")
    for output in (files["patches"], tmp_path / "link.parquet", tmp_path / "hard.parquet"):
        code = predict_main("--model", files["bundle"], "--input", files["patches"], "--output", output, "--overwrite")
        assert_refused(code, capsys, f"--output {output}", "is the input file", "choose another --output")
    # Also when the input is named through the link and the output plainly.
    code = predict_main(
        "--model", files["bundle"], "--input", tmp_path / "link.parquet", "--output", files["patches"], "--overwrite"
    )
    assert_refused(code, capsys, "is the input file")
    assert snapshot(files["patches"], files["dataset"], files["bundle"]) == before


def test_predict_refuses_an_output_in_the_input_folder_or_the_bundle(files, tmp_path, capsys):
    before = snapshot(files["dataset"], files["bundle"])
    dataset, bundle = files["dataset"], files["bundle"]
    (tmp_path / "data_link").symlink_to(dataset)
    for output in (dataset / "test.parquet", dataset / "train.parquet", tmp_path / "data_link" / "test.parquet"):
        code = predict_main("--model", bundle, "--input", dataset, "--output", output, "--overwrite")
        assert_refused(code, capsys, "inside the --input dataset folder")
    code = predict_main("--model", bundle, "--input", dataset, "--output", dataset, "--overwrite")
    assert_refused(code, capsys, "is a folder")
    for output in (bundle / WEIGHTS_FILE, bundle / "preds.parquet"):
        code = predict_main("--model", bundle, "--input", files["patches"], "--output", output, "--overwrite")
        assert_refused(code, capsys, "inside the --model bundle folder")
    assert snapshot(dataset, bundle) == before


def test_predict_checks_the_output_folder_before_any_work(files, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    output = tmp_path / "file" / "preds.parquet"
    code = predict_main("--model", files["bundle"], "--input", files["patches"], "--output", output)
    assert_refused(code, capsys, f"--output {output}", f"{tmp_path / 'file'} is a file, not a folder")
    assert (tmp_path / "file").read_text() == "x"


def test_predict_refuses_a_code_running_bundle_in_one_line(files, tmp_path, capsys):
    damaged = export_bundle(files["checkpoint"], tmp_path / "bundle")
    torch.save({"stem.0.weight": Exploit()}, damaged / WEIGHTS_FILE)
    code = predict_main("--model", damaged, "--input", files["patches"], "--output", tmp_path / "out.parquet")
    err = assert_refused(code, capsys, str(damaged / WEIGHTS_FILE), "refused for safety", "objects other than tensors")
    assert "weights_only" not in err and "corrupt" not in err
    assert not (tmp_path / "out.parquet").exists()


class Exploit:
    """Runs a command when unpickled without weights_only."""

    def __reduce__(self):
        return (os.system, ("echo owned",))


# --- 2. import and make_dataset never replace a folder they did not write -----------------------------------------


def foreign_folder(root: Path) -> Path:
    folder = root / "mine"
    folder.mkdir()
    (folder / "train.parquet").write_bytes(b"a dataset file name, but mine")
    (folder / "survey.parquet").write_bytes(b"precious")
    (folder / "notes.txt").write_text("precious")
    return folder


def test_import_never_replaces_a_folder_of_other_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in.npz", x=rng.normal(size=(40, 2, 3, 3)), y=np.arange(40) % 2)
    folder = foreign_folder(tmp_path)
    before = snapshot(folder)
    code = import_data.main([str(tmp_path / "in.npz"), str(folder), "--overwrite"])
    err = assert_refused(code, capsys, str(folder), "notes.txt, survey.parquet", "refusing to replace it")
    assert "--overwrite" not in err  # it would not help
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz", "mine"]
    # A dataset folder the tool wrote: refused without --overwrite (which the message offers), replaced with it.
    assert import_data.main([str(tmp_path / "in.npz"), str(tmp_path / "ds")]) == 0
    capsys.readouterr()
    code = import_data.main([str(tmp_path / "in.npz"), str(tmp_path / "ds")])
    assert_refused(code, capsys, "already exists", "pass --overwrite")
    assert import_data.main([str(tmp_path / "in.npz"), str(tmp_path / "ds"), "--overwrite", "--seed", "3"]) == 0


def test_make_dataset_never_replaces_a_folder_of_other_files(tmp_path, capsys):
    folder = foreign_folder(tmp_path)
    before = snapshot(folder)
    code = make_dataset.main(["--output", str(folder), "--train", "7", "--val", "7", "--test", "7", "--overwrite"])
    err = assert_refused(code, capsys, str(folder), "notes.txt, survey.parquet", "refusing to replace it")
    assert "--overwrite" not in err
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


# --- 3 and 6. --results that cannot be a folder, and bad numbers, are refused before Ray ---------------------------


@pytest.mark.parametrize("script", [train, tune])
@pytest.mark.parametrize("deeper", [False, True], ids=["file", "parent-is-file"])
def test_results_naming_a_file_is_refused_before_ray(script, deeper, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("x")
    results = tmp_path / "taken" / "run" if deeper else tmp_path / "taken"
    code = script.main(["--results", str(results)])
    detail = f"{tmp_path / 'taken'} is a file, not a folder" if deeper else "is a file, not a folder"
    assert_refused(code, capsys, f"--results {results}", detail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert (tmp_path / "taken").read_text() == "x"


# --- 4. no output inside an input, and no input inside an output, also through links ------------------------------


@pytest.mark.parametrize("script", [train, tune])
def test_results_and_data_must_not_overlap(script, files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dataset = files["dataset"]
    before = snapshot(dataset)
    (tmp_path / "data_link").symlink_to(dataset)
    for results in (dataset, dataset / "run", tmp_path / "data_link" / "run"):
        code = script.main(["--data", str(dataset), "--results", str(results), "--overwrite"])
        assert_refused(code, capsys, "--results", f"the --data {dataset}", "choose another --results")
    # The data inside the results folder: a run writes ray/, bundle/ ... there, and --overwrite replaces them.
    code = script.main(["--data", str(dataset), "--results", str(dataset.parent), "--overwrite"])
    assert_refused(code, capsys, f"--results {dataset.parent}: holds the --data {dataset}")
    assert snapshot(dataset) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data_link"]


def test_predict_refuses_an_output_folder_holding_its_input_or_the_bundle(files, tmp_path, capsys):
    dataset, bundle = files["dataset"], files["bundle"]
    before = snapshot(dataset, bundle)
    code = predict_main(
        "--model", bundle, "--input", dataset / "test.parquet", "--output", dataset.parent, "--overwrite"
    )
    assert_refused(code, capsys, "holds the --model bundle folder")
    code = predict_main(
        "--model", bundle, "--input", files["patches"], "--output", files["patches"].parent / "out" / ".."
    )
    assert_refused(code, capsys, "holds the --model bundle folder")
    copy = tmp_path / "in" / "patches.parquet"
    copy.parent.mkdir()
    copy.write_bytes(files["patches"].read_bytes())
    code = predict_main("--model", bundle, "--input", copy, "--output", tmp_path, "--overwrite")
    assert_refused(code, capsys, f"--output {tmp_path}: holds the --input {copy}")
    assert snapshot(dataset, bundle) == before and copy.read_bytes() == files["patches"].read_bytes()


def test_import_refuses_an_output_folder_holding_the_archive(tmp_path, capsys):
    rng = np.random.default_rng(0)
    archive = tmp_path / "in.npz"
    np.savez(archive, x=rng.normal(size=(40, 2, 3, 3)), y=np.arange(40) % 2)
    for output in (tmp_path, archive):
        code = import_data.main([str(archive), str(output), "--overwrite"])
        assert_refused(code, capsys, str(archive))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz"]


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        (
            train,
            ["--grad-clip", "abc"],
            "argument --grad-clip: expected a number >= 0 (0 turns clipping off), got 'abc'",
        ),
        (train, ["--grad-clip", "-5"], "argument --grad-clip: expected a number >= 0 (0 turns clipping off), got '-5'"),
        (train, ["--lr", "inf"], "argument --lr: expected a finite number > 0, got 'inf'"),
        (train, ["--lr", "0"], "argument --lr: expected a finite number > 0, got '0'"),
        (train, ["--lr", "nan"], "argument --lr: expected a finite number > 0, got 'nan'"),
        (train, ["--epochs", "0"], "argument --epochs: expected a whole number >= 1, got '0'"),
        (train, ["--dropout", "1"], "argument --dropout: expected a number in [0, 1), got '1'"),
        (tune, ["--batch-size", "0"], "argument --batch-size: expected a whole number >= 1, got '0'"),
        (tune, ["--initial-lr-range", "1e-3", "inf"], "argument --initial-lr-range: expected a finite number > 0"),
        (tune, ["--weight-decay", "-1"], "argument --weight-decay: expected a finite number >= 0, got '-1'"),
        (tune, ["--cpus-per-worker", "0"], "argument --cpus-per-worker: expected a finite number > 0, got '0'"),
        (predict, ["--model", "m", "--input", "i", "--output", "o", "--batch-size", "0"], "argument --batch-size"),
    ],
)
def test_bad_numbers_are_refused_by_argparse(script, argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as caught:
        script.main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not ray.is_initialized()
    assert list(tmp_path.iterdir()) == []


def test_grad_clip_zero_turns_clipping_off():
    args = train.build_parser().parse_args(["--grad-clip", "0"])
    assert args.grad_clip is None
    assert train.build_parser().parse_args(["--grad-clip", "2.5"]).grad_clip == 2.5


@pytest.mark.parametrize(
    "changes",
    [{"lr": float("inf")}, {"lr": float("nan")}, {"lr": 0.0}, {"grad_clip": -5.0}, {"grad_clip": float("inf")}],
)
def test_train_config_refuses_non_finite_and_negative_values(changes):
    name = next(iter(changes))
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        TrainConfig(**changes)


def test_tune_refuses_impossible_member_settings_from_a_resumed_record_before_ray(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "experiment.json").write_text(json.dumps({"batch_size": 0, "initial_lr_range": [1e-3, 1e9]}))
    code = tune.main(["--results", str(tmp_path / "run"), "--resume"])
    assert_refused(code, capsys, "batch_size must be at least 1")


# --- 7. a dataset of patches too small for the model is refused on reading ----------------------------------------


def test_patches_smaller_than_the_model_needs_are_refused_naming_the_file(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "tiny"
    folder.mkdir()
    metadata = PatchMetadata(bands=("a", "b"), height=1, width=1, classes=("x", "y"))
    for split in ("train", "val", "test"):
        table = pa.table(
            {
                "patch_id": [f"{split}-{i}" for i in range(4)],
                "label": ["x", "y", "x", "y"],
                "pixels": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(8, dtype=np.float32)), 2),
            }
        )
        pq.write_table(table.replace_schema_metadata({METADATA_KEY: metadata.to_json()}), folder / f"{split}.parquet")
    with pytest.raises(PatchFormatError, match="1x1 patches; height and width must be >= 3"):
        read_split(folder / "train.parquet")
    monkeypatch.chdir(tmp_path)
    code = train.main(["--data", str(folder), "--results", str(tmp_path / "run")])
    assert_refused(code, capsys, str(folder / "train.parquet"), ">= 3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


# --- 4. files and folders follow the umask --------------------------------------------------------------------------


@pytest.mark.parametrize(("mask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_bundle_follows_the_umask(files, tmp_path, mask, file_mode, folder_mode):
    previous = os.umask(mask)
    try:
        bundle = export_bundle(files["checkpoint"], tmp_path / "bundle")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(bundle.stat().st_mode) == folder_mode
    for path in bundle.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path


# --- 8. messages show what the user typed, plain numbers, and short lists -----------------------------------------


def test_uri_is_shown_as_typed(s3_server, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = assert_refused(train.main(["--results", "s3://bucket/x"]), capsys, "--results s3://bucket/x:")
    assert "s3:/bucket" not in err
    err = assert_refused(train.main(["--data", "s3://bucket/x"]), capsys, "--data s3://bucket/x:")
    assert "s3:/bucket" not in err
    assert list(tmp_path.iterdir()) == []


def test_label_errors_show_plain_numbers():
    with pytest.raises(NpzImportError) as caught:
        dataset_from_arrays({"x": np.zeros((4, 1, 3, 3)), "y": np.array([0.0, 1.0, 0.5, 1.0])})
    assert "row 2 is 0.5," in str(caught.value) and "np.float64" not in str(caught.value)


def test_long_lists_are_cut_in_messages():
    model = generate({"test": 7}, seed=1).metadata
    data = dataclasses.replace(model, bands=tuple(f"band_{i:04d}" for i in range(2000)), units=None)
    with pytest.raises(BundleError) as caught:
        check_compatible(model, data, "wide.parquet")
    message = str(caught.value)
    assert len(message) < 600, message
    assert "band_0000, band_0001, band_0002, band_0003, band_0004 … (2,000 in all)" in message


@pytest.mark.slow
def test_predict_script_ends_with_its_own_summary(files, tmp_path):
    """A successful run stops the cluster it started before it exits: no Ray teardown noise after the summary."""
    out = tmp_path / "out.parquet"
    args = ["--model", files["bundle"], "--input", files["dataset"], "--output", out, "--address", "local"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "workflows" / "predict.py"), *map(str, args), "--num-cpus", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].startswith("predicted 14 patches in"), result.stdout
    assert "RpcError" not in result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]
