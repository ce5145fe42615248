"""Deterministic synthetic land-cover patches: the generator of the embedded default dataset and of the presets.

Each patch is built the way a real one forms: per-pixel abundances of surface materials in a class-specific texture
(:mod:`data.textures`), mixed linearly into reflectance and, in linear power, into radar backscatter, then the
nuisances of real imagery (:mod:`data.landcover` holds every definition and strength): per-patch material
variability, mixed pixels where a neighbouring class crosses the patch, illumination, haze, coarser 20 m and 60 m
bands, the occasional cloud, radar speckle and sensor noise. No model reaches 100%.

Everything is vectorised numpy driven by seeded generators: the same counts and seed give the same arrays on any
machine (values are rounded to whole digital numbers and to 0.01 dB, so last-bit differences in transcendental
functions cannot leak into the stored data).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from data.format import PIXEL_DTYPE, PatchDataset, PatchMetadata, PatchSplit
from data.landcover import (
    BANDS,
    CAN,
    CLOUD_PROBABILITY,
    CLOUD_SPECTRUM,
    DEFAULT_COUNTS,
    DEFAULT_SEED,
    GRA,
    HAZE_MEAN_DN,
    ILLUMINATION_RANGE,
    INCIDENCE_SPREAD_DB,
    MAR,
    MATERIAL_SPECTRA,
    MATERIALS,
    MIX_MAX_SHARE,
    MIX_PROBABILITY,
    NOISE_FLOOR_DN,
    NOISE_RELATIVE,
    OPTICAL_BANDS,
    OPTICAL_RANGE,
    PATCH_SIZE,
    RADAR_BANDS,
    RADAR_LOOKS,
    RADAR_RANGE,
    RESOLUTION_M,
    ROOF,
    SMALL_PATCH_BANDS,
    SMALL_PATCH_BRIGHTNESS_SD,
    SMALL_PATCH_CLASSES,
    SMALL_PATCH_COUNTS,
    SMALL_PATCH_MODES,
    SMALL_PATCH_SEED,
    SMALL_PATCH_SIZE,
    SOIL,
    WAVELENGTH_NM,
    default_metadata,
    small_patch_metadata,
)
from data.textures import NEIGHBOUR_TABLE, abundances, half_plane, smooth

CHUNK = 8192  # patches generated per seeded chunk, to bound memory for large datasets


def generate(
    counts: Mapping[str, int] | None = None,
    seed: int = DEFAULT_SEED,
    *,
    size: int = PATCH_SIZE,
) -> PatchDataset:
    """Generate a dataset, balanced across classes within each split.

    Args:
        counts: Number of patches per split name (for example ``{"train": 50000, "val": 1000, "test": 1000}``);
            the default is the embedded dataset's sizes. A count that is not a multiple of the number of classes
            gives one extra patch to the first classes.
        seed: Seed of the generator. Each split (and each chunk of it) draws from its own stream derived from the
            seed and the split name, so changing one split's count leaves the others unchanged.
        size: Patch height and width in pixels.

    Returns:
        The dataset; patch ids are ``"<split>-<index>"`` and unique across splits.
    """
    counts = DEFAULT_COUNTS if counts is None else counts
    if size < 2:
        raise ValueError(f"patch size must be at least 2 pixels, got {size}")
    metadata = dataclasses.replace(default_metadata(), height=size, width=size)
    return _generate_splits(counts, seed, metadata, functools.partial(_patches, size=size))


# Pixels (n, C, H, W) of patches with the given class labels, drawn from the given generator.
PatchMaker = Callable[[np.random.Generator, np.ndarray], np.ndarray]


def _generate_splits(
    counts: Mapping[str, int], seed: int, metadata: PatchMetadata, make_patches: PatchMaker
) -> PatchDataset:
    """Every split of a dataset, each from its own seeded streams."""
    splits = {}
    for name, n in counts.items():
        if n < 1:
            raise ValueError(f"split {name!r}: count must be positive, got {n}")
        splits[name] = _generate_split(name, int(n), seed, metadata, make_patches)
    return PatchDataset(metadata, splits)


def _generate_split(name: str, n: int, seed: int, metadata: PatchMetadata, make_patches: PatchMaker) -> PatchSplit:
    """One split: balanced labels in a seeded order, pixels generated chunk by chunk."""
    split_key = zlib.crc32(name.encode())
    order_rng = np.random.default_rng([seed, split_key])
    labels = order_rng.permutation(np.arange(n) % metadata.num_classes)
    pixels = np.empty((n, metadata.num_bands, metadata.height, metadata.width), dtype=PIXEL_DTYPE)
    for chunk, start in enumerate(range(0, n, CHUNK)):
        rng = np.random.default_rng([seed, split_key, chunk + 1])
        stop = min(start + CHUNK, n)
        pixels[start:stop] = make_patches(rng, labels[start:stop])
    width = len(str(n - 1))
    ids = np.array([f"{name}-{i:0{width}d}" for i in range(n)], dtype=object)
    return PatchSplit(patch_ids=ids, pixels=pixels, labels=labels.astype(np.int64))


# --- From abundances to observed bands ------------------------------------------------------------------------------


def _material_spectra(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Per-patch material spectra (n, M, B): brightness, spectral tilt, soil moisture and urban geometry vary."""
    n, n_opt = len(labels), len(OPTICAL_BANDS)
    spectra = np.broadcast_to(MATERIAL_SPECTRA, (n, *MATERIAL_SPECTRA.shape)).copy()
    ramp = np.linspace(-1, 1, n_opt)
    brightness = 1 + rng.normal(0, 0.08, (n, len(MATERIALS), 1))
    tilt = rng.normal(0, 0.05, (n, len(MATERIALS), 1)) * ramp
    spectra[:, :, :n_opt] *= brightness + tilt
    # Wet soil is darker, most of all in the shortwave infrared, and backscatters more.
    moisture = rng.uniform(0, 1, n)
    darkening = 1 - moisture[:, None] * np.linspace(0.25, 0.5, n_opt)
    spectra[:, SOIL, :n_opt] *= darkening
    spectra[:, SOIL, n_opt:] += (moisture * 7 - 2)[:, None] + rng.normal(0, 1.0, (n, 1))
    # Double bounce from walls depends on how the streets face the radar.
    spectra[:, ROOF, n_opt:] += rng.uniform(-7, 1, (n, 1))
    # Vegetation water content and structure move its backscatter.
    for veg in (CAN, GRA, MAR):
        spectra[:, veg, n_opt:] += rng.normal(0, 1.2, (n, 1))
    return spectra


