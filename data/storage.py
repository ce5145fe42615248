"""Where the jobs read and write: a local path or an object-store URI, both through one ``pyarrow.fs`` layer.

A location is a folder or a file given as a path (``data/default``) or as a URI that ``pyarrow.fs`` resolves
(``s3://bucket/prefix``, ``gs://…``, ``hdfs://…``). Credentials and endpoints come from the file system's own
settings: for S3 the standard ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION`` and
``AWS_ENDPOINT_URL`` environment variables (an S3-compatible server), which Ray's workers inherit from the process
that starts the cluster. Ray Data and Ray Tune take the same URIs, so a multi-node cluster keeps its data, checkpoints
and results there. Problems (no such bucket, access refused, an unknown scheme) are one-line :class:`StorageError`s.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from data.atomic import write_file_atomic
from data.messages import one_line

# A URI scheme of two or more characters (so that a Windows drive such as C:/ is a path), then one or two slashes.
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/+(.*)$", re.DOTALL)
T = TypeVar("T")


class StorageError(ValueError):
    """A location cannot be reached or used: the message names it and says what is wrong, in one line."""


def is_uri(value: object) -> bool:
    """Whether ``value`` looks like ``scheme://…`` (also after ``pathlib`` folded the slashes to ``scheme:/…``)."""
    return value is not None and _URI.match(str(value)) is not None and not str(value).startswith("file:")


def shown(value: str | os.PathLike) -> str:
    """A location as the user typed it: a ``pathlib`` path that folded ``s3://b`` to ``s3:/b`` gets its ``//`` back."""
    found = _URI.match(str(value))
    if found and isinstance(value, PurePath):
        return f"{found.group(1)}://{found.group(2)}"
    return str(value)


def path_or_uri(value: str | os.PathLike) -> Path | str:
    """A ``--data``-style argument: a URI kept as typed (``pathlib`` folds its ``//``), anything else a ``Path``."""
    return shown(value) if is_uri(value) else Path(value)


