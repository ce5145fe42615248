"""Experiment files: --config (YAML or TOML) sets the flags' defaults, flags override it, --print-config shows it."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflows.training.config_file import ConfigFileError, dump_config, parse_args, settings
from workflows.tune import build_parser

REPO = Path(__file__).resolve().parents[3]


def test_file_values_are_defaults_and_flags_override_them(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("epochs: 7\npopulation: 6\ninitial_lr_range: [0.001, 0.1]\nstable_start: true\n")
    args = parse_args(build_parser(), ["--config", str(path), "--epochs", "3"])
    assert (args.epochs, args.population, args.stable_start) == (3, 6, True)
    assert list(args.initial_lr_range) == [0.001, 0.1]


def test_toml_and_a_path_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "exp.toml"
    path.write_text('epochs = 5\naugment = "flips"\ndata = "../mydata"\n')
    args = parse_args(build_parser(), ["--config", str(path)])
    assert (args.epochs, args.augment) == (5, "flips")
    assert Path(args.data) == (tmp_path / "mydata").resolve()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("lr: 0.1\n", "unknown key 'lr'"),
        ("epochs: 0\n", "epochs: expected a whole number >= 1, got '0'"),
        ("augment: sideways\n", "augment: expected one of d4, flips, none"),
        ("stable_start: 3\n", "stable_start: expected true or false"),
        ("initial_lr_range: 0.1\n", "initial_lr_range: expected a list"),
        ("- 1\n- 2\n", "expected keys and values at the top level"),
        ("epochs: [3\n", "not valid YAML"),
    ],
)
def test_bad_files_are_one_line_errors_naming_file_and_key(tmp_path, body, expected):
    path = tmp_path / "exp.yaml"
    path.write_text(body)
    with pytest.raises(ConfigFileError) as caught:
        parse_args(build_parser(), ["--config", str(path)])
    message = str(caught.value)
    assert message.startswith(f"--config {path}") and expected in message and "\n" not in message


def test_print_config_round_trips_in_the_file_format(tmp_path):
    parser = build_parser()
    args = parse_args(parser, ["--epochs", "9"])
    for kind, suffix in (("yaml", ".yaml"), ("toml", ".toml")):
        path = tmp_path / f"again{suffix}"
        path.write_text(dump_config(settings(parser, args), kind))
        again = parse_args(build_parser(), ["--config", str(path)])
        assert settings(parser, again) == settings(parser, args)


def test_the_example_file_is_the_default_experiment():
    def printed(*flags):
        done = subprocess.run(
            [sys.executable, "workflows/tune.py", *flags, "--print-config"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return yaml.safe_load(done.stdout)

    assert printed("--config", "examples/tune-default.yaml") == printed()


def test_a_bad_file_exits_2_with_one_line_and_no_traceback(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("epochs: -1\n")
    done = subprocess.run(
        [sys.executable, "workflows/tune.py", "--config", str(path), "--results", str(tmp_path / "r")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "epochs" in done.stderr
    assert not (tmp_path / "r").exists()


def test_an_object_store_uri_in_a_file_is_kept_as_written(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("data: s3://bucket/patches\nresults: s3://bucket/runs/one\n")
    args = parse_args(build_parser(), ["--config", str(path)])
    assert (args.data, args.results) == ("s3://bucket/patches", "s3://bucket/runs/one")
