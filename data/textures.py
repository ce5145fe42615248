"""Spatial textures of the synthetic classes: per-pixel material abundances, in each class's own pattern.

Every field is (n, H, W) with a random orientation, so that the distribution of a class's patches does not change
under the flips and rotations the training augments with. :func:`abundances` gives a class's materials per pixel,
(n, M, H, W) summing to 1 over the materials of :data:`data.landcover.MATERIALS`.
"""

from __future__ import annotations

import math

import numpy as np

from data.landcover import CAN, CLASSES, DARK, GRA, MAR, MATERIALS, NEIGHBOURS, ROOF, SOIL, W


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, centred on the patch, shape (1, H, W) each."""
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2
    y, x = np.meshgrid(coords, coords, indexing="ij")
    return y[None], x[None]


def smooth(rng: np.random.Generator, n: int, size: int, waves: int = 3) -> np.ndarray:
    """Low-frequency field of unit variance: a few plane waves, wavelengths 1-3 patch widths, any direction."""
    y, x = _grid(size)
    field = np.zeros((n, size, size))
    for _ in range(waves):
        angle = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        wavelength = rng.uniform(1.0, 3.0, (n, 1, 1)) * size
        phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        field += np.cos(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / wavelength + phase)
    return field * np.sqrt(2.0 / waves)


def _stripes(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Rows of a field in [0, 1]: a squared-off wave, period 2.5-4.5 px, any orientation."""
    y, x = _grid(size)
    angle = rng.uniform(0, np.pi, (n, 1, 1))
    period = rng.uniform(2.5, 4.5, (n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    wave = np.cos(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + phase)
    return 0.5 + 0.5 * np.tanh(2.5 * wave)


def _blocks(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Index (n, H, W) of axis-aligned blocks 2-3 px wide on a randomly offset grid (buildings, streets)."""
    block = rng.integers(2, 4, (n, 1, 1))
    offset_y = rng.integers(0, 3, (n, 1, 1))
    offset_x = rng.integers(0, 3, (n, 1, 1))
    rows = (np.arange(size)[None, :, None] + offset_y) // block
    cols = (np.arange(size)[None, None, :] + offset_x) // block
    per_side = (size + 2) // 2 + 1
    return rows * per_side + cols


def half_plane(rng: np.random.Generator, n: int, size: int, max_share: float) -> np.ndarray:
    """Soft mask (n, H, W) in [0, 1] covering up to ``max_share`` of the patch beyond a straight boundary."""
    y, x = _grid(size)
    angle = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    distance = x * np.cos(angle) + y * np.sin(angle)  # signed distance from the centre line, in px
    # The boundary sits between the patch edge and a line that leaves max_share of the patch beyond it.
    reach = size / 2
    shift = rng.uniform(reach * (1 - 2 * max_share), reach, (n, 1, 1))
    return 1.0 / (1.0 + np.exp(-(distance - shift) / 0.5))  # about one mixed pixel across the boundary


# --- Classes as material abundances ---------------------------------------------------------------------------------


def abundances(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    """Per-pixel material abundances (n, M, H, W), summing to 1, in each class's own spatial texture."""
    n = len(labels)
    out = np.zeros((n, len(MATERIALS), size, size))
    for cls, name in enumerate(CLASSES):
        rows = np.flatnonzero(labels == cls)
        if len(rows):
            out[rows] = _CLASS_TEXTURES[name](rng, len(rows), size)
    return out


def _water(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Smooth open water, with turbidity (suspended sediment) and a little floating or shallow vegetation."""
    a = np.zeros((n, len(MATERIALS), size, size))
    sediment = rng.uniform(0.0, 0.25, (n, 1, 1)) * (1 + 0.2 * smooth(rng, n, size))
    weed = np.clip(rng.uniform(-0.1, 0.3, (n, 1, 1)) + 0.06 * smooth(rng, n, size), 0, 1)
    a[:, SOIL] = np.clip(sediment, 0, 0.4)
    a[:, MAR] = weed
    a[:, W] = 1 - a[:, SOIL] - a[:, MAR]
    return a


def _forest(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Closed canopy with pixel-scale speckle of crown gaps, shadow and understorey."""
    a = np.zeros((n, len(MATERIALS), size, size))
    gaps = np.clip(rng.beta(1.3, 4.0, (n, size, size)) * rng.uniform(0.6, 2.2, (n, 1, 1)), 0, 1)
    shadow = rng.uniform(0.3, 0.7, (n, size, size))
    a[:, DARK] = gaps * shadow
    a[:, GRA] = gaps * (1 - shadow)
    a[:, CAN] = 1 - gaps
    return a


def _grassland(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Meadow with smooth, patchy thinning to bare soil and a few shrubs."""
    a = np.zeros((n, len(MATERIALS), size, size))
    soil = np.clip(rng.uniform(0.05, 0.45, (n, 1, 1)) + 0.1 * smooth(rng, n, size), 0, 1)
    shrub = np.clip(rng.uniform(-0.05, 0.35, (n, 1, 1)) + 0.05 * smooth(rng, n, size), 0, 1 - soil)
    a[:, SOIL] = soil
    a[:, CAN] = shrub
    a[:, GRA] = 1 - soil - shrub
    return a


def _cropland(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Row crops: oriented rows of vegetation with soil between, of varying contrast with the growth stage."""
    a = np.zeros((n, len(MATERIALS), size, size))
    soil_mean = rng.uniform(0.1, 0.45, (n, 1, 1))
    contrast = rng.uniform(0.3, 0.8, (n, 1, 1))  # soil share between the rows minus that on them
    rows = _stripes(rng, n, size)
    soil = np.clip(soil_mean + contrast * (rows - 0.5), 0, 1)
    vigorous = rng.uniform(0.0, 0.4, (n, 1, 1))  # share of crop that looks like dense canopy
    a[:, SOIL] = soil
    a[:, CAN] = (1 - soil) * vigorous
    a[:, GRA] = (1 - soil) * (1 - vigorous)
    return a


def _urban(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Blocks of roofs, asphalt and shadow, with the odd park or vacant lot, at a random density."""
    a = np.zeros((n, len(MATERIALS), size, size))
    block = _blocks(rng, n, size)
    roof_share = rng.uniform(0.3, 0.6, (n, 1, 1))
    green_share = rng.uniform(0.05, 0.25, (n, 1, 1))
    draw = rng.uniform(0, 1, (n, (size + 2) ** 2))  # one draw per block
    u = np.take_along_axis(draw, block.reshape(n, -1), axis=1).reshape(n, size, size)
    roof = u < roof_share
    green = u > 1 - green_share
    dark = ~roof & ~green
    soil_lot = rng.uniform(0, 1, (n, size, size)) < 0.4  # part of the green draws are vacant lots
    edge = rng.uniform(0.75, 1.0, (n, size, size))  # blocks do not align with pixels: some mixing
    for material, mask in ((ROOF, roof), (DARK, dark), (GRA, green & ~soil_lot), (SOIL, green & soil_lot)):
        a[:, material] = mask * edge
    a[:, SOIL] += (1 - edge) * 0.5
    a[:, DARK] += (1 - edge) * 0.5
    return a


def _bare_soil(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Bare or ploughed soil, smooth, with sparse weeds and the odd dark stone or shadow."""
    a = np.zeros((n, len(MATERIALS), size, size))
    weeds = np.clip(rng.uniform(-0.05, 0.25, (n, 1, 1)) + 0.07 * smooth(rng, n, size), 0, 1)
    dark = np.clip(rng.uniform(0.0, 0.25, (n, 1, 1)) + 0.07 * smooth(rng, n, size), 0, 1 - weeds)
    a[:, GRA] = weeds
    a[:, DARK] = dark
    a[:, SOIL] = 1 - weeds - dark
    return a


def _wetland(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Marsh vegetation and pools of open water in irregular blobs; the water share varies widely."""
    a = np.zeros((n, len(MATERIALS), size, size))
    level = rng.uniform(-1.0, 1.0, (n, 1, 1))
    water = 1.0 / (1.0 + np.exp(-(smooth(rng, n, size, waves=4) - level) / 0.15))
    a[:, W] = water
    a[:, MAR] = 1 - water
    return a


# NEIGHBOURS as a (classes, k) table of class indices, each list repeated to a common length k so that a uniform
# column draws each of a class's neighbours equally often.
_NEIGHBOUR_WIDTH = math.lcm(*(len(names) for names in NEIGHBOURS.values()))
NEIGHBOUR_TABLE = np.array(
    [[CLASSES.index(NEIGHBOURS[c][j % len(NEIGHBOURS[c])]) for j in range(_NEIGHBOUR_WIDTH)] for c in CLASSES]
)

_CLASS_TEXTURES = {
    "water": _water,
    "forest": _forest,
    "grassland": _grassland,
    "cropland": _cropland,
    "urban": _urban,
    "bare_soil": _bare_soil,
    "wetland": _wetland,
}
