"""The exported model bundle: its format, the exporter from a training checkpoint, and the validating loader.

A bundle is a folder with two files. ``weights.pt`` holds only the model's ``state_dict`` (tensors, so it loads with
``torch.load(..., weights_only=True)``); ``bundle.json`` holds everything needed to use it: the format version, the
``model_config``, the training split's ``band_stats``, the data ``metadata`` (bands, patch size, classes, units), the
``train_config``, optional ``metrics``, the ``source_checkpoint`` and its ``epoch``. :func:`load_bundle` checks all of
it and :func:`check_compatible` checks input data against it; both raise :class:`BundleError` with one line naming
the file and what is wrong.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.atomic import check_replaceable, write_folder_atomic
from data.format import PatchFormatError, PatchMetadata
from data.messages import brief_list, one_line, torch_load_failure
from data.pipeline import BandStats
from resnet import ResNet, ResNetConfig
from workflows.evaluate import predict_probabilities
from workflows.loop import load_checkpoint

WEIGHTS_FILE = "weights.pt"
INFO_FILE = "bundle.json"
BUNDLE_FILES = (WEIGHTS_FILE, INFO_FILE)  # everything a bundle folder holds; only such a folder is replaced
BUNDLE_FORMAT = "satresnet-model-bundle"
BUNDLE_VERSION = 1
REQUIRED_KEYS = ("format", "version", "model_config", "band_stats", "metadata")


class BundleError(ValueError):
    """A model bundle is missing, damaged or inconsistent, or data does not match it; the message says where."""


@dataclass(frozen=True)
class Bundle:
    """A loaded, validated model bundle.

    Attributes:
        model: The network, in eval mode, on the CPU.
        model_config: Its configuration.
        band_stats: Per-band statistics of the training split, applied to raw pixels before the model.
        metadata: What the model's input means: band names, patch size and class names.
        info: The whole ``bundle.json`` body (train config, metrics, source checkpoint, ...).
    """

    model: ResNet
    model_config: ResNetConfig
    band_stats: BandStats
    metadata: PatchMetadata
    info: dict[str, Any]

    def predict_probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (N, K), for raw (unnormalised) pixels of shape (N, C, H, W)."""
        return predict_probabilities(self.model, pixels, self.band_stats)


def export_bundle(
    checkpoint_dir: str | os.PathLike,
    bundle_dir: str | os.PathLike,
    *,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the bundle of a training checkpoint atomically (a temporary sibling folder, validated, then renamed).

    Args:
        checkpoint_dir: A checkpoint folder written by ``workflows.loop.save_checkpoint``.
        bundle_dir: The bundle folder to create.
        extra: JSON-serialisable values stored in ``bundle.json``; a ``metrics`` key (for example test metrics)
            replaces the checkpoint's own metrics.
        overwrite: Replace an existing bundle folder (only one that holds nothing but bundle files).

    Returns:
        The bundle folder.

    Raises:
        BundleError: The checkpoint is unreadable or does not describe a valid bundle.
        FileExistsError: ``bundle_dir`` exists and ``overwrite`` is false, or it is not a bundle folder.
    """
    bundle_dir = Path(bundle_dir)
    check_replaceable(bundle_dir, BUNDLE_FILES, "bundle", overwrite=overwrite)
    try:
        state = load_checkpoint(checkpoint_dir)
        metadata = PatchMetadata.from_json(state["metadata"], where=f"{checkpoint_dir} metadata")
    except ValueError as err:
        raise BundleError(one_line(err)) from None
    info: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "model_config": dict(state["model_config"]),
        "band_stats": dict(state["band_stats"]),
        "metadata": json.loads(metadata.to_json()),
        "train_config": state.get("train_config"),
        "metrics": state.get("metrics"),
        "source_checkpoint": str(Path(checkpoint_dir).resolve()),
        "epoch": int(state["epoch"]),
    }
    info.update(extra or {})
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in state["model"].items()}

    with write_folder_atomic(bundle_dir, BUNDLE_FILES, "bundle", overwrite=overwrite) as tmp:
        torch.save(weights, tmp / WEIGHTS_FILE)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        load_bundle(tmp)  # never publish a bundle that its own loader rejects
    return bundle_dir


def load_bundle(bundle_dir: str | os.PathLike) -> Bundle:
    """Read and validate a model bundle.

    Checks that both files exist, that ``bundle.json`` parses and has the required keys, that the weights load with
    ``weights_only=True`` and fit the network built from ``model_config`` exactly (names and shapes), and that the
    config, band statistics and metadata agree on bands, patch size and classes.

    Raises:
        BundleError: Anything is missing or wrong; the message names the file and the problem.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: no such model bundle folder (expected {WEIGHTS_FILE} and {INFO_FILE})")
    info_path, weights_path = bundle_dir / INFO_FILE, bundle_dir / WEIGHTS_FILE
    for path in (info_path, weights_path):
        if not path.is_file():
            raise BundleError(f"{path}: missing from the model bundle; re-export it with workflows.bundle")

    info = _read_info(info_path)
    metadata = _parse(info_path, info, "metadata", lambda v: PatchMetadata.from_json(json.dumps(v), str(info_path)))
    model_config = _parse(info_path, info, "model_config", ResNetConfig.from_dict)
    band_stats = _parse(info_path, info, "band_stats", _band_stats)
    _check_consistent(info_path, model_config, band_stats, metadata)

    model = ResNet(model_config)
    model.load_state_dict(_read_weights(weights_path, model), strict=True)
    return Bundle(model=model.eval(), model_config=model_config, band_stats=band_stats, metadata=metadata, info=info)


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
    if info["version"] != BUNDLE_VERSION:
        raise BundleError(f"{path}: bundle version {info['version']!r}, this code reads version {BUNDLE_VERSION}")
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
