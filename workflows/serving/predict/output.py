"""Where the predictions go: output kinds and part files, the refusals checked before any work, and the staging.

One code path serves a local disk and an object store, through ``pyarrow.fs`` (:mod:`data.storage`).

Output rule: an ``output`` ending in ``.parquet`` is one Parquet file; any other name is a folder of part files
(``<write id>_<task>-<n>.parquet``, in input order by name).

Ray Data writes under ``.<name>.<random>.tmp`` beside the output. Once the parts are complete and checked, a file
output's single part is moved into place (a rename on a local disk, a copy then delete in a store: the file appears
whole), and a folder output gets each new part moved in, and only then loses the parts of an earlier run (with
``overwrite``); if a move fails, the parts moved so far are taken out again. The temporary folder is deleted in any
case, so nothing that looks finished is left by a failed run.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pyarrow.fs as pafs

from data.atomic import OutputLocationError, check_creatable
from data.folder import child
from data.format import DATASET_FILES, PARQUET_SUFFIX
from data.messages import brief_list
from data.storage import Location, StorageError, is_uri, locate, move_files

# Names write_parquet gives its files: "<dataset id>_<write id>_<task index, 6 digits>-<file of the task>.parquet".
PART_FILE = re.compile(r"(?:[A-Za-z0-9]+_)?[0-9a-f]+_(?P<task>[0-9]{6,})-(?P<file>[0-9]+)\.parquet")


def is_folder_output(path: Path | str | Location) -> bool:
    """Whether ``path`` names a folder of part files (any name not ending in ``.parquet``) rather than one file."""
    return not str(path).rstrip("/").rsplit("/", 1)[-1].endswith(PARQUET_SUFFIX)


def stored_parts(folder: Location) -> list[Location]:
    """The part files write_parquet left in ``folder``, in the order of their names (by task, then file of the task)."""
    matched = []
    for name in folder.files():
        match = PART_FILE.fullmatch(name)
        if match:
            matched.append((int(match["task"]), int(match["file"]), name))
    return [folder.join(name) for *_, name in sorted(matched)]


def output_location(output: Path | str) -> Location:
    """The output's location, its own name kept as given: a symbolic link there is replaced, never written through."""
    if is_uri(output):
        return locate(output, "--output")
    path = Path(output)
    return locate(path.parent, "--output").join(path.name)


def _named(output: Path | str, location: Location) -> str:
    """How messages name the output: a local path as the user gave it (links unresolved), a URI without its query."""
    return str(output) if location.local else location.uri


def check_output(output: Path | str, overwrite: bool) -> None:
    """Refuse an output that exists (unless ``overwrite``), is the wrong kind, or whose folder cannot be written.

    Raises:
        FileExistsError: The output exists and may not be replaced, or is a folder of other files.
        OutputLocationError: A part of the output's folder is a file, or it is not writable (a URI: a whole bucket).
        StorageError: The object store cannot be asked.
    """
    location = output_location(output)
    name, folder = _named(output, location), is_folder_output(location)
    linked = location.local and Path(output).is_symlink()  # a link, even a dangling one, is something there
    if location.local:
        check_creatable(output, "--output", folder=folder)  # first: a path below a file has no kind to ask for
    elif "/" not in location.path.strip("/"):
        raise OutputLocationError(f"--output {name}: is a whole bucket; name a file or folder inside it")
    kind = location.kind()
    if folder:
        if linked:
            raise FileExistsError(f"{name}: is a symbolic link; choose another --output")
        if kind == pafs.FileType.File:
            raise OutputLocationError(f"--output {name}: is a file, not a folder; choose a folder")
        if kind == pafs.FileType.Directory:
            files = set(location.files())
            foreign = [entry for entry in location.names() if entry not in files or not PART_FILE.fullmatch(entry)]
            if foreign:
                raise FileExistsError(
                    f"{name}: is a folder holding {brief_list(foreign)}, not only prediction part files; choose "
                    "another --output"
                )
            if not overwrite:
                raise FileExistsError(f"{name}: already exists; pass --overwrite or choose another --output")
        return
    if kind == pafs.FileType.Directory:
        raise FileExistsError(f"{name}: is a folder; --output must name a Parquet file")
    if (kind == pafs.FileType.File or linked) and not overwrite:
        raise FileExistsError(f"{name}: already exists; pass --overwrite or choose another --output")


