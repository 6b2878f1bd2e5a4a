"""Synthetic optical + SAR + label scenes: the demo data set and the source of test fixtures.

Everything here is deterministic by seed and *coordinate based*: every label decision and every
smooth field is a function of the global pixel coordinate (hashed lattices, analytic rivers and
road grids), and the per-pixel noise (optical sensor noise, SAR speckle) is drawn from random
generators seeded per fixed 256x256 noise tile. A window therefore renders to exactly the same
values whichever block size it is written with, and :func:`write_scene` can stream a
10000x10000 scene window by window with bounded memory.

Classes (ids 0..6, :data:`CLASS_NAMES`): water, building, road, vegetation, farmland,
bare_soil, other; 255 is ignore / nodata in label rasters.

Appearance, chosen so that each modality is informative on its own and fusion helps:

=========== ======================================= =======================================
class       optical (RGB)                           SAR (dB, before speckle)
=========== ======================================= =======================================
water       dark blue-green; turbid parts brownish  ~ -22 (wind-roughened patches brighter)
            (confusable with bare soil)             (confusable with roads)
building    bright grey / red roofs, shadows to the ~ +2, +6 dB double bounce on the
            south-east; some dark roofs (look like  sensor-facing wall, radar shadow behind
            roads)
road        grey lines                              ~ -18
vegetation  textured green                          ~ -9 textured
farmland    striped yellow-to-green parcels         ~ -12 +- 3 per parcel, row structure
bare_soil   tan / brown                             ~ -15
other       mixed random colours                    ~ -11 (confusable with farmland)
=========== ======================================= =======================================

SAR gets 4-look gamma speckle (multiplicative) and an exponential thermal-noise floor
(~ -26 dB); optical gets Gaussian sensor noise.

Modules (each importable without torch; this package re-exports their public names):

- :mod:`.constants`: class ids and names, nodata values, :data:`DEFAULT_PREPROCESS`;
- :mod:`.noise`: hashing and coordinate-based noise fields;
- :mod:`.scene`: :class:`SyntheticScene` (render any window in memory);
- :mod:`.geotiff`: :func:`write_scene` (streamed GeoTIFFs) and :class:`SceneFiles`;
- :mod:`.text`: :func:`describe_labels` / :func:`referring_expressions` (text from a label map);
- :mod:`.folders`: :func:`make_tile_dataset` (YESeg-OPT-SAR-like or SWJTU-like folders, see
  :mod:`rsvl_train.data.datasets`) and :func:`make_referring_dataset` (RRSIS-D-like folder);
- :mod:`.jobs`: :func:`write_scene_job` (batch jobs) and :func:`write_misregistered_pair`;
- :mod:`.tiles`: :func:`synthetic_tiles`, the normalised model inputs of the export parity
  gate, ORT calibration and the benchmarks.

Writers that only tests use (a truncated GeoTIFF) live in ``tests/_synthetic_fixtures.py``.
"""

from __future__ import annotations

from typing import Any

from .constants import (
    CLASS_NAMES,
    DEFAULT_PREPROCESS,
    IGNORE_INDEX,
    OPTICAL_SCALE,
    SAR_NODATA,
)
from .folders import make_referring_dataset, make_tile_dataset
from .geotiff import SceneFiles, write_scene
from .jobs import write_misregistered_pair, write_scene_job
from .scene import SceneBlock, SyntheticScene
from .text import ReferringExpression, describe_labels, referring_expressions
from .tiles import synthetic_tiles

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_PREPROCESS",
    "IGNORE_INDEX",
    "OPTICAL_SCALE",
    "SAR_NODATA",
    "ReferringExpression",
    "SceneBlock",
    "SceneFiles",
    "SyntheticScene",
    "describe_labels",
    "make_referring_dataset",
    "make_tile_dataset",
    "referring_expressions",
    "synthetic_tiles",
    "write_misregistered_pair",
    "write_scene",
    "write_scene_job",
]

_MOVED_TO_TESTS = {"write_corrupt_tif": "tests/_synthetic_fixtures.py"}


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_TESTS:
        raise AttributeError(f"{name} is a test fixture writer and moved to {_MOVED_TO_TESTS[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
