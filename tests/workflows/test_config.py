"""Flag checks shared by the entry scripts: an object-store URI for --results is refused, not mangled into a path."""

from pathlib import Path

import pytest

from workflows import train, tune
from workflows.config import reject_uri


@pytest.mark.parametrize("value", ["s3://bucket/run", "gs://b/x", Path("s3://bucket/run"), "file:///tmp/x"])
def test_uris_are_refused(value):
    with pytest.raises(ValueError, match="URIs are not supported"):
        reject_uri(value)


@pytest.mark.parametrize("value", [None, "results/run", "/tmp/x", Path("C:/x"), "a:b"])
def test_folders_pass(value):
    reject_uri(value)


@pytest.mark.parametrize("script", [train, tune])
def test_scripts_exit_2_with_one_line_and_create_nothing(script, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert script.main(["--results", "s3://bucket/run"]) == 2
    err = capsys.readouterr().err
    assert "--results s3://bucket/run" in err or "--results s3:/bucket/run" in err
    assert err.strip().count("\n") == 0
    assert list(tmp_path.iterdir()) == []
