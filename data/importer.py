"""Import a user's NumPy ``.npz`` archive of patches into a validated, split dataset folder in the patch format.

The archive holds ``x`` (N x C x H x W numbers) and ``y`` (N integer or string labels), optionally ``band_names``
and ``class_names``, and optionally given splits ``x_val``/``y_val`` and ``x_test``/``y_test``; the splits it lacks
are carved from ``x``/``y``, stratified by class with a fixed seed. Every problem is a one-line
:class:`NpzImportError` naming the file, the key and what is wrong.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from data.format import MIN_PATCH_SIZE, PIXEL_DTYPE, PatchDataset, PatchFormatError, PatchMetadata, PatchSplit
from data.messages import brief_list, one_line, plain
from data.splitting import DEFAULT_SPLIT_FRACTIONS, DEFAULT_SPLIT_SEED, carve, split_counts
from data.storage import check_apart, locate
from data.writing import check_dataset_replaceable, write_dataset

X, Y, BAND_NAMES, CLASS_NAMES = "x", "y", "band_names", "class_names"
# The keys of each split's arrays; "train" comes from x/y (minus whatever is carved from them).
SPLIT_KEYS = {"train": (X, Y), "val": ("x_val", "y_val"), "test": ("x_test", "y_test")}
KNOWN_KEYS = frozenset({BAND_NAMES, CLASS_NAMES, *(key for pair in SPLIT_KEYS.values() for key in pair)})
MIN_CLASSES = 2
DEFAULT_VAL_FRACTION, DEFAULT_TEST_FRACTION = DEFAULT_SPLIT_FRACTIONS[1], DEFAULT_SPLIT_FRACTIONS[2]


class NpzImportError(PatchFormatError):
    """An ``.npz`` archive cannot be imported; the message names the file, the key and what is wrong."""


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` archive without ever unpickling (user files are untrusted).

    Args:
        path: The ``.npz`` file.

    Returns:
        The arrays by key.

    Raises:
        NpzImportError: The file is missing, not an ``.npz`` archive, damaged, holds object arrays or unknown keys.
    """
    path = Path(path)
    if not path.is_file():
        raise NpzImportError(f"{path}: no such file")
    key = None
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise NpzImportError(f"{path}: is a single .npy array, not an .npz archive of named arrays")
        with archive:
            arrays = {}
            for key in archive.files:
                arrays[key] = archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, NotImplementedError) as err:
        if isinstance(err, NpzImportError):
            raise
        where = f"{path}: key '{key}'" if key is not None else str(path)
        raise NpzImportError(f"{where}: cannot be read as an .npz archive without pickle ({one_line(err)})") from None
    unknown = sorted(set(arrays) - KNOWN_KEYS)
    if unknown:
        raise NpzImportError(f"{path}: unknown key(s) {brief_list(unknown)}; expected {', '.join(sorted(KNOWN_KEYS))}")
    return arrays


