"""Tests of predict.py: Ray Data predictions equal the in-process model's, unlabelled input, and one-line errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from builders import make_checkpoint

from data.format import PatchSplit
from data.pipeline import BandStats, augmentation_elements
from data.synthetic import generate
from data.writing import to_table, write_dataset, write_split
from workflows import predict
from workflows.serving.bundle import INFO_FILE, WEIGHTS_FILE, export_bundle
from workflows.serving.evaluate import NO_TTA, classification_metrics, ensemble_probabilities, model_from_state
from workflows.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "workflows" / "predict.py"
DATA_SEED = 11  # another seed than the checkpoint's, so the inputs are unseen patches


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint, its bundle, a two-member bundle, a labelled dataset folder and an unlabelled Parquet file."""
    root = tmp_path_factory.mktemp("predict")
    checkpoint = make_checkpoint(root / "checkpoint")
    other = make_checkpoint(root / "other", model_seed=1)  # same data and statistics, another model
    dataset = generate({"train": 35, "test": 63}, seed=DATA_SEED)
    write_dataset(root / "dataset", dataset)
    unlabelled = dataclasses.replace(dataset.train, labels=None)
    write_split(root / "unlabelled.parquet", unlabelled, dataset.metadata)
    return {
        "checkpoint": checkpoint,
        "bundle": export_bundle(checkpoint, root / "bundle"),
        "ensemble": export_bundle([checkpoint, other], root / "ensemble"),
        "dataset": root / "dataset",
        "unlabelled": root / "unlabelled.parquet",
    }


def reference(checkpoint: Path, split: PatchSplit, tta: bool = True) -> np.ndarray:
    """Probabilities of the checkpoint's model, over the D4 views or not, in this process without bundle or Ray."""
    state = load_checkpoint(checkpoint)
    views = augmentation_elements("d4") if tta else NO_TTA
    stats = BandStats.from_dict(state["band_stats"])
    return ensemble_probabilities([model_from_state(state)], split.pixels, stats, views)


def assert_error(code: int, stderr: str, *fragments: str) -> None:
    assert code == 2
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    for fragment in fragments:
        assert fragment in stderr, stderr


# Subprocess runs first: the in-process cluster (the ray_cluster fixture of tests/conftest.py) is started only
# after them, so the two never share the CPUs.


@pytest.mark.slow
def test_script_end_to_end(files, tmp_path):
    """The script as a user runs it: its own local Ray, progress lines, metrics, one Parquet file."""
    shown = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0
    options = ("--model", "--input", "--output", "--split", "--overwrite", "--batch-size", "--concurrency")
    for option in (*options, "--no-ensemble", "--no-tta"):
        assert option in shown.stdout
    out = tmp_path / "out.parquet"
    args = ["--model", files["bundle"], "--input", files["dataset"] / "test.parquet", "--output", out]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args), "--address", "local", "--batch-size", "16"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "predicted 63/63 patches" in result.stdout and "accuracy" in result.stdout and "macro-F1" in result.stdout
    assert pq.read_table(out).num_rows == 63
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]


def run_main(capsys, *args: str | Path) -> tuple[int, str, str]:
    code = predict.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bad_inputs_give_one_line_and_no_output(files, tmp_path, capsys):
    out = tmp_path / "out.parquet"
    cases = []
    # Bands the model was not trained on.
    split = generate({"test": 7}, seed=1).test
    other = dataclasses.replace(generate({"test": 7}, seed=1).metadata, bands=tuple(f"X{i}" for i in range(3)))
    other = dataclasses.replace(other, units=None)
    write_split(tmp_path / "three_bands.parquet", dataclasses.replace(split, pixels=split.pixels[:, :3]), other)
    cases.append((files["bundle"], tmp_path / "three_bands.parquet", ["does not match the model bundle", "3 bands"]))
    # A bundle without its weights, with garbage weights, with weights of another shape, with broken JSON.
    for name, damage, fragments in [
        ("no_weights", lambda b: (b / WEIGHTS_FILE).unlink(), [WEIGHTS_FILE, "missing"]),
        ("garbage", lambda b: (b / WEIGHTS_FILE).write_bytes(b"garbage" * 9), [WEIGHTS_FILE, "corrupt"]),
        ("shapes", lambda b: _shrink_weights(b), [WEIGHTS_FILE, "has shape"]),
        ("json", lambda b: (b / INFO_FILE).write_text("{oops"), [INFO_FILE, "not valid JSON"]),
    ]:
        damaged = export_bundle(files["checkpoint"], tmp_path / name)
        damage(damaged)
        cases.append((damaged, files["dataset"], fragments))
    # Missing input, and input that is not a patch file.
    cases.append((files["bundle"], tmp_path / "nothing.parquet", ["no such file"]))
    (tmp_path / "text.parquet").write_text("not parquet")
    cases.append((files["bundle"], tmp_path / "text.parquet", ["not a readable Parquet file"]))
    for bundle, data, fragments in cases:
        code, _, err = run_main(capsys, "--model", bundle, "--input", data, "--output", out)
        assert_error(code, err, *fragments)
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def _shrink_weights(bundle: Path) -> None:
    weights = torch.load(bundle / WEIGHTS_FILE, weights_only=True)
    weights["head.4.weight"] = weights["head.4.weight"][:2]
    torch.save(weights, bundle / WEIGHTS_FILE)


