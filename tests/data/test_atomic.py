"""Tests of the atomic writers: modes follow the umask, failures leave nothing, foreign folders are never replaced."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from test_format import META, make_dataset

from data.atomic import (
    OutputLocationError,
    check_creatable,
    check_replaceable,
    write_file_atomic,
    write_folder_atomic,
    write_json_atomic,
)
from data.writing import write_dataset, write_split


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_data_writers_follow_the_umask(tmp_path, umask, mask, file_mode, folder_mode):
    umask(mask)
    write_dataset(tmp_path / "ds", make_dataset())
    write_split(tmp_path / "preds.parquet", make_dataset().test, META)
    write_json_atomic(tmp_path / "test_metrics.json", {"accuracy": 0.5})
    for folder in (tmp_path / "ds",):
        assert mode(folder) == folder_mode, folder
        for path in folder.iterdir():
            assert mode(path) == file_mode, path
    for path in (tmp_path / "preds.parquet", tmp_path / "test_metrics.json"):
        assert mode(path) == file_mode, path


def test_replacing_a_file_gives_the_mode_of_a_new_one(tmp_path, umask):
    path = tmp_path / "history.json"
    path.write_text("[]")
    path.chmod(0o644)
    umask(0o077)
    write_json_atomic(path, [1])
    assert json.loads(path.read_text()) == [1]
    assert mode(path) == 0o600
    umask(0o002)
    write_json_atomic(path, [2])
    assert mode(path) == 0o664


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def fail(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_file_atomic(path, fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_folder_swap_keeps_the_old_folder_when_the_body_fails(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "a").write_text("old")
    with pytest.raises(RuntimeError), write_folder_atomic(folder, {"a"}, "thing", overwrite=True) as tmp:
        (tmp / "a").write_text("new")
        raise RuntimeError("failed half-way")
    assert (folder / "a").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    with write_folder_atomic(folder, {"a"}, "thing", overwrite=True) as tmp:
        (tmp / "a").write_text("new")
    assert (folder / "a").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_a_folder_with_foreign_entries_is_never_replaced(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "train.parquet").write_text("x")
    (folder / "thesis.tex").write_text("precious")
    (folder / "sub").mkdir()
    with pytest.raises(FileExistsError) as caught:
        check_replaceable(folder, {"train.parquet"}, "dataset", overwrite=True)
    message = str(caught.value)
    assert str(folder) in message and "sub, thesis.tex" in message and "refusing" in message
    assert "--overwrite" not in message  # it would not help
    with pytest.raises(FileExistsError, match="--overwrite"):
        check_replaceable(tmp_path / "mine" / "sub", set(), "dataset", overwrite=False)


def test_a_file_or_link_in_the_way_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path)
    for name, kind in (("file", "a file"), ("link", "a symbolic link")):
        with pytest.raises(FileExistsError, match=kind):
            check_replaceable(tmp_path / name, set(), "dataset", overwrite=True)


def test_check_creatable(tmp_path):
    (tmp_path / "file").write_text("x")
    check_creatable(tmp_path / "new" / "deeper" / "out.parquet", "--output")
    check_creatable(tmp_path / "new", "--results", folder=True)
    with pytest.raises(OutputLocationError, match="is a file, not a folder"):
        check_creatable(tmp_path / "file", "--results", folder=True)
    with pytest.raises(OutputLocationError, match=f"{tmp_path / 'file'} is a file"):
        check_creatable(tmp_path / "file" / "run", "--results", folder=True)
    with pytest.raises(OutputLocationError, match=f"{tmp_path / 'file'} is a file"):
        check_creatable(tmp_path / "file" / "out.parquet", "--output")