@dataclass(frozen=True)
class Location:
    """A file or folder on a local disk or in an object store.

    Attributes:
        filesystem: The ``pyarrow.fs`` file system that holds it.
        path: Its path within ``filesystem`` (for a local location, absolute).
        uri: How Ray, messages and users name it: the absolute path, or ``scheme://path``.
    """

    filesystem: pafs.FileSystem
    path: str
    uri: str

    def __str__(self) -> str:
        return self.uri

    @property
    def local(self) -> bool:
        """Whether it is on this machine's own file system."""
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        """The last part of the path."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def within(self, folder: Location) -> bool:
        """Whether this is ``folder`` or lies inside it, on the same kind of file system (local paths resolved)."""
        if self.filesystem.type_name != folder.filesystem.type_name:
            return False
        return self.path == folder.path or self.path.startswith(f"{folder.path.rstrip('/')}/")

    def join(self, *names: str) -> Location:
        """The location ``names`` below this one."""
        tail = "/".join(names)
        return Location(self.filesystem, f"{self.path.rstrip('/')}/{tail}", f"{self.uri.rstrip('/')}/{tail}")

    def info(self) -> pafs.FileInfo:
        """What the file system says of it: its type (``File``, ``Directory``, ``NotFound``) and size, in one request.

        Raises:
            StorageError: The store cannot be asked (no such bucket, access refused, unreachable).
        """
        return _checked(self, lambda: self.filesystem.get_file_info(self.path))

    def kind(self) -> pafs.FileType:
        """``FileType.File``, ``Directory`` or ``NotFound`` (see :meth:`info`)."""
        return self.info().type

    def is_file(self) -> bool:
        """Whether a file is there."""
        return self.kind() == pafs.FileType.File

    def is_dir(self) -> bool:
        """Whether a folder (or, in an object store, a prefix holding objects) is there."""
        return self.kind() == pafs.FileType.Directory

    def exists(self) -> bool:
        """Whether anything is there."""
        return self.kind() != pafs.FileType.NotFound

    def names(self) -> list[str]:
        """Names of the entries directly inside this folder, sorted (empty when it does not exist)."""
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        return sorted(info.base_name for info in _checked(self, lambda: self.filesystem.get_file_info(selector)))

    def files(self) -> list[str]:
        """Names of the files directly inside this folder, sorted (no sub-folders; empty when it does not exist)."""
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        infos = _checked(self, lambda: self.filesystem.get_file_info(selector))
        return sorted(info.base_name for info in infos if info.type == pafs.FileType.File)

    def read_bytes(self) -> bytes:
        """The file's contents."""
        return _checked(self, lambda: _read_all(self))

    def write_bytes(self, body: bytes) -> None:
        """Create or replace the file with ``body`` in one step (on a local disk, by write-then-rename)."""
        if self.local:
            write_file_atomic(self.path, lambda handle: handle.write(body))
            return
        _checked(self, lambda: _write_all(self, body))

    def delete(self) -> None:
        """Remove the file or folder (and everything in it) if it is there."""
        kind = self.kind()
        if kind == pafs.FileType.Directory:
            _checked(self, lambda: self.filesystem.delete_dir(self.path))
        elif kind == pafs.FileType.File:
            _checked(self, lambda: self.filesystem.delete_file(self.path))

    def move(self, target: Location) -> None:
        """Move this file to ``target`` on the same file system, replacing a file there.

        An object store has no rename: the object is copied, then deleted. The target appears whole or not at all.

        Raises:
            StorageError: The store refused (the message names this file), or ``target`` is on another file system.
        """
        _same_filesystem(self, target)
        if self.local:
            Path(target.path).parent.mkdir(parents=True, exist_ok=True)
        _checked(self, lambda: self.filesystem.move(self.path, target.path))

    def at(self, path: str) -> Location:
        """Another location on the same file system, by its path there (as Ray Train reports a checkpoint)."""
        if self.local:
            return Location(self.filesystem, path, path)
        scheme = self.uri.split("://", 1)[0]
        return Location(self.filesystem, path, f"{scheme}://{path}")

    def download(self, folder: str | os.PathLike) -> Path:
        """Copy this folder's files into a local ``folder`` (created when missing); returns it."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        if self.local:
            shutil.copytree(self.path, folder, dirs_exist_ok=True)
        else:
            _checked(
                self,
                lambda: pafs.copy_files(
                    self.path,
                    str(folder),
                    source_filesystem=self.filesystem,
                    destination_filesystem=pafs.LocalFileSystem(),
                ),
            )
        return Path(folder)


def _read_all(location: Location) -> bytes:
    with location.filesystem.open_input_stream(location.path) as stream:
        return stream.read()


def _write_all(location: Location, body: bytes) -> None:
    with location.filesystem.open_output_stream(location.path) as stream:
        stream.write(body)


def locate(value: str | os.PathLike, flag: str | None = None) -> Location:
    """Resolve a path or URI to its file system (no access yet, except to build the file system).

    Args:
        value: A local path (relative to the working directory) or a URI ``pyarrow.fs`` resolves.
        flag: The flag it came from, for messages (``--data``).

    Raises:
        StorageError: The URI's scheme is unknown or its file system cannot be built.
    """
    if not is_uri(value):
        text = str(value)
        path = Path(text[len("file://") :] if text.startswith("file://") else text).expanduser().resolve()
        return Location(pafs.LocalFileSystem(), str(path), str(path))
    uri = shown(value)
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise StorageError(f"{_where(uri, flag)}: cannot be opened ({one_line(err)})") from None
    plain = uri.split("?", 1)[0]  # query options (endpoint, region) belong to the file system, not to the path
    return Location(filesystem, path.rstrip("/"), plain.rstrip("/"))


def check_apart(output: Location, output_flag: str, source: Location, source_flag: str) -> None:
    """Refuse, before any work, an output that is a source or lies inside it, and a source inside the output.

    Local paths are compared resolved (symbolic links followed, as :func:`locate` gives them), so no spelling of a
    path lets a run write into what it reads, or write over it.

    Raises:
        StorageError: One line naming both and what to do.
    """
    if output.within(source):
        where = "is" if output.path == source.path else "lies inside"
        raise StorageError(
            f"{output_flag} {output}: {where} the {source_flag} {source}, which the run would change; choose another "
            f"{output_flag}"
        )
    if source.within(output):
        raise StorageError(
            f"{output_flag} {output}: holds the {source_flag} {source}, which the run could write over; choose "
            f"another {output_flag}"
        )


def check_reachable(location: Location, flag: str | None = None) -> None:
    """Refuse, before any work, an object-store location whose bucket does not exist or refuses access.

    Raises:
        StorageError: One line naming the location and the problem.
    """
    if location.local:
        return
    bucket = location.path.split("/", 1)[0]
    info = _checked(location, lambda: location.filesystem.get_file_info(bucket), flag)
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{_where(location.uri, flag)}: bucket {bucket!r} does not exist (create it first)")


def _where(uri: str, flag: str | None) -> str:
    return f"{flag} {uri}" if flag else uri


def _checked(location: Location, call: Callable[[], T], flag: str | None = None) -> T:
    """``call()``, with the store's errors turned into one-line :class:`StorageError`s naming ``location``."""
    try:
        return call()
    except (pa.ArrowException, OSError) as err:
        if location.local and isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        text = str(err)
        where = _where(location.uri, flag)
        if "NO_SUCH_BUCKET" in text or "bucket does not exist" in text.lower():
            raise StorageError(f"{where}: bucket {location.path.split('/', 1)[0]!r} does not exist") from None
        if "ACCESS_DENIED" in text or "AccessDenied" in text or "Forbidden" in text or "403" in text:
            raise StorageError(f"{where}: access denied (check the credentials and the bucket's policy)") from None
        raise StorageError(f"{where}: {one_line(err)}") from None


