"""A dataset folder: which split files it holds, whether they agree, and the whole dataset read into memory.

A folder (a path or a URI) holds ``train.parquet`` and usually ``val.parquet`` and ``test.parquet``, or a single
other Parquet file that is the training split. Its splits must agree on the metadata and share no patch id; a
missing ``val`` or ``test`` is carved from ``train`` (:func:`data.splitting.carve_rows`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from data.format import PARQUET_SUFFIX, PATCH_ID, SPLITS, PatchDataset, PatchFormatError, PatchMetadata
from data.messages import brief_list
from data.reading import read_split
from data.splitting import DEFAULT_SPLIT_SEED, carve_rows
from data.storage import is_uri, locate, path_or_uri, shown


def read_dataset(folder: str | os.PathLike, *, seed: int = DEFAULT_SPLIT_SEED) -> PatchDataset:
    """Read and validate a dataset folder.

    A folder with ``train.parquet`` (and usually ``val.parquet`` and ``test.parquet``) is read as given; a missing
    ``val`` or ``test`` split is carved from ``train``. A folder holding a single other Parquet file is split,
    stratified by class, with ``seed``. Every split must agree on the metadata.

    Raises:
        PatchFormatError: The folder or any file in it is not a valid dataset.
    """
    present = split_files(folder)
    dataset: PatchDataset | None = None
    for name, path in present.items():
        split, metadata = read_split(path)
        if dataset is None:
            dataset = PatchDataset(metadata, {})
        else:
            check_split_metadata(path, metadata, dataset.metadata, present["train"])
        dataset.splits[name] = split
    assert dataset is not None
    check_ids_across_splits({name: split.patch_ids for name, split in dataset.splits.items()}, folder)
    return _carve(dataset, seed, present["train"])


def child(folder: str | os.PathLike, name: str) -> str:
    """The file ``name`` in ``folder`` (a path or a URI), as messages and readers take it."""
    return f"{shown(folder).rstrip('/')}/{name}" if is_uri(folder) else str(Path(folder) / name)


def split_files(folder: str | os.PathLike) -> dict[str, str]:
    """The files of a dataset folder (a path or URI) by split: those of ``train``/``val``/``test`` that are there.

    A folder holding a single other Parquet file gives it as ``train``, whose ``val`` and ``test`` are carved.

    Raises:
        PatchFormatError: It is not a folder, has val or test but no train, or holds no split file and not exactly
            one other Parquet file.
    """
    location, folder = locate(folder), str(path_or_uri(folder))
    if not location.is_dir():
        raise PatchFormatError(f"{folder}: not a dataset folder (expected train.parquet, val.parquet, test.parquet)")
    present = {name: f"{name}{PARQUET_SUFFIX}" for name in SPLITS}
    present = {name: child(folder, file) for name, file in present.items() if location.join(file).is_file()}
    if not present:
        files = [child(folder, name) for name in location.names() if name.endswith(PARQUET_SUFFIX)]
        if len(files) != 1:
            raise PatchFormatError(
                f"{folder}: expected train.parquet/val.parquet/test.parquet or exactly one Parquet file, "
                f"found {len(files)}"
            )
        return {"train": files[0]}
    if "train" not in present:
        raise PatchFormatError(f"{folder}: has {', '.join(sorted(present))} but no train.parquet")
    return present


def check_split_metadata(
    path: str | os.PathLike, metadata: PatchMetadata, train: PatchMetadata, train_path: str | os.PathLike
) -> None:
    """Refuse a split whose metadata differs from the training split's.

    Raises:
        PatchFormatError: Naming the file and the fields that differ.
    """
    if metadata != train:
        raise PatchFormatError(
            f"{path}: metadata disagrees with {locate(train_path).name} ({_difference(train, metadata)})"
        )


def _difference(a: PatchMetadata, b: PatchMetadata) -> str:
    fields = ("bands", "height", "width", "classes", "units", "nodata")
    return "; ".join(
        f"{f}: {_shown(getattr(a, f))} vs {_shown(getattr(b, f))}" for f in fields if getattr(a, f) != getattr(b, f)
    )


def _shown(value: object) -> str:
    return f"({brief_list(value)})" if isinstance(value, tuple) else str(value)


def check_ids_across_splits(ids: Mapping[str, Sequence[str]], folder: str | os.PathLike) -> None:
    """Refuse a patch id that appears in two splits (``ids``: each split's ids, by split name).

    Raises:
        PatchFormatError: Naming the folder, the id and both splits.
    """
    seen: dict[str, str] = {}
    for name, split_ids in ids.items():
        for pid in split_ids:
            if pid in seen:
                raise PatchFormatError(f"{folder}: {PATCH_ID} {pid!r} appears in both {seen[pid]} and {name}")
            seen[pid] = name


def _carve(dataset: PatchDataset, seed: int, source: str) -> PatchDataset:
    """Carve missing val/test splits out of train, stratified, keeping the given ones untouched."""
    missing = [name for name in ("val", "test") if name not in dataset.splits]
    if not missing:
        return dataset
    train = dataset.splits["train"]
    dataset.splits.update(
        {name: train.take(rows) for name, rows in carve_rows(train.labels, missing, seed, source).items()}
    )
    return dataset
