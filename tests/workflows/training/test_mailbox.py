"""A run's control folder: reports handed over and acknowledged, commands, the stop file. No cluster."""

import threading

from workflows.training.mailbox import CONTROL_DIR, Mailbox, Report, control_folder, wait_for_command


def test_a_control_folder_is_new_and_beside_trains_runs(tmp_path):
    folder = control_folder(str(tmp_path / "runs"), "run-1")
    assert folder == tmp_path / CONTROL_DIR / "run-1" and folder.is_dir() and not any(folder.iterdir())


def test_a_report_is_taken_as_posted_and_its_ack_releases_the_controller(tmp_path):
    mailbox = Mailbox(tmp_path)
    assert mailbox.take(1) is None
    mailbox.post(1, Report([{"epoch": 1, "val_acc": 0.5}, {"epoch": 1, "val_acc": 0.5}], "/runs/checkpoint_1"))
    report = mailbox.take(1)
    assert report == Report([{"epoch": 1, "val_acc": 0.5}] * 2, "/runs/checkpoint_1")
    assert not list(tmp_path.glob("*.partial")), "written atomically"
    assert not mailbox.wait_ack(1, timeout=0.05)
    threading.Timer(0.05, mailbox.ack, args=(1,)).start()
    assert mailbox.wait_ack(1, timeout=10)


def test_a_run_being_stopped_gets_every_report_acknowledged(tmp_path):
    mailbox = Mailbox(tmp_path)
    for number in (1, 2):
        mailbox.post(number, Report([{}], None))
    mailbox.ack_all()
    assert mailbox.wait_ack(1, timeout=0) and mailbox.wait_ack(2, timeout=0)


def test_rank_0_reads_the_command_it_waits_for_or_the_stop(tmp_path):
    mailbox = Mailbox(tmp_path)
    mailbox.command(1, {"load": None, "hyper": {"lr": 0.01}, "fresh": False})
    assert wait_for_command(tmp_path, 1) == {"load": None, "hyper": {"lr": 0.01}, "fresh": False}
    mailbox.ask_to_stop()
    assert mailbox.stop_file.exists()
    assert wait_for_command(tmp_path, 2) == {"stop": True}
