"""The Parquet patch format: the one place that names its columns, dtypes and metadata keys.

A dataset is a folder with ``train.parquet``, ``val.parquet`` and ``test.parquet``. Each file holds one row per
patch (``patch_id`` string, ``label`` string, ``pixels`` as ``fixed_size_list<float32>[C*H*W]`` in band, row,
column order) and a file-metadata key ``patches`` with JSON describing bands, height, width and classes. Plain
``pyarrow`` or ``pandas`` read it. This module holds the names, the metadata and its JSON, the errors, and a split
and a dataset as held in memory; :mod:`data.reading` reads and validates a file, :mod:`data.writing` writes one,
:mod:`data.folder` reads a dataset folder and :mod:`data.splitting` carves splits.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from data.messages import brief_list

PATCH_ID = "patch_id"
LABEL = "label"
PIXELS = "pixels"
METADATA_KEY = "patches"
SPLITS = ("train", "val", "test")
PARQUET_SUFFIX = ".parquet"
# Everything a dataset folder holds; only a folder of these is ever replaced.
DATASET_FILES = tuple(f"{name}{PARQUET_SUFFIX}" for name in SPLITS)
PIXEL_DTYPE = np.float32
MIN_PATCH_SIZE = 3  # smallest patch height and width: the model's first 3x3 convolution must fit

# Names shown per list in a dataset's printed summary (a list of thousands of bands would flood the terminal).
SUMMARY_LISTED = 20


class PatchFormatError(ValueError):
    """A dataset file or folder does not follow the patch format; the message names where and what."""


class PatchRowError(PatchFormatError):
    """One row of a file breaks the format.

    Args:
        path: The file (or what the rows came from).
        row: The row, counted from the first row of the table that was checked.
        problem: What is wrong with it, without the file and row.
    """

    def __init__(self, path: str | os.PathLike, row: int, problem: str) -> None:
        self.path, self.row, self.problem = str(path), int(row), problem
        super().__init__(f"{path}: row {row}: {problem}")

    def __reduce__(self) -> tuple:
        # Rebuilt from its fields, so that it crosses process boundaries (Ray tasks) with them.
        return type(self), (self.path, self.row, self.problem)


@dataclass(frozen=True)
class PatchFileInfo:
    """What a patch file's footer says, read without its rows.

    Attributes:
        metadata: The validated ``patches`` metadata.
        num_rows: Rows in the file.
        labelled: Whether the file has a ``label`` column.
    """

    metadata: PatchMetadata
    num_rows: int
    labelled: bool


@dataclass(frozen=True)
class PatchMetadata:
    """What a dataset's pixels mean: band names, patch size and class names (in index order).

    Attributes:
        bands: Band names, one per channel, in channel order.
        height: Patch height in pixels.
        width: Patch width in pixels.
        classes: Class names; a label's index in this tuple is its integer class.
        units: Optional unit per band (for example ``"DN"`` or ``"dB"``).
        nodata: Optional value that marks missing pixels in the source imagery.
    """

    bands: tuple[str, ...]
    height: int
    width: int
    classes: tuple[str, ...]
    units: tuple[str, ...] | None = None
    nodata: float | None = None

    @property
    def num_bands(self) -> int:
        """Number of channels C."""
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def values_per_patch(self) -> int:
        """Length of one ``pixels`` list: C * H * W."""
        return self.num_bands * self.height * self.width

    def to_json(self) -> str:
        """Serialise to the JSON stored under the ``patches`` file-metadata key."""
        body: dict = {
            "bands": list(self.bands),
            "height": int(self.height),
            "width": int(self.width),
            "classes": list(self.classes),
        }
        if self.units is not None:
            body["units"] = list(self.units)
        if self.nodata is not None:
            body["nodata"] = float(self.nodata)
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "metadata") -> PatchMetadata:
        """Parse and validate the ``patches`` metadata JSON.

        Args:
            text: The JSON text.
            where: Name of the file it came from, used in error messages.

        Raises:
            PatchFormatError: The JSON is malformed or describes an impossible dataset.
        """
        try:
            body = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PatchFormatError(f"{where}: metadata key '{METADATA_KEY}' is not valid JSON ({err})") from None
        if not isinstance(body, dict):
            raise PatchFormatError(f"{where}: metadata key '{METADATA_KEY}' must be a JSON object")
        missing = [key for key in ("bands", "height", "width", "classes") if key not in body]
        if missing:
            raise PatchFormatError(f"{where}: metadata '{METADATA_KEY}' lacks {', '.join(missing)}")
        bands, classes = body["bands"], body["classes"]
        for name, values in (("bands", bands), ("classes", classes)):
            if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
                raise PatchFormatError(f"{where}: metadata '{name}' must be a non-empty list of names")
            if len(set(values)) != len(values):
                raise PatchFormatError(f"{where}: metadata '{name}' has duplicate names")
        for name in ("height", "width"):
            value = body[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PatchFormatError(f"{where}: metadata '{name}' must be a positive integer, got {value!r}")
        if body["height"] < MIN_PATCH_SIZE or body["width"] < MIN_PATCH_SIZE:
            raise PatchFormatError(
                f"{where}: has {body['height']}x{body['width']} patches; height and width must be >= {MIN_PATCH_SIZE} "
                "for the model's first 3x3 convolution"
            )
        units = body.get("units")
        if units is not None and (
            not isinstance(units, list) or len(units) != len(bands) or not all(isinstance(u, str) for u in units)
        ):
            raise PatchFormatError(f"{where}: metadata 'units' must list one unit name per band ({len(bands)})")
        nodata = body.get("nodata")
        if nodata is not None and (
            not isinstance(nodata, (int, float)) or isinstance(nodata, bool) or not math.isfinite(nodata)
        ):
            raise PatchFormatError(f"{where}: metadata 'nodata' must be a finite number, got {nodata!r}")
        return cls(
            bands=tuple(bands),
            height=body["height"],
            width=body["width"],
            classes=tuple(classes),
            units=tuple(units) if units is not None else None,
            nodata=float(nodata) if nodata is not None else None,
        )


@dataclass
class PatchSplit:
    """One split held in memory.

    Attributes:
        patch_ids: Unique patch identifiers, shape (N,).
        pixels: Pixel values, shape (N, C, H, W), float32.
        labels: Integer class indices, shape (N,), or None for unlabelled data.
    """

    patch_ids: np.ndarray
    pixels: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.patch_ids)

    def take(self, indices: np.ndarray) -> PatchSplit:
        """Return the rows at ``indices`` as a new split."""
        return PatchSplit(
            patch_ids=self.patch_ids[indices],
            pixels=self.pixels[indices],
            labels=None if self.labels is None else self.labels[indices],
        )


@dataclass
class PatchDataset:
    """A whole dataset: its metadata and its train, val and test splits."""

    metadata: PatchMetadata
    splits: dict[str, PatchSplit] = field(default_factory=dict)

    @property
    def train(self) -> PatchSplit:
        """The training split."""
        return self.splits["train"]

    @property
    def val(self) -> PatchSplit:
        """The validation split."""
        return self.splits["val"]

    @property
    def test(self) -> PatchSplit:
        """The test split."""
        return self.splits["test"]

    def summary_lines(self) -> list[str]:
        """Indented lines describing the splits, bands, patch size and classes, for the entry scripts to print."""
        meta = self.metadata
        lines = [f"  {name}: {len(split)} patches" for name, split in self.splits.items()]
        lines.append(f"  bands ({meta.num_bands}): {brief_list(meta.bands, SUMMARY_LISTED)}")
        lines.append(f"  patch size: {meta.height} x {meta.width}")
        lines.append(f"  classes ({meta.num_classes}): {brief_list(meta.classes, SUMMARY_LISTED)}")
        return lines


# Names that workflows/serving/predict.py still imports from here, and the module each one now lives in; resolved on
# first use (PEP 562), since those modules import this one. An entry goes once predict.py imports it from its module.
