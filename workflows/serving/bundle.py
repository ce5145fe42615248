"""The exported model bundle: its format, the exporter from training checkpoints, and the validating loader.

A bundle is a folder holding ``bundle.json`` and one weights file per ensemble member: ``weights.pt`` for the best
member (so a one-model bundle is laid out as in version 1), ``weights-1.pt``, ``weights-2.pt``, ... for the others.
Each holds only a model's ``state_dict`` (tensors, so it loads with ``torch.load(..., weights_only=True)``).
``bundle.json`` holds everything needed to use them: the format version, the ``model_config``, the training split's
``band_stats``, the data ``metadata`` (bands, patch size, classes, units), the ``train_config``, optional ``metrics``,
the best member's ``source_checkpoint`` and ``epoch``, and (from version 2) the ``members`` (file, trial id, final
validation metric, epoch, source checkpoint), the ``tta_augment`` (the augmentation group the members were trained
with, whose views test-time augmentation averages over; version 2 called it ``tta_views``) and the default
``prediction`` mode (``ensemble`` and ``tta``, both on when exported). A version-1 bundle loads as one member whose
default is its plain prediction. :func:`load_bundle` checks all of it and
:func:`check_compatible` checks input data against it; both raise :class:`BundleError` with one line naming the file
and what is wrong.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.atomic import check_replaceable, write_folder_atomic
from data.format import PatchFormatError, PatchMetadata
from data.messages import brief_list, one_line, torch_load_failure
from data.pipeline import BandStats
from resnet import ResNet, ResNetConfig
from workflows.serving.evaluate import NO_TTA, ensemble_probabilities, read_members, tta_views

WEIGHTS_FILE = "weights.pt"  # the best member's weights; the only weights file of a version-1 bundle
INFO_FILE = "bundle.json"
BUNDLE_DIR = "bundle"  # a results folder's bundle (train.py's and tune.py's)
# Weights file names of the members after the best one: weights-1.pt, weights-2.pt, ...
MEMBER_FILE_PATTERN = re.compile(r"weights(?:-[1-9][0-9]*)?\.pt")
BUNDLE_FORMAT = "satresnet-model-bundle"
BUNDLE_VERSION = 3
READABLE_VERSIONS = (1, 2, BUNDLE_VERSION)  # version 1: weights.pt alone, no members, TTA group or prediction mode
REQUIRED_KEYS = ("format", "version", "model_config", "band_stats", "metadata")
# The augmentation group whose views TTA averages over; version 2 named the key after the views.
TTA_KEY = "tta_augment"
ENSEMBLE_KEYS = ("members", "prediction")  # required from version 2, beside the TTA group


class BundleError(ValueError):
    """A model bundle is missing, damaged or inconsistent, or data does not match it; the message says where."""


@dataclass(frozen=True)
class PredictionMode:
    """How a bundle predicts by default.

    Attributes:
        ensemble: Average all members' probabilities (off: the best member alone).
        tta: Average over the test-time augmentation views (off: the patches as they are).
    """

    ensemble: bool = True
    tta: bool = True

    def to_dict(self) -> dict[str, bool]:
        """Plain dict, for ``bundle.json``."""
        return asdict(self)


# What a version-1 bundle did: one model, the patches as they are.
LEGACY_MODE = PredictionMode(ensemble=True, tta=False)


def member_file(index: int) -> str:
    """The weights file name of the member at ``index`` (0 is the best)."""
    return WEIGHTS_FILE if index == 0 else f"weights-{index}.pt"


def bundle_files(bundle_dir: str | os.PathLike, members: int) -> set[str]:
    """The files a bundle folder of ``members`` members may hold: its own and any member file already there."""
    folder = Path(bundle_dir)
    present = [entry.name for entry in folder.iterdir()] if folder.is_dir() else []
    return {INFO_FILE, *(member_file(i) for i in range(members)), *filter(MEMBER_FILE_PATTERN.fullmatch, present)}


@dataclass(frozen=True)
class Bundle:
    """A loaded, validated model bundle.

    Attributes:
        models: The members' networks, best first, in eval mode, on the CPU.
        model_config: Their configuration.
        band_stats: Per-band statistics of the training split, applied to raw pixels before the models.
        metadata: What the models' input means: band names, patch size and class names.
        info: The whole ``bundle.json`` body (train config, members, metrics, source checkpoint, ...).
        views: The D4 elements test-time augmentation averages over (see :func:`data.pipeline.d4_transform`).
        mode: The default prediction mode.
    """

    models: tuple[ResNet, ...]
    model_config: ResNetConfig
    band_stats: BandStats
    metadata: PatchMetadata
    info: dict[str, Any]
    views: np.ndarray
    mode: PredictionMode

    @property
    def model(self) -> ResNet:
        """The best member's network."""
        return self.models[0]

    def predict_probabilities(
        self, pixels: np.ndarray, ensemble: bool | None = None, tta: bool | None = None
    ) -> np.ndarray:
        """Class probabilities, shape (N, K), for raw (unnormalised) pixels of shape (N, C, H, W).

        Args:
            pixels: The patches.
            ensemble: Average all members (False: the best alone); None: the bundle's default mode.
            tta: Average over the TTA views (False: the patches as they are); None: the bundle's default mode.
        """
        mode = self.prediction_mode(ensemble, tta)
        models = self.models if mode.ensemble else self.models[:1]
        return ensemble_probabilities(models, pixels, self.band_stats, self.views if mode.tta else NO_TTA)

    def prediction_mode(self, ensemble: bool | None = None, tta: bool | None = None) -> PredictionMode:
        """The mode ``ensemble`` and ``tta`` ask for, the bundle's default mode where they are None."""
        return PredictionMode(
            ensemble=self.mode.ensemble if ensemble is None else ensemble, tta=self.mode.tta if tta is None else tta
        )


