"""Atomic writes: one module owns the write-then-rename of files, the folder swap, and the checks before them.

A file is written under a temporary name in its own folder and renamed over the target; a folder is built as a
temporary sibling and swapped in, the previous one moved aside and deleted only once the new one is in place. Both
come out with the modes a plain ``open``/``mkdir`` would give under the user's umask (``tempfile`` alone makes them
0600/0700). An existing folder is replaced only when it holds nothing but the files its writer makes, so a mistyped
path cannot wipe unrelated work.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from data.messages import brief_list

OVERWRITE_FLAG = "--overwrite"


class OutputLocationError(ValueError):
    """An output cannot be written where it was asked for (its folder is a file, or not writable)."""


def umask() -> int:
    """The process's current umask."""
    # The only portable way to read it is to set it; restored at once (the scripts write from one thread).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new file under the current umask (``0666 & ~umask``)."""
    return 0o666 & ~umask()


def folder_mode() -> int:
    """Mode of a new folder under the current umask (``0777 & ~umask``)."""
    return 0o777 & ~umask()


def write_file_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write`` on a temporary file in ``path``'s folder, then rename it over ``path`` (nothing left on failure).

    Args:
        path: The file to create or replace; its folder is created when missing.
        write: Writes the contents to the binary handle it is given.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_creatable(path: str | os.PathLike, what: str, *, folder: bool = False) -> None:
    """Refuse, before any work, an output whose folder cannot exist or be written.

    Args:
        path: The file (or, with ``folder``, the folder) that will be written.
        what: How the message names it, for example ``"--output"``.
        folder: ``path`` is a folder to create or write into (an existing file there is refused).

    Raises:
        OutputLocationError: A part of the path is a file, or the nearest existing folder is not writable.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise OutputLocationError(f"{what} {path}: is a file, not a folder; choose a folder")
    target = path if folder else path.parent
    for parent in (target, *target.parents):
        if parent.is_dir():
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputLocationError(f"{what} {path}: cannot write in {parent} (permission denied)")
            return
        if parent.exists() or parent.is_symlink():
            raise OutputLocationError(f"{what} {path}: {parent} is a file, not a folder; choose another path")


def check_replaceable(folder: str | os.PathLike, owned: Collection[str], what: str, *, overwrite: bool) -> None:
    """Refuse a folder that exists unless ``overwrite``, and always one holding anything its writer does not make.

    Args:
        folder: The folder that would be written.
        owned: Names of the entries the writer makes; a folder holding only these (or nothing) may be replaced.
        what: What the writer makes, for the message (``"dataset"``, ``"model bundle"``).
        overwrite: Whether the caller asked to replace an existing folder.

    Raises:
        FileExistsError: One line naming the folder and, where it applies, the entries that are not the writer's.
    """
    folder = Path(folder)
    if not (folder.exists() or folder.is_symlink()):
        return
    if folder.is_symlink() or not folder.is_dir():
        kind = "a symbolic link" if folder.is_symlink() else "a file"
        raise FileExistsError(f"{folder}: exists and is {kind}, not a {what} folder; refusing to replace it")
    foreign = sorted(entry.name for entry in folder.iterdir() if entry.name not in owned or not entry.is_file())
    if foreign:
        raise FileExistsError(
            f"{folder}: holds {brief_list(foreign)}, not only {what} files ({', '.join(sorted(owned))}); refusing "
            "to replace it: choose another folder"
        )
    if not overwrite:
        raise FileExistsError(f"{folder}: already exists; choose another folder or pass {OVERWRITE_FLAG} to replace it")


@contextmanager
def write_folder_atomic(
    folder: str | os.PathLike, owned: Collection[str], what: str, *, overwrite: bool
) -> Iterator[Path]:
    """Build a folder as a temporary sibling (the ``with`` body writes into it), then swap it in.

    The previous folder, if any, is moved aside, replaced and only then deleted; on failure it is put back and the
    temporary folder removed. The folder comes out with the mode ``mkdir`` would give (``0777 & ~umask``).

    Args:
        folder: The folder to create or replace.
        owned: Names of the entries the writer makes (see :func:`check_replaceable`).
        what: What the writer makes, for messages.
        overwrite: Replace an existing folder of the writer's.

    Yields:
        The temporary folder to write into.

    Raises:
        FileExistsError: The folder exists and may not be replaced (checked before and again after the body).
    """
    folder = Path(folder)
    check_replaceable(folder, owned, what, overwrite=overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        tmp.chmod(folder_mode())
        yield tmp
        check_replaceable(folder, owned, what, overwrite=overwrite)  # nobody put anything there meanwhile
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, folder: Path) -> None:
    """Rename ``tmp`` to ``folder``; an existing ``folder`` is moved aside first and deleted once ``tmp`` is in."""
    old: Path | None = None
    try:
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            os.replace(folder, old / folder.name)
        os.replace(tmp, folder)
    except BaseException:
        if old is not None and not folder.exists():
            os.replace(old / folder.name, folder)  # put the previous folder back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_json_atomic(path: str | os.PathLike, body: Any) -> Path:
    """Write JSON to a temporary file in the same folder and rename it over ``path`` (mode as the umask gives)."""
    text = json.dumps(body, indent=2, sort_keys=False) + "\n"
    return write_file_atomic(path, lambda handle: handle.write(text.encode()))
