"""Experiment files for the entry scripts: ``--config FILE`` (YAML or TOML) whose keys are the flags' names.

A file sets the defaults and flags on the command line override it, so ``tune.py --config exp.yaml --epochs 5`` is
the file's experiment with 5 epochs. A relative path in a file is relative to the file's folder. Each value goes
through its flag's own check (the same one-line errors as on
the command line, naming the file and the key). ``--print-config`` prints the effective settings in the file's format
(YAML without a file) and exits, so an experiment can be kept, shared and reviewed as a file; the experiment
folder keeps one too (:func:`write_config`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path, PurePath
from typing import Any

import yaml

from data.atomic import write_file_atomic
from data.storage import is_uri, path_or_uri

# The file an experiment or training folder keeps its settings in (written by :func:`write_config`).
CONFIG_FILE = "config.yaml"
YAML_SUFFIXES = (".yaml", ".yml")
TOML_SUFFIXES = (".toml",)
# Flags that are about this invocation, not the experiment: never read from nor written to a file.
NOT_IN_FILES = frozenset({"config", "print_config", "help", "resume", "overwrite"})


class ConfigFileError(ValueError):
    """A config file cannot be read or holds a key or value the script refuses; the message names file and key."""


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and ``--print-config`` to an entry script's parser."""
    group = parser.add_argument_group("experiment file")
    group.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML (.yaml/.yml) or TOML (.toml) file whose keys are these flags' names with underscores "
        "(epochs: 40); flags given on the command line override it",
    )
    group.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings (file plus flags) in the file's format, YAML without one, and exit",
    )


def _file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in YAML_SUFFIXES:
        return "yaml"
    if suffix in TOML_SUFFIXES:
        return "toml"
    raise ConfigFileError(f"--config {path}: expected a .yaml, .yml or .toml file")


def read_config(path: Path) -> dict[str, Any]:
    """The key/value pairs of a YAML or TOML file (a mapping at the top level).

    Raises:
        ConfigFileError: The file is missing, unreadable, not YAML/TOML, or not a mapping.
    """
    kind = _file_format(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigFileError(f"--config {path}: cannot read it ({err.strerror or err})") from None
    if kind == "toml" and sys.version_info < (3, 11):
        raise ConfigFileError(f"--config {path}: TOML files need Python 3.11 or later; use YAML")
    try:
        if kind == "yaml":
            body = yaml.safe_load(text)
        else:
            import tomllib  # Python 3.11+

            body = tomllib.loads(text)
    except Exception as err:  # noqa: BLE001 - yaml.YAMLError or tomllib.TOMLDecodeError: the file is not valid
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigFileError(f"--config {path}: not valid {kind.upper()}: {first}") from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ConfigFileError(f"--config {path}: expected keys and values at the top level, got {type(body).__name__}")
    return body


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in NOT_IN_FILES and a.dest != argparse.SUPPRESS}


def _checked(action: argparse.Action, key: str, value: Any, path: Path) -> Any:
    """``value`` through the flag's own type and choices, as if typed on the command line."""
    where = f"--config {path}: {key}"
    if value is None:
        return None
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise ConfigFileError(f"{where}: expected true or false, got {value!r}")
        return value
    if action.nargs not in (None, "?"):
        if not isinstance(value, list):
            raise ConfigFileError(f"{where}: expected a list, got {value!r}")
        if isinstance(action.nargs, int) and len(value) != action.nargs:
            raise ConfigFileError(f"{where}: expected {action.nargs} values, got {len(value)}")
        return [_one(action, where, item, path.parent) for item in value]
    return _one(action, where, value, path.parent)


def _one(action: argparse.Action, where: str, value: Any, base: Path) -> Any:
    if isinstance(value, list | dict):
        raise ConfigFileError(f"{where}: expected one value, got {value!r}")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if action.type in (Path, path_or_uri) and not is_uri(text) and not Path(text).is_absolute():
        text = str((base / text).resolve())  # a relative path in a file means relative to the file
    try:
        converted = action.type(text) if action.type is not None else value
    except (argparse.ArgumentTypeError, ValueError, TypeError) as err:
        raise ConfigFileError(f"{where}: {err}") from None
    if action.choices is not None and converted not in action.choices:
        raise ConfigFileError(f"{where}: expected one of {', '.join(map(str, action.choices))}, got {value!r}")
    return converted


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    effective: Callable[[argparse.Namespace], dict[str, Any]] | None = None,
) -> argparse.Namespace:
    """Parse ``argv`` with the ``--config`` file's values as defaults; handle ``--print-config``.

    Args:
        parser: The entry script's parser, with :func:`add_config_flags`.
        argv: The arguments (default: the command line's).
        effective: The settings ``--print-config`` prints, from the parsed flags (default: every flag that belongs
            in a file, as given); a script whose config resolves a value (a default that depends on another) passes
            its config's own settings.

    Raises:
        ConfigFileError: The file or one of its keys or values is refused (one line naming file and key).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    first, _ = parser.parse_known_args(argv)
    if first.config is not None:
        actions = _actions(parser)
        values = {}
        for key, value in read_config(first.config).items():
            dest = str(key).replace("-", "_")
            if dest not in actions:
                known = ", ".join(sorted(actions))
                raise ConfigFileError(f"--config {first.config}: unknown key {key!r} (known: {known})")
            values[dest] = _checked(actions[dest], str(key), value, first.config)
        parser.set_defaults(**values)
    args = parser.parse_args(argv)
    if args.print_config:
        body = effective(args) if effective is not None else settings(parser, args)
        print(dump_config(body, _file_format(args.config) if args.config else "yaml"), end="")
        raise SystemExit(0)
    return args


def settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The experiment's effective settings: every flag of the parser that belongs in a file, as plain values."""
    return {dest: plain_setting(getattr(args, dest, None)) for dest in _actions(parser)}


def plain_setting(value: Any) -> Any:
    """A setting as a file holds it: paths as strings, tuples as lists, anything else as it is."""
    if isinstance(value, PurePath):
        return str(value)
    return list(value) if isinstance(value, tuple) else value


class _SettingsDumper(yaml.SafeDumper):
    """One key per line, and a list (a flag's values) on its key's line: ``initial_lr_range: [0.001, 3.0]``."""


_SettingsDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def dump_config(body: dict[str, Any], kind: str = "yaml") -> str:
    """``body`` as a YAML or TOML document (TOML has no null: unset values are left out, with a comment)."""
    if kind == "yaml":
        return yaml.dump(body, Dumper=_SettingsDumper, sort_keys=False, default_flow_style=False)
    lines = []
    for key, value in body.items():
        if value is None:
            lines.append(f"# {key}: not set (the script's default)")
        else:
            lines.append(f"{key} = {json.dumps(value)}")  # JSON scalars and lists of numbers are valid TOML
    return "\n".join(lines) + "\n"


def write_config(path: str | os.PathLike, body: dict[str, Any]) -> Path:
    """Keep an experiment's settings (flag names, plain values) as a YAML file another run can take as ``--config``."""
    text = dump_config(body, "yaml")
    return write_file_atomic(Path(path), lambda handle: handle.write(text.encode()))