def export_bundle(
    checkpoint_dirs: str | os.PathLike | Sequence[str | os.PathLike],
    bundle_dir: str | os.PathLike,
    *,
    members: Sequence[Mapping[str, Any]] | None = None,
    mode: PredictionMode = PredictionMode(),
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the bundle of one or more training checkpoints atomically (a temporary sibling, validated, renamed).

    Args:
        checkpoint_dirs: A checkpoint folder (:func:`workflows.training.checkpoint.save_checkpoint`), or several
            (an ensemble's members, the best first) that share network, statistics and metadata.
        bundle_dir: The bundle folder to create.
        members: JSON-serialisable values recorded with each member (for example its trial id and final
            validation metric), one mapping per checkpoint.
        mode: The default prediction mode recorded in the bundle.
        extra: JSON-serialisable values stored in ``bundle.json``; a ``metrics`` key (for example test metrics)
            replaces the checkpoint's own metrics.
        overwrite: Replace an existing bundle folder (only one that holds nothing but bundle files).

    Returns:
        The bundle folder.

    Raises:
        BundleError: A checkpoint is unreadable, the checkpoints disagree, or they do not describe a valid bundle.
        FileExistsError: ``bundle_dir`` exists and ``overwrite`` is false, or it is not a bundle folder.
    """
    dirs = [checkpoint_dirs] if isinstance(checkpoint_dirs, (str, os.PathLike)) else list(checkpoint_dirs)
    members = [{}] * len(dirs) if members is None else list(members)
    if len(members) != len(dirs):
        raise BundleError(f"{len(members)} member records for {len(dirs)} checkpoints; pass one per checkpoint")
    bundle_dir = Path(bundle_dir)
    owned = bundle_files(bundle_dir, len(dirs))
    check_replaceable(bundle_dir, owned, "bundle", overwrite=overwrite)
    try:
        states = read_members(dirs)
        metadata = PatchMetadata.from_json(states[0]["metadata"], where=f"{dirs[0]} metadata")
        augment, _ = tta_views(states[0].get("train_config"), metadata)
    except ValueError as err:
        raise BundleError(one_line(err)) from None
    records = [
        {
            "file": member_file(i),
            **dict(member),
            "epoch": int(state["epoch"]),
            "source_checkpoint": str(Path(directory).resolve()),
        }
        for i, (directory, state, member) in enumerate(zip(dirs, states, members, strict=True))
    ]
    best = states[0]
    info: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "model_config": dict(best["model_config"]),
        "band_stats": dict(best["band_stats"]),
        "metadata": json.loads(metadata.to_json()),
        "train_config": best.get("train_config"),
        "metrics": best.get("metrics"),
        "source_checkpoint": records[0]["source_checkpoint"],
        "epoch": records[0]["epoch"],
        "members": records,
        TTA_KEY: augment,
        "prediction": mode.to_dict(),
    }
    info.update(extra or {})

    with write_folder_atomic(bundle_dir, owned, "bundle", overwrite=overwrite) as tmp:
        for record, state in zip(records, states, strict=True):
            weights = {name: tensor.detach().cpu().contiguous() for name, tensor in state["model"].items()}
            torch.save(weights, tmp / record["file"])
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        load_bundle(tmp)  # never publish a bundle that its own loader rejects
    return bundle_dir


def load_bundle(bundle_dir: str | os.PathLike) -> Bundle:
    """Read and validate a model bundle.

    Checks that ``bundle.json`` exists, parses and has the required keys, that every member's weights file exists,
    loads with ``weights_only=True`` and fits the network built from ``model_config`` exactly (names and shapes), that
    the config, band statistics and metadata agree on bands, patch size and classes, and that the members, TTA views
    and prediction mode are well formed.

    Raises:
        BundleError: Anything is missing or wrong; the message names the file and the problem.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: no such model bundle folder (expected {WEIGHTS_FILE} and {INFO_FILE})")
    info_path = bundle_dir / INFO_FILE
    if not info_path.is_file():
        raise BundleError(f"{info_path}: missing from the model bundle; re-export it with workflows.serving.bundle")

    info = _read_info(info_path)
    metadata = _parse(info_path, info, "metadata", lambda v: PatchMetadata.from_json(json.dumps(v), str(info_path)))
    model_config = _parse(info_path, info, "model_config", ResNetConfig.from_dict)
    band_stats = _parse(info_path, info, "band_stats", _band_stats)
    _check_consistent(info_path, model_config, band_stats, metadata)
    files, views, mode = _ensemble(info_path, info, metadata)

    models = []
    for name in files:
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(f"{path}: missing from the model bundle; re-export it with workflows.serving.bundle")
        model = ResNet(model_config)
        model.load_state_dict(_read_weights(path, model), strict=True)
        models.append(model.eval())
    return Bundle(tuple(models), model_config, band_stats, metadata, info, views, mode)


def _ensemble(
    path: Path, info: dict[str, Any], metadata: PatchMetadata
) -> tuple[list[str], np.ndarray, PredictionMode]:
    """The members' weights files, the TTA views and the default mode of a bundle; version 1 has one member."""
    if info["version"] == 1:
        return [WEIGHTS_FILE], _views(path, info.get("train_config"), metadata), LEGACY_MODE
    members = info["members"]
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
        raise BundleError(f"{path}: 'members' must be a non-empty list of JSON objects, one per weights file")
    files = [member.get("file") for member in members]
    for index, name in enumerate(files):
        if not isinstance(name, str) or not MEMBER_FILE_PATTERN.fullmatch(name):
            raise BundleError(
                f"{path}: member {index} names weights file {name!r}; expected a name of this folder such as "
                f"{member_file(0)} or {member_file(1)}"
            )
    if len(set(files)) != len(files):
        raise BundleError(f"{path}: members share a weights file ({brief_list(files)}); each needs its own")
    key = _tta_key(info["version"])
    views = _views(path, {"augment": info[key]}, metadata, key)
    mode = info["prediction"]
    if not isinstance(mode, dict) or not all(isinstance(mode.get(key), bool) for key in ("ensemble", "tta")):
        raise BundleError(f"{path}: 'prediction' must be an object with true/false 'ensemble' and 'tta'")
    return files, views, PredictionMode(ensemble=mode["ensemble"], tta=mode["tta"])


def _tta_key(version: int) -> str:
    """The key of the TTA group in a bundle of this version (2 or later)."""
    return "tta_views" if version == 2 else TTA_KEY


def _views(path: Path, train_config: Any, metadata: PatchMetadata, key: str = "train_config") -> np.ndarray:
    """The TTA views of the augmentation a training config names (its default where it names none)."""
    try:
        return tta_views(train_config, metadata)[1]
    except (ValueError, TypeError, AttributeError) as err:
        raise BundleError(f"{path}: {key!r} is invalid ({one_line(err)})") from None


def _read_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: not valid JSON ({one_line(err)})") from None
    if not isinstance(info, dict):
        raise BundleError(f"{path}: must hold a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in info]
    if missing:
        raise BundleError(f"{path}: lacks {', '.join(missing)}")
    if info["format"] != BUNDLE_FORMAT:
        raise BundleError(f"{path}: format is {info['format']!r}, expected {BUNDLE_FORMAT!r}")
    if info["version"] not in READABLE_VERSIONS:
        raise BundleError(
            f"{path}: bundle version {info['version']!r}, this code reads versions {brief_list(READABLE_VERSIONS)}"
        )
    needed = (*ENSEMBLE_KEYS, _tta_key(info["version"])) if info["version"] >= 2 else ()
    missing = [key for key in needed if key not in info]
    if missing:
        raise BundleError(f"{path}: lacks {', '.join(missing)}")
    return info


def _parse(path: Path, info: dict[str, Any], key: str, build: Callable[[Any], Any]) -> Any:
    value = info[key]
    if not isinstance(value, dict):
        raise BundleError(f"{path}: '{key}' must be a JSON object, got {type(value).__name__}")
    try:
        return build(value)
    except BundleError:
        raise
    except PatchFormatError as err:
        raise BundleError(f"{path}: '{key}' is invalid: {one_line(err).removeprefix(f'{path}: ')}") from None
    except (ValueError, TypeError, KeyError) as err:
        raise BundleError(f"{path}: '{key}' is invalid ({one_line(err)})") from None


def _band_stats(body: dict[str, Any]) -> BandStats:
    for key in ("mean", "std"):
        values = body.get(key)
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            raise ValueError(f"'{key}' must be a list of finite numbers")
    stats = BandStats.from_dict(body)
    if not (stats.std > 0).all():
        raise ValueError("'std' must be positive for every band")
    return stats


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_consistent(path: Path, config: ResNetConfig, stats: BandStats, metadata: PatchMetadata) -> None:
    problems = []
    pairs = (
        ("in_channels", config.in_channels, "bands", metadata.num_bands),
        ("height", config.height, "height", metadata.height),
        ("width", config.width, "width", metadata.width),
        ("num_classes", config.num_classes, "classes", metadata.num_classes),
    )
    for config_name, config_value, metadata_name, metadata_value in pairs:
        if config_value != metadata_value:
            problems.append(
                f"model_config.{config_name} is {config_value} but metadata has {metadata_value} {metadata_name}"
            )
    for key in ("mean", "std"):
        count = len(getattr(stats, key))
        if count != metadata.num_bands:
            problems.append(f"band_stats.{key} has {count} values but metadata has {metadata.num_bands} bands")
    if problems:
        raise BundleError(f"{path}: inconsistent: {'; '.join(problems)}")


def _read_weights(path: Path, model: ResNet) -> dict[str, torch.Tensor]:
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to unpickle means the file is unusable
        raise BundleError(torch_load_failure(path, err, "weights file")) from None
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise BundleError(f"{path}: must hold a state_dict (a dict of parameter names to tensors)")
    expected = model.state_dict()
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    if missing or unexpected:
        parts = [f"missing {brief_list(missing, 3)}"] if missing else []
        parts += [f"unexpected {brief_list(unexpected, 3)}"] if unexpected else []
        raise BundleError(f"{path}: weights do not fit the model_config's network: {'; '.join(parts)}")
    for name, tensor in expected.items():
        if weights[name].shape != tensor.shape:
            raise BundleError(
                f"{path}: weight {name!r} has shape {tuple(weights[name].shape)}, the model_config's network needs "
                f"{tuple(tensor.shape)}"
            )
        if weights[name].is_floating_point() and not torch.isfinite(weights[name]).all():
            raise BundleError(f"{path}: weight {name!r} holds a non-finite value (NaN or inf)")
    return weights


def check_compatible(
    bundle_metadata: PatchMetadata, data_metadata: PatchMetadata, where: str, *, labelled: bool = True
) -> None:
    """Check that input data fits a model bundle: same bands (names, count and order), height and width.

    Class names may differ only for unlabelled data (the model predicts its own classes); with labels they must
    match, or accuracy would compare different things.

    Args:
        bundle_metadata: The bundle's metadata.
        data_metadata: The input data's metadata.
        where: Name of the input (a file or folder), used in the message.
        labelled: Whether the input carries labels.

    Raises:
        BundleError: One line naming each difference.
    """
    model, data = bundle_metadata, data_metadata
    problems = []
    if data.bands != model.bands:
        if data.num_bands != model.num_bands:
            problems.append(
                f"{data.num_bands} bands ({brief_list(data.bands)}) where the model expects {model.num_bands} "
                f"({brief_list(model.bands)})"
            )
        else:
            index = next(i for i, (a, b) in enumerate(zip(data.bands, model.bands, strict=True)) if a != b)
            problems.append(f"band {index} is {data.bands[index]!r} where the model expects {model.bands[index]!r}")
    elif data.units is not None and model.units is not None and data.units != model.units:
        index = next(i for i, (a, b) in enumerate(zip(data.units, model.units, strict=True)) if a != b)
        problems.append(
            f"band {data.bands[index]!r} is in {data.units[index]!r} where the model expects {model.units[index]!r}"
        )
    for name in ("height", "width"):
        if getattr(data, name) != getattr(model, name):
            problems.append(f"{name} {getattr(data, name)} where the model expects {getattr(model, name)}")
    if labelled and data.classes != model.classes:
        problems.append(
            f"classes ({brief_list(data.classes)}) differ from the model's ({brief_list(model.classes)}); "
            "drop the label column to predict anyway"
        )
    if problems:
        raise BundleError(f"{where}: does not match the model bundle: {'; '.join(problems)}")