def as_user_path(location: Location) -> Path | str:
    """How results are handed back to a user: a ``Path`` on a local disk, the URI string in an object store."""
    return Path(location.path) if location.local else location.uri


def joined(base: Path | str, *names: str) -> Path | str:
    """``names`` below ``base`` (a local ``Path`` or a URI string, as :func:`as_user_path` gives)."""
    if isinstance(base, Path):
        return base.joinpath(*names)
    return "/".join([base.rstrip("/"), *names])


@contextmanager
def local_copy(location: Location, prefix: str) -> Iterator[Path]:
    """A folder on the local disk: the folder itself when it is local, else a temporary download removed afterwards."""
    if location.local:
        yield Path(location.path)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield location.download(Path(tmp) / location.name)


def _same_filesystem(source: Location, target: Location) -> None:
    if source.filesystem.type_name != target.filesystem.type_name:
        raise StorageError(f"{target}: is on another file system than {source}; cannot move between them")


def move_files(source: Location, target: Location) -> list[str]:
    """Move every file below the folder ``source`` to the same relative name below ``target`` (one file system).

    Object stores have no folder rename, so each object is moved (copied, then deleted) in turn: while this runs a
    reader can see ``target`` part-filled, and a failure leaves the files moved so far in ``target`` and the rest in
    ``source``. A file of the same name in ``target`` is replaced; other files there are left alone.

    Returns:
        The relative names moved (``/``-separated), sorted.

    Raises:
        StorageError: The store refused a move (the message names the file), or the two are on different file systems.
    """
    _same_filesystem(source, target)
    selector = pafs.FileSelector(source.path, recursive=True, allow_not_found=True)
    infos = _checked(source, lambda: source.filesystem.get_file_info(selector))
    names = sorted(info.path[len(source.path.rstrip("/")) + 1 :] for info in infos if info.type == pafs.FileType.File)
    for name in names:
        source.join(name).move(target.join(name))
    return names


def upload_folder(source: str | os.PathLike, target: Location) -> None:
    """Copy a local folder's files into ``target`` (same relative names), replacing files of the same name."""
    if target.local:
        shutil.copytree(source, target.path, dirs_exist_ok=True)
        return
    _checked(
        target,
        lambda: pafs.copy_files(
            str(source), target.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=target.filesystem
        ),
    )


@contextmanager
def local_staging(target: Location, prefix: str) -> Iterator[Path]:
    """A local folder to write into, uploaded to ``target`` on success; for a local ``target``, the target itself.

    On failure the staged files are still uploaded where they were written (nothing the job finished is lost), and the
    temporary folder is removed in any case.
    """
    if target.local:
        yield Path(target.path)
        return
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    except BaseException:
        with suppress(StorageError):  # the job's own error is the one to report
            upload_folder(tmp, target)
        raise
    else:
        upload_folder(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