def dataset_from_arrays(
    arrays: Mapping[str, np.ndarray],
    *,
    source: str = "arrays",
    seed: int = DEFAULT_SPLIT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> PatchDataset:
    """Validate the arrays of an archive and build the dataset, carving the splits the archive does not give.

    Args:
        arrays: Arrays by key (``x``, ``y`` and optionally ``band_names``, ``class_names``, ``x_val``, ``y_val``,
            ``x_test``, ``y_test``).
        source: Name of the file they came from, used in error messages.
        seed: Seed of the stratified carving.
        val_fraction: Share of ``x`` carved as validation split when ``x_val`` is not given.
        test_fraction: Share of ``x`` carved as test split when ``x_test`` is not given.

    Raises:
        NpzImportError: Anything about the arrays is wrong.
    """
    for key in (X, Y):
        if key not in arrays:
            raise NpzImportError(f"{source}: key '{key}' is missing; an archive needs '{X}' and '{Y}'")
    given = {}
    for name, (x_key, y_key) in SPLIT_KEYS.items():
        if (x_key in arrays) != (y_key in arrays):
            have, lack = (x_key, y_key) if x_key in arrays else (y_key, x_key)
            raise NpzImportError(f"{source}: key '{have}' is given without '{lack}'")
        if x_key in arrays:
            given[name] = (_pixels(arrays[x_key], source, x_key), _labels(arrays[y_key], source, y_key))
    shape = given["train"][0].shape[1:]
    for name, (x_key, y_key) in SPLIT_KEYS.items():
        if name not in given:
            continue
        pixels, labels = given[name]
        if pixels.shape[1:] != shape:
            raise NpzImportError(
                f"{source}: key '{x_key}' has patches of shape {pixels.shape[1:]}, but '{X}' has {shape} (C, H, W)"
            )
        if len(labels) != len(pixels):
            raise NpzImportError(f"{source}: key '{y_key}' has {len(labels)} labels for {len(pixels)} patches")

    bands = _checked_names(arrays.get(BAND_NAMES), source, BAND_NAMES, default=[f"band_{i}" for i in range(shape[0])])
    if len(bands) != shape[0]:
        raise NpzImportError(f"{source}: key '{BAND_NAMES}' has {len(bands)} names for {shape[0]} bands of '{X}'")
    classes, indices = _classes(given, arrays.get(CLASS_NAMES), source)
    metadata = PatchMetadata(bands=tuple(bands), height=shape[1], width=shape[2], classes=tuple(classes))

    pool_pixels, _ = given["train"]
    pool = PatchSplit(patch_ids=np.arange(len(pool_pixels)), pixels=pool_pixels, labels=indices["train"])
    splits = {name: PatchSplit(np.arange(len(p)), p, indices[name]) for name, (p, _) in given.items()}
    splits.update(_carve(pool, classes, source, seed, {"val": val_fraction, "test": test_fraction}, set(given)))
    ordered = {name: splits[name] for name in SPLIT_KEYS}
    for name, split in ordered.items():
        split.patch_ids = np.asarray([f"{name}-{i:06d}" for i in range(len(split))], dtype=object)
    return PatchDataset(metadata, ordered)


def import_npz(
    path: str | os.PathLike,
    *,
    seed: int = DEFAULT_SPLIT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> PatchDataset:
    """Load, validate and split an ``.npz`` archive into a dataset held in memory.

    Args:
        path: The ``.npz`` file.
        seed: Seed of the stratified carving of missing splits.
        val_fraction: Share of ``x`` carved as validation split when ``x_val`` is not given.
        test_fraction: Share of ``x`` carved as test split when ``x_test`` is not given.

    Raises:
        NpzImportError: The file or its arrays are not importable.
    """
    arrays = load_npz(path)
    return dataset_from_arrays(
        arrays, source=str(path), seed=seed, val_fraction=val_fraction, test_fraction=test_fraction
    )


def import_npz_to_folder(
    path: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    seed: int = DEFAULT_SPLIT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    overwrite: bool = False,
) -> PatchDataset:
    """Import an ``.npz`` archive and write it as a dataset folder, atomically (nothing is left on failure).

    Args:
        path: The ``.npz`` file.
        folder: The dataset folder to create.
        seed: Seed of the stratified carving of missing splits.
        val_fraction: Share of ``x`` carved as validation split when ``x_val`` is not given.
        test_fraction: Share of ``x`` carved as test split when ``x_test`` is not given.
        overwrite: Replace an existing dataset folder.

    Returns:
        The dataset that was written.

    Raises:
        NpzImportError: The file or its arrays are not importable.
        FileExistsError: ``folder`` exists and ``overwrite`` is false, or it is not a dataset folder.
        StorageError: ``folder`` is the archive or holds it.
    """
    check_apart(locate(folder), "OUTPUT_FOLDER", locate(path), "archive")
    check_dataset_replaceable(folder, overwrite=overwrite)  # before reading a possibly large archive
    dataset = import_npz(path, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    write_dataset(folder, dataset, overwrite=overwrite)
    return dataset


def _pixels(x: np.ndarray, source: str, key: str) -> np.ndarray:
    """Check one pixel array (N, C, H, W) and return it as contiguous float32."""
    if x.dtype.kind not in "iuf":
        raise NpzImportError(f"{source}: key '{key}' must hold real numbers, got dtype {x.dtype}")
    if x.ndim != 4:
        raise NpzImportError(f"{source}: key '{key}' must be 4-D (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    if n == 0 or c == 0:
        raise NpzImportError(f"{source}: key '{key}' has no {'patches' if n == 0 else 'bands'} (shape {x.shape})")
    if h < MIN_PATCH_SIZE or w < MIN_PATCH_SIZE:
        raise NpzImportError(f"{source}: key '{key}' has {h}x{w} patches; height and width must be >= {MIN_PATCH_SIZE}")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, reported below
        pixels = np.ascontiguousarray(x, dtype=PIXEL_DTYPE)
    finite = np.isfinite(pixels).reshape(n, -1).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise NpzImportError(
            f"{source}: key '{key}' row {row} holds a non-finite value (NaN, inf, or beyond float32's range)"
        )
    return pixels


def _labels(y: np.ndarray, source: str, key: str) -> np.ndarray:
    """Check one label array and return it as int64 or as Python strings (object)."""
    if y.ndim != 1:
        raise NpzImportError(f"{source}: key '{key}' must be 1-D (one label per patch), got shape {y.shape}")
    if y.dtype.kind in "iu":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        whole = np.isfinite(y) & (y == np.round(y))
        if not whole.all():
            row = int(np.flatnonzero(~whole)[0])
            raise NpzImportError(
                f"{source}: key '{key}' row {row} is {plain(y[row])!r}, not a whole-number or string label"
            )
        return y.astype(np.int64)
    if y.dtype.kind in "US":
        return np.asarray(_strings(y, source, key), dtype=object)
    raise NpzImportError(f"{source}: key '{key}' must hold integer or string labels, got dtype {y.dtype}")


def _strings(values: np.ndarray, source: str, key: str) -> list[str]:
    if values.dtype.kind == "U":
        return [str(v) for v in values]
    try:
        return [bytes(v).decode() for v in values]
    except UnicodeDecodeError:
        raise NpzImportError(f"{source}: key '{key}' holds bytes that are not UTF-8 text") from None


def _checked_names(values: np.ndarray | None, source: str, key: str, default: list[str]) -> list[str]:
    """Check a list of names (bands or classes): 1-D, strings, non-empty, unique."""
    if values is None:
        return default
    if values.ndim != 1 or values.dtype.kind not in "US":
        raise NpzImportError(f"{source}: key '{key}' must be a 1-D array of strings, got {values.dtype} {values.shape}")
    names = _strings(values, source, key)
    if any(not name.strip() for name in names):
        raise NpzImportError(f"{source}: key '{key}' holds an empty name")
    if len(set(names)) != len(names):
        dup = next(name for name in names if names.count(name) > 1)
        raise NpzImportError(f"{source}: key '{key}' repeats the name {dup!r}")
    return names


def _classes(
    given: dict[str, tuple[np.ndarray, np.ndarray]], class_names: np.ndarray | None, source: str
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Decide the class names and turn every split's labels into class indices."""
    kinds = {name: labels.dtype == object for name, (_, labels) in given.items()}
    if len(set(kinds.values())) > 1:
        raise NpzImportError(f"{source}: keys {', '.join(_y_keys(given))} mix integer and string labels")
    strings = kinds["train"]
    names = _checked_names(class_names, source, CLASS_NAMES, default=[]) if class_names is not None else None
    all_labels = np.concatenate([labels for _, labels in given.values()])
    if names is None:
        # Class names are the sorted distinct labels: "0".."k-1" for integer labels 0..k-1.
        values = sorted(set(all_labels.tolist()))
        names = [str(v) for v in values]
        lookup = {v: i for i, v in enumerate(values)}
        if any(not name.strip() for name in names):
            raise NpzImportError(f"{source}: keys {', '.join(_y_keys(given))} hold an empty string label")
    elif strings:
        lookup = {v: i for i, v in enumerate(names)}
    else:
        lookup = {i: i for i in range(len(names))}
    if len(names) < MIN_CLASSES:
        key = CLASS_NAMES if class_names is not None else Y
        raise NpzImportError(f"{source}: key '{key}' gives {len(names)} class(es); at least {MIN_CLASSES} are needed")
    indices = {}
    for name, (_, labels) in given.items():
        y_key = SPLIT_KEYS[name][1]
        out = np.empty(len(labels), dtype=np.int64)
        for row, label in enumerate(labels.tolist()):
            if label not in lookup:
                what = f"not in '{CLASS_NAMES}'" if strings else f"outside 0..{len(names) - 1} of '{CLASS_NAMES}'"
                raise NpzImportError(f"{source}: key '{y_key}' row {row}: label {label!r} is {what}")
            out[row] = lookup[label]
        indices[name] = out
    if len(np.unique(indices["train"])) < MIN_CLASSES:
        raise NpzImportError(f"{source}: key '{Y}' holds a single class; at least {MIN_CLASSES} are needed")
    return names, indices


def _y_keys(given: Mapping[str, object]) -> list[str]:
    return [f"'{SPLIT_KEYS[name][1]}'" for name in given]


def _carve(
    pool: PatchSplit,
    classes: list[str],
    source: str,
    seed: int,
    shares: dict[str, float],
    given: set[str],
) -> dict[str, PatchSplit]:
    """Carve the splits not given from the pool (``x``/``y``), stratified by class, seeded."""
    missing = [name for name in ("val", "test") if name not in given]
    if not missing:
        return {"train": pool}
    for name in missing:
        share = shares[name]
        if not 0 < share < 1:
            raise NpzImportError(f"{source}: {name} fraction must be between 0 and 1, got {share}")
    fractions = [1 - sum(shares[n] for n in missing), *(shares[n] for n in missing)]
    if fractions[0] <= 0:
        raise NpzImportError(f"{source}: {' + '.join(f'{n} fraction' for n in missing)} must be below 1")
    part_names = ["train", *missing]
    counts = np.bincount(pool.labels, minlength=len(classes))
    for cls, count in enumerate(counts.tolist()):
        # A class named in class_names but absent from the data is allowed (a shared class list); a present one
        # must reach every part.
        if count and min(split_counts(count, fractions)) == 0:
            need = _smallest_stratifiable(fractions)
            raise NpzImportError(
                f"{source}: key '{Y}' has {count} patch(es) of class {classes[cls]!r}, too few to stratify into "
                f"{'/'.join(part_names)} (fractions {', '.join(f'{f:g}' for f in fractions)}); "
                f"it needs at least {need}"
            )
    return carve(pool, dict(zip(part_names, fractions, strict=True)), seed)


def _smallest_stratifiable(fractions: list[float]) -> int:
    """Smallest class size from which every part, and every part of any larger class, gets a member."""
    # A part of expected size >= 1.5 never rounds to zero, so sizes beyond 1.5 / min(fractions) always work.
    top = int(np.ceil(1.5 / min(fractions))) + 1
    failing = [count for count in range(1, top + 1) if min(split_counts(count, fractions)) == 0]
    return max(failing, default=0) + 1
