"""Class ids, nodata values and normalisation statistics shared by the synthetic data modules."""

from __future__ import annotations

from typing import Any

__all__ = [
    "BARE_SOIL",
    "BUILDING",
    "CLASS_NAMES",
    "DEFAULT_PREPROCESS",
    "FARMLAND",
    "IGNORE_INDEX",
    "OPTICAL_SCALE",
    "OTHER",
    "ROAD",
    "SAR_NODATA",
    "VEGETATION",
    "WATER",
]

#: Class names, index = class id.
CLASS_NAMES: tuple[str, ...] = (
    "water",
    "building",
    "road",
    "vegetation",
    "farmland",
    "bare_soil",
    "other",
)
WATER, BUILDING, ROAD, VEGETATION, FARMLAND, BARE_SOIL, OTHER = range(7)

#: Label value for ignore / nodata pixels.
IGNORE_INDEX = 255
#: Declared nodata of the SAR rasters (dB and linear alike).
SAR_NODATA = -9999.0
#: Optical digital-number scale per dtype: ``dn / scale`` is reflectance-like in [0, 1].
OPTICAL_SCALE: dict[str, float] = {"uint8": 255.0, "uint16": 10000.0}

#: Normalisation statistics of the synthetic data (measured on a few 1024x1024 scenes and
#: rounded), in the modality-spec format of :mod:`rsvl_runtime.normalization`.
DEFAULT_PREPROCESS: dict[str, dict[str, Any]] = {
    "optical": {
        "bands": ["red", "green", "blue"],
        "dtype": "uint8",
        "scale": 255.0,
        "mean": [0.44, 0.49, 0.31],
        "std": [0.21, 0.14, 0.13],
    },
    "sar": {"bands": ["vv"], "dtype": "float32", "units": "db", "mean": [-12.0], "std": [4.6]},
}