def check_not_a_source(output: Path | str, input_path: Path | str, bundle_dir: Path) -> None:
    """Refuse an output that is the input, inside the input dataset folder or the model bundle, or holds either.

    Local paths are compared resolved (symbolic links followed) and, where both exist, with ``os.path.samefile``
    (hard links), so no spelling of the path lets the predictions replace what they are computed from. URIs are
    compared by their paths in the store (an object store has no links).

    Raises:
        FileExistsError: One line naming what the output would replace.
    """
    target, source = locate(output, "--output"), locate(input_path, "--input")
    shown_output = _named(output, target)
    if target.local and target.within(locate(bundle_dir)):
        raise FileExistsError(
            f"--output {shown_output}: is inside the --model bundle folder {bundle_dir}; choose another --output"
        )
    if locate(bundle_dir).within(target):
        raise FileExistsError(
            f"--output {shown_output}: holds the --model bundle folder {bundle_dir}, which the predictions could "
            "write over; choose another --output"
        )
    if target.filesystem.type_name != source.filesystem.type_name:
        return  # one local and one stored: never the same
    if source.within(target) and source.path != target.path:
        raise FileExistsError(
            f"--output {shown_output}: holds the --input {_named(input_path, source)}, which the predictions could "
            "write over; choose another --output"
        )
    if source.is_dir():
        if target.within(source):
            kind = "a folder" if is_folder_output(target) else "a Parquet file"
            raise FileExistsError(
                f"--output {shown_output}: is {kind} inside the --input dataset folder {_named(input_path, source)}, "
                "which would change the dataset; choose another --output"
            )
        names = sorted(set(DATASET_FILES) | {name for name in source.files() if name.endswith(PARQUET_SUFFIX)})
        sources = [(child(input_path, name), source.join(name)) for name in names]
    else:
        sources = [(input_path, source)]
    for given, file in sources:
        if _same_file(target, file):
            raise FileExistsError(
                f"--output {shown_output}: is the input file {_named(given, file)}; predictions must not replace the "
                "patches, choose another --output"
            )


def _same_file(a: Location, b: Location) -> bool:
    """Whether two locations name the same file: the same path, or on a local disk the same file through links."""
    if a.path == b.path:
        return True
    if not a.local:
        return False
    first, second = Path(a.path), Path(b.path)
    if first.resolve() == second.resolve():
        return True
    try:
        return first.exists() and second.exists() and os.path.samefile(first, second)
    except OSError:
        return False


@contextmanager
def staged_output(output: Path | str, overwrite: bool) -> Iterator[Location]:
    """A temporary folder beside ``output`` for write_parquet; on success its parts are moved into place.

    Raises:
        FileExistsError: Something appeared at ``output`` meanwhile.
        RuntimeError: A file output's folder does not hold exactly one part file.
        StorageError: The store refused; if older parts could not be deleted after the new ones were moved in, the
            message says so and names the folder.
    """
    target = output_location(output)
    tmp = target.at(target.path.rsplit("/", 1)[0]).join(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        parts = stored_parts(tmp)
        if not is_folder_output(target) and len(parts) != 1:
            raise RuntimeError(f"Ray Data wrote {len(parts)} files for the single --output file {output}")
        check_output(output, overwrite)  # nobody wrote it meanwhile
        if is_folder_output(target):
            _move_parts_in(tmp, parts, target)
        else:
            parts[0].move(target)
    finally:
        with suppress(StorageError):  # the run's own error, if any, is the one to report
            tmp.delete()


def _move_parts_in(tmp: Location, parts: Iterable[Location], output: Location) -> None:
    """Move a temporary folder's part files into the folder ``output``, then delete the parts it held before."""
    older = stored_parts(output)  # check_output allowed nothing else there
    try:
        move_files(tmp, output)
    except BaseException:
        for part in parts:
            with suppress(StorageError):
                output.join(part.name).delete()
        raise
    try:
        for part in older:
            part.delete()
    except StorageError as err:
        raise StorageError(
            f"--output {output}: the new predictions are in place but older part files could not be deleted ({err}); "
            f"delete whichever of {brief_list(part.name for part in older)} remain"
        ) from None
