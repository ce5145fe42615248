"""What a person watches: a line per member report and per exploit, and TensorBoard curves by epoch, not by Tune's
iteration (which jumps back at an exploit)."""

import math
import pickle
import struct
from pathlib import Path
from types import SimpleNamespace

from tensorboardX.proto.event_pb2 import Event

from workflows.tuning.progress import EXPLOIT_SCALAR, PopulationProgress, member_name, report_line


def report(epoch, val_acc=0.5, lr=1e-3, grad_clip=5.0, **changes):
    metrics = dict(
        epoch=epoch, train_loss=1.0, val_loss=1.1, val_acc=val_acc, val_macro_f1=0.4, lr=lr, grad_clip=grad_clip,
        grad_norm_mean=2.0, grad_norm_max=3.0, skipped_steps=0, steps=10, epoch_seconds=0.5, diverged=False,
    )  # fmt: skip
    return {**metrics, **changes}


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in ``folder``, by tag: (step, value) in the order written."""
    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):  # TFRecord: length (8 bytes), its CRC (4), the record, its CRC (4)
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 16 + length
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def test_member_names_follow_tunes_trial_numbers():
    assert member_name("abc12_00003") == "member 3"
    assert member_name("odd") == "member odd"


def test_a_report_line_says_epoch_metrics_settings_and_health():
    line = report_line(report(3, grad_clip=None, diverged=True), 40, "member 1")
    assert line.startswith("member 1  epoch   3/40  train_loss 1.0000")
    assert "val_acc 0.5000" in line and "grad_clip off" in line and "skipped 0/10" in line
    assert line.endswith("DIVERGED")


def test_the_population_prints_each_report_and_exploit_and_draws_curves_by_epoch(tmp_path, capsys):
    progress = PopulationProgress(epochs=4, tensorboard_dir=tmp_path)
    progress.setup()
    a, b = SimpleNamespace(trial_id="t_00000"), SimpleNamespace(trial_id="t_00001")
    progress.on_trial_result(1, [], a, report(1, val_acc=0.6))
    progress.on_trial_result(1, [], b, report(1, val_acc=0.1, lr=3.0, grad_clip=None))
    progress.on_trial_result(2, [], a, report(2, val_acc=0.7))
    # Member 1 continues member 0's epoch-2 checkpoint with member 0's settings, mutated.
    progress.on_trial_result(2, [], b, report(3, val_acc=0.7, lr=2e-3, exploited_from="t_00000", restored_epoch=2))
    progress.on_experiment_end([])  # prints what is still queued
    progress.on_trial_error(3, [], a)

    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == [
        "member 0",
        "member 1",
        "member 0",
        "member 1",
        "member 1",
        "member 0",
    ]
    assert lines[3] == ("member 1  EXPLOIT  continues member 0's epoch-2 checkpoint; lr 3 -> 0.002, grad_clip off -> 5")
    assert "epoch   3/4" in lines[4] and lines[5] == "member 0  FAILED (Tune's error is above)"

    member_1 = scalars(tmp_path / "member-1")
    assert member_1["val/acc"] == [(1, 0.10000000149011612), (3, 0.699999988079071)]  # by epoch: 1, then 3
    assert member_1[EXPLOIT_SCALAR] == [(3, 1.0)]
    assert math.isclose(member_1["hyperparameters/lr"][-1][1], 2e-3, rel_tol=1e-6)
    assert [step for step, _ in scalars(tmp_path / "member-0")["val/acc"]] == [1, 2]


def test_non_finite_values_are_left_out_of_the_curves(tmp_path):
    progress = PopulationProgress(epochs=2, tensorboard_dir=tmp_path)
    progress.on_trial_result(1, [], SimpleNamespace(trial_id="t_00000"), report(1, train_loss=math.inf))
    progress.on_experiment_end([])
    curves = scalars(tmp_path / "member-0")
    assert "train/loss" not in curves and curves["val/acc"] == [(1, 0.5)]


def test_the_callback_pickles_without_its_thread_for_resume(tmp_path):
    progress = PopulationProgress(epochs=2, tensorboard_dir=tmp_path)
    progress.setup()
    copy = pickle.loads(pickle.dumps(progress))
    progress.on_experiment_end([])
    assert (copy.epochs, copy.tensorboard_dir) == (2, tmp_path)
    copy.on_trial_result(1, [], SimpleNamespace(trial_id="t_00000"), report(1))  # starts its own thread
    copy.on_experiment_end([])
    assert scalars(tmp_path / "member-0")["val/acc"] == [(1, 0.5)]
