"""What the synthetic land cover is made of: sensors, classes, surface materials and nuisances, for both presets.

The embedded default dataset is shaped like the original problem: Sentinel-2-like reflectance (digital numbers
0-10000) and Sentinel-1-like VV/VH backscatter (dB), 7 classes as mixtures of a few surface materials (water, canopy,
grass, soil, roofs, asphalt and shadow, marsh vegetation), and the nuisances of real imagery with their strengths.
Confusable classes (grassland/cropland, wetland/water, bare soil/urban) have close mean spectra and differ mainly in
texture (:mod:`data.textures`).

The small-patch proxy (``small-patch``) is shaped like small real datasets on which a random forest is a strong
baseline: 5 bands of 5x5 pixels, 6 classes, the same materials seen through a RapidEye-like sensor, almost no
spatial texture. Its classes differ by spectrum and by how mixed their pixels are; one class has two spectral
modes, so a linear model on band means falls well short of a forest on the pixels.

:mod:`data.synthetic` turns these definitions into patches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from data.format import PatchMetadata

# --- The default dataset: shaped like the original problem ---------------------------------------------------------

DEFAULT_SEED = 20240601
# Sentinel-2 Level-2A optical bands (B10, the cirrus band, is not delivered at L2A) and Sentinel-1 polarisations.
OPTICAL_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
RADAR_BANDS = ("VV", "VH")
BANDS = OPTICAL_BANDS + RADAR_BANDS
UNITS = ("DN",) * len(OPTICAL_BANDS) + ("dB",) * len(RADAR_BANDS)
# Centre wavelengths in nm (haze scattering falls with wavelength) and native resolutions in m.
WAVELENGTH_NM = np.array([443, 490, 560, 665, 705, 740, 783, 842, 865, 945, 1610, 2190], dtype=np.float64)
RESOLUTION_M = np.array([60, 10, 10, 10, 20, 20, 20, 10, 20, 60, 20, 20])
PATCH_SIZE = 8  # pixels at 10 m
CLASSES = ("water", "forest", "grassland", "cropland", "urban", "bare_soil", "wetland")
# Patches per class in each split: train 588, val 350, test 1400 in all.
DEFAULT_PER_CLASS = {"train": 84, "val": 50, "test": 200}
DEFAULT_COUNTS = {split: n * len(CLASSES) for split, n in DEFAULT_PER_CLASS.items()}

OPTICAL_RANGE = (0.0, 10000.0)  # reflectance x 10000, as Sentinel-2 L2A stores it
RADAR_RANGE = (-35.0, 5.0)  # sigma0 in dB; the noise floor is near -30 dB

# Surface materials: reflectance (DN) in the optical bands, then VV and VH backscatter (dB).
MATERIALS = ("water", "canopy", "grass", "soil", "roof", "dark", "marsh")
W, CAN, GRA, SOIL, ROOF, DARK, MAR = range(len(MATERIALS))
MATERIAL_SPECTRA = np.array(
    [
        # B01  B02   B03   B04   B05   B06   B07   B08   B8A   B09   B11   B12    VV     VH
        [420, 480, 560, 330, 280, 240, 220, 200, 180, 110, 80, 60, -22.0, -29.0],  # open water
        [230, 290, 520, 290, 850, 2500, 3100, 3300, 3400, 3350, 1650, 780, -8.5, -14.5],  # tree canopy
        [330, 430, 730, 560, 1080, 2150, 2650, 2850, 2950, 2900, 2250, 1280, -11.5, -18.5],  # green grass, crops
        [880, 1080, 1380, 1660, 1960, 2180, 2330, 2430, 2540, 2480, 3050, 2600, -13.0, -21.0],  # dry bare soil
        [1250, 1450, 1750, 2050, 2300, 2450, 2550, 2600, 2680, 2620, 3150, 2700, -5.0, -13.0],  # tile roofs, concrete
        [480, 530, 540, 540, 590, 640, 680, 720, 730, 720, 780, 680, -13.0, -21.0],  # asphalt and shadow
        [300, 380, 640, 460, 880, 1780, 2150, 2350, 2450, 2400, 1450, 720, -10.0, -17.0],  # marsh vegetation
    ],
    dtype=np.float64,
)
# Flat, bright cloud top with a little less reflectance in the shortwave infrared.
CLOUD_SPECTRUM = np.array([5200, 5400, 5500, 5600, 5600, 5650, 5700, 5700, 5700, 5400, 4200, 3300], dtype=np.float64)
# The class a patch's neighbour most likely belongs to (mixed pixels where it crosses the patch).
NEIGHBOURS = {
    "water": ("wetland", "grassland"),
    "forest": ("grassland", "cropland"),
    "grassland": ("cropland", "forest", "bare_soil"),
    "cropland": ("grassland", "bare_soil"),
    "urban": ("bare_soil", "grassland"),
    "bare_soil": ("cropland", "urban"),
    "wetland": ("water", "grassland"),
}

# --- Nuisance strengths ---------------------------------------------------------------------------------------------

MIX_PROBABILITY = 0.35  # share of patches crossed by a neighbouring class
MIX_MAX_SHARE = 0.45  # the neighbour never covers the majority of the patch
CLOUD_PROBABILITY = 0.04
ILLUMINATION_RANGE = (0.8, 1.2)  # terrain and sun-angle scaling of optical reflectance
HAZE_MEAN_DN = 120.0  # mean extra path radiance in B01, falling as wavelength^-2
NOISE_RELATIVE = 0.015  # optical sensor noise, relative to the signal ...
NOISE_FLOOR_DN = 15.0  # ... plus a floor, in DN
RADAR_LOOKS = 5.0  # equivalent number of looks of the speckle (Sentinel-1 GRD is about 4.4)
INCIDENCE_SPREAD_DB = 1.0  # per-patch backscatter offset from incidence angle and calibration


def default_metadata() -> PatchMetadata:
    """Metadata of the embedded default dataset (and, at their patch size, of the datasets ``generate`` makes)."""
    return PatchMetadata(bands=BANDS, height=PATCH_SIZE, width=PATCH_SIZE, classes=CLASSES, units=UNITS)


# --- The small-patch proxy: shaped like small real data, where a random forest is a strong baseline --------------

SMALL_PATCH_SEED = 20250115
# A RapidEye-like 5-band sensor (blue, green, red, red edge, near infrared): these Sentinel-2 bands of the materials.
SMALL_PATCH_BANDS = ("B02", "B03", "B04", "B05", "B08")
SMALL_PATCH_SIZE = 5  # pixels
SMALL_PATCH_CLASSES = ("water", "forest", "grassland", "cropland", "urban", "bare_soil")
# Training as small as the original problem's (588 patches). Validation ranks models and PBT members: at an accuracy
# near 0.85 one validation accuracy has a standard error of sqrt(0.85 * 0.15 / n), 2.1 points at n = 300 but 1.5 at
# 600, small enough to tell apart models a few points apart. Test: 2,400 patches, 0.7 points.
SMALL_PATCH_PER_CLASS = {"train": 98, "val": 100, "test": 400}
SMALL_PATCH_COUNTS = {split: n * len(SMALL_PATCH_CLASSES) for split, n in SMALL_PATCH_PER_CLASS.items()}


@dataclass(frozen=True)
class SurfaceMode:
    """One spectral mode of a proxy class: its materials' mean abundances and how much they vary.

    Attributes:
        label: The class (one of ``SMALL_PATCH_CLASSES``).
        abundance: Mean share of each material (by name in ``MATERIALS``); the shares sum to 1.
        patch_concentration: Dirichlet concentration of a patch's abundances around the mean; lower is more varied.
        pixel_concentration: Dirichlet concentration of a pixel's abundances around its patch's; lower gives more
            mixed, heterogeneous pixels (with no spatial arrangement: the proxy has almost no texture).
    """

    label: str
    abundance: Mapping[str, float]
    patch_concentration: float
    pixel_concentration: float


# Cropland shares its mean spectra with the classes it borders: a growing field has grassland's, a harvested or fallow
# one bare soil's, so only its mixed pixels (crop beside bare strips, stubble and weeds at 5 m) tell it apart; its two
# modes sit on either side of grassland, which no linear boundary on band means isolates. Forest and urban pixels are
# mixed too (crown gaps and shadow; roofs, streets and gardens); the close means of forest and grassland, and of
# urban and bare soil, overlap after the per-patch variability.
SMALL_PATCH_MODES = (
    SurfaceMode("water", {"water": 0.85, "soil": 0.08, "marsh": 0.07}, 20.0, 60.0),
    SurfaceMode("forest", {"canopy": 0.6, "dark": 0.14, "grass": 0.26}, 10.0, 6.0),
    SurfaceMode("grassland", {"grass": 0.68, "soil": 0.2, "canopy": 0.12}, 10.0, 80.0),
    SurfaceMode("cropland", {"grass": 0.68, "soil": 0.2, "canopy": 0.12}, 10.0, 2.0),  # growing
    SurfaceMode("cropland", {"soil": 0.7, "grass": 0.2, "dark": 0.1}, 10.0, 2.0),  # harvested or fallow
    SurfaceMode("urban", {"roof": 0.3, "dark": 0.3, "soil": 0.25, "grass": 0.15}, 10.0, 3.0),
    SurfaceMode("bare_soil", {"soil": 0.7, "grass": 0.2, "dark": 0.1}, 10.0, 80.0),
)
SMALL_PATCH_BRIGHTNESS_SD = 0.08  # per-patch relative variation of each material's reflectance


def small_patch_metadata() -> PatchMetadata:
    """Metadata of the small-patch proxy."""
    return PatchMetadata(
        bands=SMALL_PATCH_BANDS,
        height=SMALL_PATCH_SIZE,
        width=SMALL_PATCH_SIZE,
        classes=SMALL_PATCH_CLASSES,
        units=("DN",) * len(SMALL_PATCH_BANDS),
    )