def test_labelled_input_with_other_classes_is_refused(files, tmp_path, capsys):
    dataset = generate({"test": 7}, seed=2)
    renamed = dataclasses.replace(dataset.metadata, classes=tuple(f"c{i}" for i in range(dataset.metadata.num_classes)))
    write_split(tmp_path / "renamed.parquet", dataset.test, renamed)
    out = tmp_path / "out.parquet"
    code, _, err = run_main(
        capsys, "--model", files["bundle"], "--input", tmp_path / "renamed.parquet", "--output", out
    )
    assert_error(code, err, "classes", "drop the label column")
    assert not out.exists()


def test_refuses_to_overwrite_before_any_work(files, tmp_path, capsys):
    out = tmp_path / "out.parquet"
    out.write_bytes(b"precious")
    code, _, err = run_main(capsys, "--model", files["bundle"], "--input", files["dataset"], "--output", out)
    assert_error(code, err, "already exists", "--overwrite")
    assert out.read_bytes() == b"precious"


def test_predictions_equal_the_in_process_model(files, tmp_path, capsys, ray_cluster):
    out = tmp_path / "preds.parquet"
    code, stdout, err = run_main(
        capsys, "--model", files["bundle"], "--input", files["dataset"], "--output", out, "--batch-size", "16"
    )
    assert code == 0, err
    split = generate({"train": 35, "test": 63}, seed=DATA_SEED).test
    expected = reference(files["checkpoint"], split)
    table = pq.read_table(out)
    classes = list(generate({"test": 7}, seed=DATA_SEED).metadata.classes)
    assert table.column_names == ["patch_id", "predicted_label", *[f"prob_{c}" for c in classes]]
    assert table.column("patch_id").to_pylist() == split.patch_ids.tolist()  # input order kept
    probabilities = np.stack([table.column(f"prob_{c}").to_numpy() for c in classes], axis=1)
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-5)
    predicted = [classes.index(name) for name in table.column("predicted_label").to_pylist()]
    np.testing.assert_array_equal(predicted, expected.argmax(axis=1))
    metrics = classification_metrics(split.labels, expected.argmax(axis=1), classes)
    assert f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}" in stdout
    assert "predicted 63/63 patches" in stdout


def test_unlabelled_input_and_overwrite(files, tmp_path, capsys, ray_cluster):
    out = tmp_path / "preds.parquet"
    out.write_bytes(b"old")
    code, stdout, err = run_main(
        capsys, "--model", files["bundle"], "--input", files["unlabelled"], "--output", out, "--overwrite", "--no-tta"
    )
    assert code == 0, err
    assert "accuracy" not in stdout and "(1 member(s) x 1 view(s) each)" in stdout
    split = generate({"train": 35, "test": 63}, seed=DATA_SEED).train
    table = pq.read_table(out)
    assert table.column("patch_id").to_pylist() == split.patch_ids.tolist()
    classes = [name.removeprefix("prob_") for name in table.column_names[2:]]
    probabilities = np.stack([table.column(f"prob_{c}").to_numpy() for c in classes], axis=1)
    np.testing.assert_allclose(probabilities, reference(files["checkpoint"], split, tta=False), rtol=0, atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_no_ensemble_predicts_with_the_best_member_alone(files, tmp_path, capsys, ray_cluster):
    out = tmp_path / "preds.parquet"
    code, stdout, err = run_main(
        capsys, "--model", files["ensemble"], "--input", files["unlabelled"], "--output", out, "--no-ensemble"
    )
    assert code == 0, err
    assert "(1 member(s) x 8 view(s) each)" in stdout
    table = pq.read_table(out)
    classes = [name.removeprefix("prob_") for name in table.column_names[2:]]
    probabilities = np.stack([table.column(f"prob_{c}").to_numpy() for c in classes], axis=1)
    split = generate({"train": 35, "test": 63}, seed=DATA_SEED).train
    np.testing.assert_allclose(probabilities, reference(files["checkpoint"], split), rtol=0, atol=1e-5)


def test_a_bad_row_exits_2_with_one_line_and_no_output(files, tmp_path, capsys, ray_cluster):
    dataset = generate({"test": 60}, seed=DATA_SEED)
    table = to_table(dataset.test, dataset.metadata)
    labels = table.column("label").to_pylist()
    labels[-3] = "nope"
    bad = tmp_path / "bad.parquet"
    pq.write_table(
        table.set_column(table.column_names.index("label"), "label", pa.array(labels)), bad, row_group_size=20
    )
    code, _, err = run_main(capsys, "--model", files["bundle"], "--input", bad, "--output", tmp_path / "out")
    assert_error(code, err, f"{bad}: row 57: unknown label 'nope'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet"]


def test_a_run_that_fails_its_own_check_is_one_line_and_exit_code_1(tmp_path, capsys, monkeypatch):
    from workflows import predict as script

    def fail(config, progress=None):
        raise RuntimeError("Ray Data wrote 9 rows for 9 patches, or out of order")

    monkeypatch.setattr(script, "predict_run", fail)
    argv = ["--model", str(tmp_path / "b"), "--input", str(tmp_path / "x.parquet"), "--output", str(tmp_path / "p")]
    assert script.main(argv) == 1
    err = capsys.readouterr().err
    assert err == "error: Ray Data wrote 9 rows for 9 patches, or out of order; no output was written\n"