def _patches(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    """Observed pixels (n, C, H, W) of patches of the given classes, rounded to the stored precision."""
    n, n_opt = len(labels), len(OPTICAL_BANDS)
    abundance = abundances(rng, labels, size)

    # A neighbouring class crosses part of some patches; pixels on the boundary are mixtures.
    mixed = np.flatnonzero(rng.uniform(0, 1, n) < MIX_PROBABILITY)
    if len(mixed):
        neighbour = NEIGHBOUR_TABLE[labels[mixed], rng.integers(0, NEIGHBOUR_TABLE.shape[1], len(mixed))]
        share = half_plane(rng, len(mixed), size, MIX_MAX_SHARE)[:, None]
        abundance[mixed] = (1 - share) * abundance[mixed] + share * abundances(rng, neighbour, size)

    spectra = _material_spectra(rng, labels)
    a = abundance.reshape(n, len(MATERIALS), size * size).transpose(0, 2, 1)  # (n, HW, M)
    optical = (a @ spectra[:, :, :n_opt]).transpose(0, 2, 1).reshape(n, n_opt, size, size)
    power = 10 ** (spectra[:, :, n_opt:] / 10)  # radar mixes in linear power, not in dB
    radar = (a @ power).transpose(0, 2, 1).reshape(n, len(RADAR_BANDS), size, size)

    optical = _coarsen(optical, size)
    optical *= rng.uniform(*ILLUMINATION_RANGE, (n, 1, 1, 1))
    haze = rng.exponential(HAZE_MEAN_DN, (n, 1)) * (WAVELENGTH_NM[0] / WAVELENGTH_NM) ** 2
    optical += haze[:, :, None, None]

    cloudy = np.flatnonzero(rng.uniform(0, 1, n) < CLOUD_PROBABILITY)
    if len(cloudy):
        level = rng.uniform(-1.0, 1.0, (len(cloudy), 1, 1))
        opacity = 1.0 / (1.0 + np.exp(-(smooth(rng, len(cloudy), size) - level) / 0.3))
        opacity *= rng.uniform(0.4, 1.0, (len(cloudy), 1, 1))
        opacity = opacity[:, None]
        optical[cloudy] = (1 - opacity) * optical[cloudy] + opacity * CLOUD_SPECTRUM[None, :, None, None]

    optical += rng.normal(0, 1, optical.shape) * (NOISE_RELATIVE * optical + NOISE_FLOOR_DN)
    speckle = rng.gamma(RADAR_LOOKS, 1 / RADAR_LOOKS, radar.shape)
    radar_db = 10 * np.log10(radar * speckle) + rng.normal(0, INCIDENCE_SPREAD_DB, (n, 1, 1, 1))

    pixels = np.empty((n, len(BANDS), size, size), dtype=PIXEL_DTYPE)
    pixels[:, :n_opt] = np.clip(np.round(optical), *OPTICAL_RANGE) + 0.0  # + 0.0 turns -0.0 into 0.0
    pixels[:, n_opt:] = np.clip(np.round(radar_db, 2), *RADAR_RANGE)
    return pixels


def _coarsen(optical: np.ndarray, size: int) -> np.ndarray:
    """Give the 20 m bands 2x2-pixel detail and the 60 m bands patch-scale detail, as resampled imagery has."""
    out = optical.copy()
    twenty = RESOLUTION_M == 20
    if size % 2 == 0:
        half = size // 2
        blocks = optical[:, twenty].reshape(len(optical), -1, half, 2, half, 2).mean(axis=(3, 5))
        out[:, twenty] = np.repeat(np.repeat(blocks, 2, axis=2), 2, axis=3)
    sixty = RESOLUTION_M == 60
    out[:, sixty] = optical[:, sixty].mean(axis=(2, 3), keepdims=True)
    return out


# --- The small-patch proxy -------------------------------------------------------------------------------------------


def generate_small_patch(counts: Mapping[str, int] | None = None, seed: int = SMALL_PATCH_SEED) -> PatchDataset:
    """Generate the small-patch proxy, balanced across classes within each split.

    Args:
        counts: Number of patches per split name; the default is the proxy's sizes (``SMALL_PATCH_COUNTS``).
        seed: Seed of the generator; as in :func:`generate`, each split draws from its own streams.

    Returns:
        The dataset; patch ids are ``"<split>-<index>"``.
    """
    counts = SMALL_PATCH_COUNTS if counts is None else counts
    return _generate_splits(counts, seed, small_patch_metadata(), _small_patches)


def _small_patches(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Observed pixels (n, C, H, W) of proxy patches: mixed materials, per-patch variability, illumination, noise."""
    n, size = len(labels), SMALL_PATCH_SIZE
    mode = _SMALL_MODE_TABLE[labels, rng.integers(0, _SMALL_MODE_TABLE.shape[1], n)]
    patch = _dirichlet(rng, _SMALL_MODE_CONCENTRATION[mode, :1] * _SMALL_MODE_ABUNDANCE[mode])  # (n, M)
    pixel_shape = _SMALL_MODE_CONCENTRATION[mode, 1:, None, None] * patch[:, :, None, None]
    abundance = _dirichlet(rng, np.broadcast_to(pixel_shape, (n, len(MATERIALS), size, size)))  # (n, M, H, W)
    spectra = _SMALL_PATCH_SPECTRA * (1 + rng.normal(0, SMALL_PATCH_BRIGHTNESS_SD, (n, len(MATERIALS), 1)))
    optical = np.einsum("nmhw,nmb->nbhw", abundance, spectra)
    optical *= rng.uniform(*ILLUMINATION_RANGE, (n, 1, 1, 1))
    optical += rng.normal(0, 1, optical.shape) * (NOISE_RELATIVE * optical + NOISE_FLOOR_DN)
    return (np.clip(np.round(optical), *OPTICAL_RANGE) + 0.0).astype(PIXEL_DTYPE)  # + 0.0 turns -0.0 into 0.0


def _dirichlet(rng: np.random.Generator, shape: np.ndarray) -> np.ndarray:
    """Dirichlet draws along axis 1 with the given (broadcast) parameters; a zero parameter gives a zero share."""
    draws = rng.gamma(shape)
    return draws / np.maximum(draws.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)


# The proxy's bands of MATERIAL_SPECTRA (M, 5), and its modes as arrays: abundances (modes, M), concentrations
# (modes, 2: patch, pixel), and for each class its modes repeated to a common width (as NEIGHBOUR_TABLE).
_SMALL_PATCH_SPECTRA = MATERIAL_SPECTRA[:, [OPTICAL_BANDS.index(band) for band in SMALL_PATCH_BANDS]]
_SMALL_MODE_ABUNDANCE = np.array([[m.abundance.get(name, 0.0) for name in MATERIALS] for m in SMALL_PATCH_MODES])
_SMALL_MODE_CONCENTRATION = np.array([[m.patch_concentration, m.pixel_concentration] for m in SMALL_PATCH_MODES])
_SMALL_MODES_OF = [[i for i, m in enumerate(SMALL_PATCH_MODES) if m.label == c] for c in SMALL_PATCH_CLASSES]
_SMALL_MODE_TABLE = np.array(
    [[modes[j % len(modes)] for j in range(math.lcm(*map(len, _SMALL_MODES_OF)))] for modes in _SMALL_MODES_OF]
)


SMALL_PATCH_PRESET = "small-patch"


@dataclass(frozen=True)
class Preset:
    """A named synthetic dataset that ``workflows/make_dataset.py`` can write.

    Attributes:
        counts: Default patches per split.
        seed: Default generator seed.
        generate: ``generate(counts, seed)`` returns the dataset.
    """

    counts: Mapping[str, int]
    seed: int
    generate: Callable[[Mapping[str, int], int], PatchDataset]


DEFAULT_PRESET = "default"
PRESETS = {
    DEFAULT_PRESET: Preset(DEFAULT_COUNTS, DEFAULT_SEED, generate),
    SMALL_PATCH_PRESET: Preset(SMALL_PATCH_COUNTS, SMALL_PATCH_SEED, generate_small_patch),
}
