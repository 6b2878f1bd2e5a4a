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

Public entry points: :class:`SyntheticScene` (render any window in memory), :func:`write_scene`
(streamed GeoTIFFs), :func:`make_tile_dataset` (YESeg-OPT-SAR-like or SWJTU-like folders, see
:mod:`rsvl_train.data.datasets`), :func:`make_referring_dataset` (RRSIS-D-like folder),
:func:`describe_labels` / :func:`referring_expressions` (text derived from a label map) and the
bad-input helpers :func:`write_misregistered_pair` and :func:`write_corrupt_tif`.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "IGNORE_INDEX",
    "OPTICAL_SCALE",
    "SAR_NODATA",
    "DEFAULT_PREPROCESS",
    "SceneFiles",
    "SyntheticScene",
    "ReferringExpression",
    "write_scene",
    "describe_labels",
    "referring_expressions",
    "make_tile_dataset",
    "make_referring_dataset",
    "write_misregistered_pair",
    "write_corrupt_tif",
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

# Feature sizes in pixels.
_ZONE_SCALE = 380.0
_PARCEL_H, _PARCEL_W = 64, 96
_BUILDING_CELL = 28
_MAJOR_SPACING, _MAJOR_HALF_WIDTH = 320, 3.0
_MINOR_SPACING, _MINOR_HALF_WIDTH = 84, 2.0
_NOISE_TILE = 256
_URBAN, _AGRI, _FOREST, _BARE = range(4)

# --------------------------------------------------------------------------------------------
# Hashing and coordinate-based noise
# --------------------------------------------------------------------------------------------

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> _S30)
    x = x * _M1
    x = x ^ (x >> _S27)
    x = x * _M2
    return x ^ (x >> _S31)


def _hash(seed: int, *keys: np.ndarray | int) -> np.ndarray:
    """Hash integer keys (broadcast together) with a seed -> uint64 array."""
    with np.errstate(over="ignore"):
        h = np.atleast_1d(np.asarray(seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64))
        for k in keys:
            k64 = np.atleast_1d(np.asarray(k)).astype(np.int64).astype(np.uint64)
            h = _mix64(h ^ (k64 + _GOLDEN))
        return h


def _unit(h: np.ndarray) -> np.ndarray:
    """uint64 hash -> float64 uniform in [0, 1)."""
    return (h >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)


def _sub_seed(seed: int, name: str) -> int:
    """A stream seed derived from the scene seed and a field name."""
    return int(_hash(seed, zlib.crc32(name.encode()))[0])


def _axis_coords(start: int, n: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    t = (np.arange(n, dtype=np.float64) + start + 0.5) / scale
    i = np.floor(t).astype(np.int64)
    f = t - i
    return i, (f * f * (3.0 - 2.0 * f)).astype(np.float32)


def _noise_block(y0: int, x0: int, h: int, w: int, scale: float, seed: int) -> np.ndarray:
    """Smooth value noise in [0, 1) on the window ``[y0:y0+h, x0:x0+w]`` (global pixels)."""
    iy, fy = _axis_coords(y0, h, scale)
    ix, fx = _axis_coords(x0, w, scale)
    ly, lx = iy - iy[0], ix - ix[0]
    lat_y = np.arange(iy[0], iy[-1] + 2)
    lat_x = np.arange(ix[0], ix[-1] + 2)
    grid = _unit(_hash(seed, lat_y[:, None], lat_x[None, :])).astype(np.float32)
    gx = grid[:, lx] * (1.0 - fx) + grid[:, lx + 1] * fx  # (ny, w)
    return gx[ly] * (1.0 - fy)[:, None] + gx[ly + 1] * fy[:, None]


def _noise_points(y: np.ndarray, x: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """The same value noise evaluated at arbitrary (global pixel) coordinates."""
    ty = (np.asarray(y, dtype=np.float64) + 0.5) / scale
    tx = (np.asarray(x, dtype=np.float64) + 0.5) / scale
    iy, ix = np.floor(ty).astype(np.int64), np.floor(tx).astype(np.int64)
    fy, fx = ty - iy, tx - ix
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    g00 = _unit(_hash(seed, iy, ix))
    g01 = _unit(_hash(seed, iy, ix + 1))
    g10 = _unit(_hash(seed, iy + 1, ix))
    g11 = _unit(_hash(seed, iy + 1, ix + 1))
    top = g00 * (1 - fx) + g01 * fx
    bot = g10 * (1 - fx) + g11 * fx
    return top * (1 - fy) + bot * fy


def _fbm_block(y0: int, x0: int, h: int, w: int, scale: float, seed: int, octaves: int = 3) -> np.ndarray:
    total = np.zeros((h, w), dtype=np.float32)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        total += np.float32(amp) * _noise_block(y0, x0, h, w, scale / 2**o, seed + o)
        norm += amp
        amp *= 0.5
    return total / np.float32(norm)


def _fbm_points(y: np.ndarray, x: np.ndarray, scale: float, seed: int, octaves: int = 3) -> np.ndarray:
    total = np.zeros(np.broadcast(y, x).shape, dtype=np.float64)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        total += amp * _noise_points(y, x, scale / 2**o, seed + o)
        norm += amp
        amp *= 0.5
    return total / norm


def _pixel_noise(
    y0: int, x0: int, h: int, w: int, seed: int, stream: str, kind: str, channels: int = 0
) -> np.ndarray:
    """Per-pixel random numbers, drawn per fixed 256x256 noise tile (block-size independent).

    ``kind``: ``"normal"`` (standard normal), ``"gamma4"`` (Gamma(4)/4, mean 1: 4-look speckle),
    ``"exp"`` (Exp(1)). ``channels > 0`` gives ``[channels, h, w]``.
    """
    s = _sub_seed(seed, stream) & 0xFFFFFFFF
    shape = (channels, h, w) if channels else (h, w)
    out = np.empty(shape, dtype=np.float32)
    t = _NOISE_TILE
    for ty in range(y0 // t, (y0 + h - 1) // t + 1):
        for tx in range(x0 // t, (x0 + w - 1) // t + 1):
            rng = np.random.default_rng([s, ty + (1 << 30), tx + (1 << 30)])
            tshape = (channels, t, t) if channels else (t, t)
            if kind == "normal":
                tile = rng.standard_normal(tshape, dtype=np.float32)
            elif kind == "gamma4":
                tile = rng.standard_gamma(4.0, tshape, dtype=np.float32) * np.float32(0.25)
            elif kind == "exp":
                tile = rng.standard_exponential(tshape, dtype=np.float32)
            else:  # pragma: no cover - internal
                raise ValueError(kind)
            ya, yb = max(y0, ty * t), min(y0 + h, (ty + 1) * t)
            xa, xb = max(x0, tx * t), min(x0 + w, (tx + 1) * t)
            out[..., ya - y0 : yb - y0, xa - x0 : xb - x0] = tile[
                ..., ya - ty * t : yb - ty * t, xa - tx * t : xb - tx * t
            ]
    return out


# --------------------------------------------------------------------------------------------
# Scene model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _River:
    axis: Literal["ns", "ew"]
    centre: float  # fraction of the cross-axis extent
    amp1: float
    wl1: float
    ph1: float
    amp2: float
    wl2: float
    ph2: float
    half_width: float


@dataclass
class _Block:
    labels: np.ndarray  # uint8 (h, w), 255 outside the footprint
    optical: np.ndarray  # float32 (3, h, w), 0..255
    sar_db: np.ndarray  # float32 (h, w)
    valid: np.ndarray  # bool (h, w)


class SyntheticScene:
    """A deterministic synthetic scene of ``height x width`` pixels.

    Args:
        seed: the random seed; everything is a function of it and of pixel coordinates.
        height, width: scene size in pixels (the river geometry and the nodata footprint
            depend on it).
        nodata_fraction: fraction of the scene outside the sensor footprint (a cut north-west
            corner), labelled 255; 0 for none.
        river: ``True`` for a river crossing the scene, ``False`` for none, ``None`` to decide
            from the seed (half of the scenes).
        origin_px: global pixel offset of the scene's top-left corner in the noise fields
            (different offsets give different landscapes with the same seed).
    """

    def __init__(
        self,
        seed: int,
        height: int,
        width: int,
        nodata_fraction: float = 0.0,
        river: bool | None = True,
        origin_px: tuple[int, int] = (0, 0),
    ) -> None:
        if height <= 0 or width <= 0:
            raise ValueError(f"scene size must be positive, got height={height}, width={width}")
        if not 0.0 <= nodata_fraction < 1.0:
            raise ValueError(f"nodata_fraction must be in [0, 1), got {nodata_fraction}")
        self.seed = int(seed)
        self.height, self.width = int(height), int(width)
        self.nodata_fraction = float(nodata_fraction)
        self.origin_px = (int(origin_px[0]), int(origin_px[1]))
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 7])
        has_river = bool(rng.random() < 0.5) if river is None else bool(river)
        self.rivers: list[_River] = []
        if has_river:
            first = "ns" if rng.random() < 0.5 else "ew"
            self.rivers.append(self._make_river(rng, first, main=True))
            if max(height, width) >= 3000:
                self.rivers.append(self._make_river(rng, "ew" if first == "ns" else "ns", main=False))
        # nodata footprint: pixels with y/H + x/W < t are outside (area fraction t^2 / 2 for t <= 1)
        f = self.nodata_fraction
        self._cut = math.sqrt(2 * f) if f <= 0.5 else 2 - math.sqrt(2 * (1 - f))
        s = self.seed
        self._seeds = {
            name: _sub_seed(s, name)
            for name in (
                "zone_u", "zone_a", "zone_f", "zone_b", "warp_y", "warp_x", "parcel", "building",
                "major_h", "major_v", "road_warp_h", "road_warp_v", "minor", "pond", "other",
                "turbid", "texture", "illum", "bare_tex", "other_r", "other_g", "other_b", "wind",
            )
        }

    def _make_river(self, rng: np.random.Generator, axis: Literal["ns", "ew"], main: bool) -> _River:
        along = self.height if axis == "ns" else self.width
        across = self.width if axis == "ns" else self.height
        hw = float(np.clip(0.02 * min(self.height, self.width), 6.0, 30.0)) * (1.0 if main else 0.6)
        return _River(
            axis=axis,
            centre=float(rng.uniform(0.3, 0.7)),
            amp1=float(min(0.12 * across, 400.0) * rng.uniform(0.5, 1.0)),
            wl1=float(max(along, 300.0) * rng.uniform(0.4, 0.9)),
            ph1=float(rng.uniform(0, 2 * np.pi)),
            amp2=float(min(0.04 * across, 120.0) * rng.uniform(0.5, 1.0)),
            wl2=float(rng.uniform(150.0, 400.0)),
            ph2=float(rng.uniform(0, 2 * np.pi)),
            half_width=hw,
        )

    # ---- field helpers -------------------------------------------------------------------

    def _river_distance(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Distance (pixels, along the cross axis) to the nearest river edge; < 0 inside."""
        d = np.full(np.broadcast(y, x).shape, np.inf, dtype=np.float32)
        for r in self.rivers:
            along, across = (y, x) if r.axis == "ns" else (x, y)
            extent = self.width if r.axis == "ns" else self.height
            c = (
                r.centre * extent
                + r.amp1 * np.sin(2 * np.pi * along / r.wl1 + r.ph1)
                + r.amp2 * np.sin(2 * np.pi * along / r.wl2 + r.ph2)
            )
            hw = r.half_width * (1.0 + 0.25 * np.sin(2 * np.pi * along / 173.0 + r.ph2))
            d = np.minimum(d, (np.abs(across - c) - hw).astype(np.float32))
        return d

    def _zone_points(self, gy: np.ndarray, gx: np.ndarray) -> np.ndarray:
        sd = self._seeds
        scores = np.stack(
            [
                _fbm_points(gy, gx, _ZONE_SCALE, sd["zone_u"]) + 0.00,
                _fbm_points(gy, gx, _ZONE_SCALE, sd["zone_a"]) + 0.08,
                _fbm_points(gy, gx, _ZONE_SCALE, sd["zone_f"]) + 0.02,
                _fbm_points(gy, gx, _ZONE_SCALE, sd["zone_b"]) - 0.04,
            ]
        )
        return np.argmax(scores, axis=0)

    def _zone_block(self, gy0: int, gx0: int, h: int, w: int) -> np.ndarray:
        sd = self._seeds
        best = _fbm_block(gy0, gx0, h, w, _ZONE_SCALE, sd["zone_u"])
        zone = np.zeros((h, w), dtype=np.uint8)
        for z, (name, bias) in enumerate((("zone_a", 0.08), ("zone_f", 0.02), ("zone_b", -0.04)), 1):
            s = _fbm_block(gy0, gx0, h, w, _ZONE_SCALE, sd[name]) + np.float32(bias)
            better = s > best
            zone[better] = z
            best = np.where(better, s, best)
        return zone

    def _buildings(self, r0: int, c0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Building mask and per-building roof value in [0,1) on a local window (may be shifted)."""
        oy, ox = self.origin_px
        gy = np.arange(h, dtype=np.int64) + r0 + oy
        gx = np.arange(w, dtype=np.int64) + c0 + ox
        b = _BUILDING_CELL
        cy, cx = gy // b, gx // b
        ucy = np.arange(cy[0], cy[-1] + 1)
        ucx = np.arange(cx[0], cx[-1] + 1)
        centre_y = (ucy[:, None] * b + b // 2).astype(np.float64)
        centre_x = (ucx[None, :] * b + b // 2).astype(np.float64)
        zone = self._zone_points(centre_y, centre_x)
        prob = np.choose(zone, [0.78, 0.05, 0.01, 0.03])
        hsh = _hash(self._seeds["building"], ucy[:, None], ucx[None, :])
        u = [_unit(_hash(int(k), hsh)) for k in range(6)]
        river_d = self._river_distance(centre_y - oy, centre_x - ox)
        present = (u[0] < prob) & (river_d > b)
        bh = (8 + u[1] * 13).astype(np.int64)
        bw = (8 + u[2] * 13).astype(np.int64)
        y0 = 2 + (u[3] * (b - 4 - bh + 1)).astype(np.int64)
        x0 = 2 + (u[4] * (b - 4 - bw + 1)).astype(np.int64)
        # paint each present rectangle (a few hundred per 1024x1024 window)
        mask = np.zeros((h, w), dtype=bool)
        roof = np.zeros((h, w), dtype=np.float32)
        base_y = ucy * b - (r0 + oy)  # window row of each cell's top edge
        base_x = ucx * b - (c0 + ox)
        for i, j in zip(*np.nonzero(present)):
            ya = max(0, int(base_y[i] + y0[i, j]))
            yb = min(h, int(base_y[i] + y0[i, j] + bh[i, j]))
            xa = max(0, int(base_x[j] + x0[i, j]))
            xb = min(w, int(base_x[j] + x0[i, j] + bw[i, j]))
            if ya < yb and xa < xb:
                mask[ya:yb, xa:xb] = True
                roof[ya:yb, xa:xb] = u[5][i, j]
        return mask, roof

    # ---- rendering -----------------------------------------------------------------------

    def render(self, row: int, col: int, height: int, width: int) -> _Block:
        """Render the window ``[row:row+height, col:col+width]`` (local pixels).

        Returns a block with ``labels`` (uint8, 255 outside the footprint), ``optical``
        (float32 ``[3, h, w]`` in 0..255), ``sar_db`` (float32 dB, speckled) and ``valid``.
        Windows may extend beyond the scene (the fields continue).
        """
        h, w = int(height), int(width)
        oy, ox = self.origin_px
        gy0, gx0 = row + oy, col + ox
        sd = self._seeds
        Y = (np.arange(h, dtype=np.float32) + row)[:, None]
        X = (np.arange(w, dtype=np.float32) + col)[None, :]
        GYi = (np.arange(h, dtype=np.int64) + gy0)[:, None]
        GXi = (np.arange(w, dtype=np.int64) + gx0)[None, :]

        zone = self._zone_block(gy0, gx0, h, w)

        # parcels (irregular through a smooth warp)
        wy = (_fbm_block(gy0, gx0, h, w, 90.0, sd["warp_y"], 2) - 0.5) * 40.0
        wx = (_fbm_block(gy0, gx0, h, w, 90.0, sd["warp_x"], 2) - 0.5) * 40.0
        ty = (GYi + wy) / np.float32(_PARCEL_H)
        tx = (GXi + wx) / np.float32(_PARCEL_W)
        py, px = np.floor(ty), np.floor(tx)
        ph = _hash(sd["parcel"], py.astype(np.int64), px.astype(np.int64)).reshape(h, w)
        pu = _unit(ph).astype(np.float32)
        pu2 = _unit(_mix64(ph ^ np.uint64(1))).astype(np.float32)
        pu3 = _unit(_mix64(ph ^ np.uint64(2))).astype(np.float32)
        edge = np.minimum(
            np.minimum(ty - py, 1 - (ty - py)) * _PARCEL_H, np.minimum(tx - px, 1 - (tx - px)) * _PARCEL_W
        )
        labels = np.full((h, w), FARMLAND, dtype=np.uint8)
        tables = {
            _AGRI: ((0.68, FARMLAND), (0.80, BARE_SOIL), (0.92, VEGETATION), (1.01, OTHER)),
            _FOREST: ((0.80, VEGETATION), (0.90, FARMLAND), (0.96, BARE_SOIL), (1.01, OTHER)),
            _BARE: ((0.65, BARE_SOIL), (0.80, OTHER), (0.92, VEGETATION), (1.01, FARMLAND)),
            _URBAN: ((0.45, OTHER), (0.75, VEGETATION), (0.95, BARE_SOIL), (1.01, FARMLAND)),
        }
        for z, table in tables.items():
            zm = zone == z
            lo = 0.0
            for hi, cls in table:
                labels[zm & (pu >= lo) & (pu < hi)] = cls
                lo = hi
        # hedgerows along parcel edges in agricultural land
        labels[(zone == _AGRI) & (edge < 1.5) & (pu3 < 0.35)] = VEGETATION
        # scattered "other" patches (yards, quarries, construction sites)
        oth = _fbm_block(gy0, gx0, h, w, 30.0, sd["other"], 2)
        labels[(oth > 0.76) & (zone != _FOREST)] = OTHER

        bld, roof_u = self._buildings(row, col, h, w)
        labels[bld] = BUILDING

        # roads: a warped major grid everywhere, a straight minor grid in urban zones
        major = np.zeros((h, w), dtype=bool)
        for axis, key, warp_key in (("h", "major_h", "road_warp_h"), ("v", "major_v", "road_warp_v")):
            warp = (_fbm_block(gy0, gx0, h, w, 500.0, sd[warp_key], 2) - 0.5) * 160.0
            t = (GYi if axis == "h" else GXi) + warp
            k = np.round(t / _MAJOR_SPACING)
            on = _unit(_hash(sd[key], k.astype(np.int64))).reshape(h, w) < 0.75
            major |= on & (np.abs(t - k * _MAJOR_SPACING) < _MAJOR_HALF_WIDTH)
        urban = zone == _URBAN
        minor = np.zeros((h, w), dtype=bool)
        for axis in (0, 1):
            t, other_t = (GYi, GXi) if axis == 0 else (GXi, GYi)
            k = np.floor((t + _MINOR_SPACING / 2) / _MINOR_SPACING)
            near = np.abs(t - k * _MINOR_SPACING) < _MINOR_HALF_WIDTH  # (h,1) or (1,w)
            seg = np.floor(other_t / _MINOR_SPACING)
            on = _unit(_hash(sd["minor"], axis, k.astype(np.int64), seg.astype(np.int64))) < 0.85
            minor |= near & on.reshape(np.broadcast(k, seg).shape)
        labels[minor & urban] = ROAD

        # water last: river(s) and ponds (roads stop at the bank)
        labels[major] = ROAD
        water = self._river_distance(Y, X) < 0
        pond = _fbm_block(gy0, gx0, h, w, 150.0, sd["pond"], 3)
        water |= (pond > 0.74) & ((zone == _AGRI) | (zone == _FOREST))
        labels[water] = WATER

        valid = np.ones((h, w), dtype=bool)
        if self.nodata_fraction > 0:
            valid = (Y / np.float32(self.height) + X / np.float32(self.width)) >= np.float32(self._cut)
            valid = np.broadcast_to(valid, (h, w)).copy()

        # ---- optical ----------------------------------------------------------------------
        rgb = np.zeros((3, h, w), dtype=np.float32)

        def paint(mask: np.ndarray, colour: Any) -> None:
            for c in range(3):
                rgb[c][mask] = colour[c][mask] if isinstance(colour[c], np.ndarray) else colour[c]

        turbid = _fbm_block(gy0, gx0, h, w, 220.0, sd["turbid"], 2)
        tmix = np.clip((turbid - 0.45) * 2.2, 0.0, 0.85)
        paint(labels == WATER, [25 + tmix * 105, 55 + tmix * 55, 65 + tmix * 15])
        texture = _fbm_block(gy0, gx0, h, w, 6.0, sd["texture"], 2)
        tex = 0.55 + 0.9 * texture
        paint(labels == VEGETATION, [50 * tex, 92 * tex, 44 * tex])
        theta = np.where(pu2 < 0.5, 0.0, np.pi / 2).astype(np.float32) + (pu2 - 0.5) * 0.6
        period = 4.0 + pu3 * 4.0
        stripes = np.sin(2 * np.pi * (GXi * np.cos(theta) + GYi * np.sin(theta)) / period).astype(np.float32)
        sfac = 1.0 + 0.12 * stripes
        paint(labels == FARMLAND, [(185 - 90 * pu) * sfac, (170 - 30 * pu) * sfac, (95 - 35 * pu) * sfac])
        bare_tex = _fbm_block(gy0, gx0, h, w, 40.0, sd["bare_tex"], 3)
        btx = 0.85 + 0.3 * bare_tex
        paint(labels == BARE_SOIL, [165 * btx, 135 * btx, 100 * btx])
        grey = 150 + 65 * roof_u
        red = roof_u > 0.8
        dark = roof_u < 0.1
        paint(labels == BUILDING, [np.where(red, 160, np.where(dark, 105, grey)),
                                   np.where(red, 85, np.where(dark, 105, grey)),
                                   np.where(red, 72, np.where(dark, 110, grey + 4))])
        paint(labels == ROAD, [112.0, 112.0, 116.0])
        orr = _noise_block(gy0, gx0, h, w, 14.0, sd["other_r"])
        ogg = _noise_block(gy0, gx0, h, w, 14.0, sd["other_g"])
        obb = _noise_block(gy0, gx0, h, w, 14.0, sd["other_b"])
        paint(labels == OTHER, [95 + 90 * orr, 95 + 80 * ogg, 85 + 70 * obb])
        # cast shadows (sun from the north-west)
        shadow = ~bld
        shadow &= self._buildings(row - 3, col - 3, h, w)[0]
        rgb[:, shadow] *= np.float32(0.45)
        illum = 0.92 + 0.16 * _fbm_block(gy0, gx0, h, w, 700.0, sd["illum"], 2)
        rgb *= illum
        rgb += np.float32(3.0) * _pixel_noise(gy0, gx0, h, w, self.seed, "optical_noise", "normal", 3)
        np.clip(rgb, 0.0, 255.0, out=rgb)

        # ---- SAR (dB) -----------------------------------------------------------------------
        base = np.choose(labels.astype(np.intp), [-22.0, 2.0, -18.0, -9.0, -12.0, -15.0, -11.0], mode="clip")
        db = base.astype(np.float32)
        wind = _fbm_block(gy0, gx0, h, w, 300.0, sd["wind"], 2)
        lw = labels == WATER
        db[lw] += (np.clip(wind - 0.5, 0, None) * 14.0)[lw]
        lv = labels == VEGETATION
        db[lv] += ((texture - 0.5) * 5.0)[lv]
        lf = labels == FARMLAND
        db[lf] += ((pu2 - 0.5) * 6.0 + 0.8 * stripes)[lf]
        lb = labels == BARE_SOIL
        db[lb] += ((bare_tex - 0.5) * 3.0)[lb]
        # double bounce on the sensor-facing (south) wall, radar shadow north of buildings
        below = self._buildings(row + 2, col, h, w)[0]
        db[bld & ~below] += 6.0
        behind = self._buildings(row + 3, col, h, w)[0]
        db[~bld & behind & (labels != WATER)] = -20.0
        linear = np.power(np.float32(10.0), db / np.float32(10.0))
        linear *= _pixel_noise(gy0, gx0, h, w, self.seed, "speckle", "gamma4")
        linear += np.float32(10 ** -2.6) * _pixel_noise(gy0, gx0, h, w, self.seed, "thermal", "exp")
        sar_db = (np.float32(10.0) * np.log10(linear)).astype(np.float32)

        labels[~valid] = IGNORE_INDEX
        return _Block(labels=labels, optical=rgb, sar_db=sar_db, valid=valid)

    def windows(self, block: int) -> Iterator[tuple[int, int, int, int]]:
        """``(row, col, height, width)`` of the blocks covering the scene, row-major."""
        for r in range(0, self.height, block):
            for c in range(0, self.width, block):
                yield r, c, min(block, self.height - r), min(block, self.width - c)


# --------------------------------------------------------------------------------------------
# GeoTIFF writing
# --------------------------------------------------------------------------------------------


@dataclass
class SceneFiles:
    """Paths and metadata of a scene written by :func:`write_scene`."""

    optical: Path
    sar: Path
    labels: Path
    height: int
    width: int
    seed: int
    crs: str
    transform: tuple[float, float, float, float, float, float]
    resolution: float
    optical_dtype: str
    optical_scale: float
    optical_nodata: float | None
    sar_units: str
    sar_nodata: float
    label_nodata: int = IGNORE_INDEX
    class_names: tuple[str, ...] = CLASS_NAMES
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def preprocess(self) -> dict[str, dict[str, Any]]:
        """Modality specs matching these files (the synthetic statistics, this dtype/units)."""
        opt = dict(DEFAULT_PREPROCESS["optical"], dtype=self.optical_dtype, scale=self.optical_scale)
        sar = dict(DEFAULT_PREPROCESS["sar"], units=self.sar_units)
        return {"optical": opt, "sar": sar}


def _profile(
    height: int, width: int, count: int, dtype: str, crs: Any, transform: Any, nodata: float | None
) -> dict[str, Any]:
    prof: dict[str, Any] = dict(
        driver="GTiff",
        height=height,
        width=width,
        count=count,
        dtype=dtype,
        crs=crs,
        transform=transform,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        predictor=3 if dtype.startswith("float") else 2,
        num_threads="ALL_CPUS",
        BIGTIFF="IF_SAFER",
    )
    if count > 1:
        prof["interleave"] = "pixel"
    if nodata is not None:
        prof["nodata"] = nodata
    return prof


def _from_origin(west: float, north: float, xres: float, yres: float) -> Any:
    """``rasterio.transform.from_origin`` without its Affine-multiplication deprecation warning."""
    from affine import Affine

    return Affine(float(xres), 0.0, float(west), 0.0, -float(yres), float(north))


def _encode_optical(block: _Block, optical_dtype: str, nodata: bool) -> np.ndarray:
    rgb = block.optical
    if optical_dtype == "uint8":
        out = np.rint(rgb).astype(np.uint8)
    else:
        out = np.rint(rgb * np.float32(OPTICAL_SCALE["uint16"] / 255.0)).astype(np.uint16)
    if nodata:
        np.maximum(out, 1, out=out)
        out[:, ~block.valid] = 0
    return out


def _encode_sar(block: _Block, sar_units: str) -> np.ndarray:
    if sar_units == "db":
        out = block.sar_db.copy()
    else:
        out = np.power(np.float32(10.0), block.sar_db / np.float32(10.0)).astype(np.float32)
    out[~block.valid] = SAR_NODATA
    return out


def write_scene(
    out_dir: str | Path,
    height: int,
    width: int,
    seed: int,
    crs: str = "EPSG:32633",
    resolution: float = 10.0,
    origin: tuple[float, float] = (500000.0, 4600000.0),
    block: int = 1024,
    nodata_fraction: float = 0.0,
    optical_dtype: Literal["uint8", "uint16"] = "uint8",
    sar_units: Literal["db", "linear"] = "db",
    river: bool | None = True,
    workers: int = 2,
    prefix: str = "",
) -> SceneFiles:
    """Write a co-registered ``optical.tif``, ``sar.tif`` and ``labels.tif`` scene, streamed.

    The scene is rendered and written ``block x block`` window by window (``workers`` threads
    render ahead of the writer; at most ``2 * workers`` blocks are held), so memory stays
    bounded (about 40 bytes per block pixel per held block) whatever the scene size.

    Files (tiled 256x256, deflate, north-up ``from_origin(origin[0], origin[1], res, res)``):

    - ``optical.tif``: 3 bands RGB, uint8 (or uint16 with ``dn = reflectance * 10000``);
      nodata 0 declared only when ``nodata_fraction > 0`` (valid pixels are then >= 1).
    - ``sar.tif``: 1 band float32, dB (or linear intensity); nodata -9999 always declared.
    - ``labels.tif``: 1 band uint8 class ids (:data:`CLASS_NAMES`), nodata 255 declared.

    Args:
        out_dir: folder to write into (created).
        height, width: scene size in pixels.
        seed: random seed (same seed -> identical files).
        crs, resolution, origin: georeferencing (origin = upper-left corner, map units).
        block: rendering window size in pixels (the output does not depend on it).
        nodata_fraction: fraction of the scene outside the footprint (north-west corner).
        optical_dtype: ``"uint8"`` or ``"uint16"``.
        sar_units: ``"db"`` or ``"linear"``.
        river: see :class:`SyntheticScene`.
        workers: rendering threads.
        prefix: file-name prefix (``f"{prefix}optical.tif"``...).
    """
    import rasterio
    if optical_dtype not in OPTICAL_SCALE:
        raise ValueError(f"optical_dtype must be one of {tuple(OPTICAL_SCALE)}, got {optical_dtype!r}")
    if sar_units not in ("db", "linear"):
        raise ValueError(f"sar_units must be 'db' or 'linear', got {sar_units!r}")
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scene = SyntheticScene(seed, height, width, nodata_fraction=nodata_fraction, river=river)
    transform = _from_origin(origin[0], origin[1], resolution, resolution)
    opt_nodata = 0.0 if nodata_fraction > 0 else None
    paths = (out / f"{prefix}optical.tif", out / f"{prefix}sar.tif", out / f"{prefix}labels.tif")
    profiles = (
        _profile(height, width, 3, optical_dtype, crs, transform, opt_nodata),
        _profile(height, width, 1, "float32", crs, transform, SAR_NODATA),
        _profile(height, width, 1, "uint8", crs, transform, IGNORE_INDEX),
    )
    windows = list(scene.windows(block))
    from rasterio.windows import Window

    with (
        rasterio.Env(GDAL_CACHEMAX=128),  # MB; GDAL's default (5% of RAM) would hold blocks
        rasterio.open(paths[0], "w", **profiles[0]) as dst_o,
        rasterio.open(paths[1], "w", **profiles[1]) as dst_s,
        rasterio.open(paths[2], "w", **profiles[2]) as dst_l,
    ):
        dst_l.update_tags(CLASS_NAMES=",".join(CLASS_NAMES))
        dst_s.update_tags(UNITS=sar_units)
        dst_o.update_tags(SCALE=str(OPTICAL_SCALE[optical_dtype]))
        dst_o.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                             rasterio.enums.ColorInterp.blue]

        def job(win: tuple[int, int, int, int]) -> tuple[Window, np.ndarray, np.ndarray, np.ndarray]:
            r, c, hh, ww = win
            b = scene.render(r, c, hh, ww)
            return (
                Window(c, r, ww, hh),
                _encode_optical(b, optical_dtype, nodata_fraction > 0),
                _encode_sar(b, sar_units),
                b.labels,
            )

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            pending: list[Any] = []
            it = iter(windows)
            for win in it:
                pending.append(pool.submit(job, win))
                if len(pending) >= 2 * max(1, workers):
                    break
            while pending:
                window, o, s, lab = pending.pop(0).result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(job, nxt))
                dst_o.write(o, window=window)
                dst_s.write(s, 1, window=window)
                dst_l.write(lab, 1, window=window)
    return SceneFiles(
        optical=paths[0],
        sar=paths[1],
        labels=paths[2],
        height=height,
        width=width,
        seed=seed,
        crs=str(crs),
        transform=tuple(transform)[:6],  # type: ignore[arg-type]
        resolution=float(resolution),
        optical_dtype=optical_dtype,
        optical_scale=OPTICAL_SCALE[optical_dtype],
        optical_nodata=opt_nodata,
        sar_units=sar_units,
        sar_nodata=SAR_NODATA,
        seconds=time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------------------------
# Text derived from label maps
# --------------------------------------------------------------------------------------------

_REGIONS = (("north-west", "north", "north-east"), ("west", "centre", "east"), ("south-west", "south", "south-east"))


def _region_name(cy: float, cx: float, h: int, w: int) -> str:
    i = min(2, max(0, int(3 * cy / max(h, 1))))
    j = min(2, max(0, int(3 * cx / max(w, 1))))
    return _REGIONS[i][j]


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    return lab, int(n)


def _water_components(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected water bodies, joined across bridges (gaps of a few road pixels)."""
    from scipy import ndimage

    water = labels == WATER
    bridged = water | (ndimage.binary_closing(water, iterations=4) & (labels == ROAD))
    lab, n = ndimage.label(bridged)
    lab[~water] = 0
    return lab, int(n)


def describe_labels(labels: np.ndarray, ignore_index: int = IGNORE_INDEX) -> str:
    """A one-sentence scene description derived from a label map (:data:`CLASS_NAMES` ids).

    Example: ``"a mostly agricultural area with a river crossing from north to south,
    scattered buildings and a road network"``.
    """
    labels = np.asarray(labels)
    valid = labels != ignore_index
    n = int(valid.sum())
    if n == 0:
        return "an area with no valid data"
    h, w = labels.shape
    frac = np.bincount(labels[valid].astype(np.int64), minlength=len(CLASS_NAMES))[: len(CLASS_NAMES)] / n
    if frac[BUILDING] + frac[ROAD] > 0.35:
        head = "a dense urban area"
    elif frac[WATER] > 0.4:
        head = "an area dominated by open water"
    elif frac[FARMLAND] > 0.4:
        head = "a mostly agricultural area"
    elif frac[VEGETATION] > 0.4:
        head = "a densely vegetated area"
    elif frac[BARE_SOIL] > 0.4:
        head = "a mostly barren area of bare soil"
    elif frac[BUILDING] > 0.08:
        head = "a suburban area"
    else:
        top = [CLASS_NAMES[i].replace("_", " ") for i in np.argsort(-frac)[:2] if frac[i] > 0]
        head = "a mixed landscape of " + " and ".join(top)
    parts: list[str] = []
    if frac[WATER] > 0.002:
        lab, nc = _water_components(labels)
        sizes = np.bincount(lab.ravel())[1:]
        big = int(np.argmax(sizes)) + 1
        ys, xs = np.nonzero(lab == big)
        ns = ys.min() == 0 and ys.max() == h - 1
        ew = xs.min() == 0 and xs.max() == w - 1
        if ns and (ys.max() - ys.min()) >= (xs.max() - xs.min()):
            parts.append("a river crossing from north to south")
        elif ew:
            parts.append("a river crossing from west to east")
        elif ns:
            parts.append("a river crossing from north to south")
        else:
            kind = "a lake" if sizes[big - 1] > 0.05 * n else "a small pond"
            parts.append(f"{kind} in the {_region_name(ys.mean(), xs.mean(), h, w)}")
    if frac[BUILDING] > 0:
        _, nb = _components(labels == BUILDING)
        if nb >= 15:
            parts.append("many buildings")
        elif nb >= 4:
            parts.append("scattered buildings")
        elif nb > 0:
            parts.append("a few isolated buildings")
    if frac[ROAD] > 0.04:
        parts.append("a dense road network")
    elif frac[ROAD] > 0.003:
        parts.append("a road")
    if not parts:
        return head
    tail = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{head} with {tail}"


@dataclass
class ReferringExpression:
    """A referring expression and the boolean mask of the object it refers to."""

    text: str
    mask: np.ndarray
    class_id: int
    kind: str


def referring_expressions(
    labels: np.ndarray, seed: int = 0, max_expressions: int = 3, min_pixels: int = 20
) -> list[ReferringExpression]:
    """Referring expressions with their target masks, derived from a label map.

    Candidate templates (each unique by construction: a superlative over connected
    components, with the target's position appended): "the largest water body in the
    north-east", "the largest building in the south", "the smallest building in the west",
    "the building closest to the road in the south", "the largest farmland field in the
    centre", "the largest vegetation patch next to the water in the east", "the largest area of
    bare soil in the north". Components smaller than ``min_pixels`` are skipped; ties skip the
    template. Up to ``max_expressions`` are returned, chosen by ``seed``.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    h, w = labels.shape
    cands: list[ReferringExpression] = []

    def comps(cls: int) -> tuple[np.ndarray, np.ndarray]:
        lab, n = _water_components(labels) if cls == WATER else _components(labels == cls)
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        sizes[0] = 0
        return lab, sizes

    def add(lab: np.ndarray, idx: int, cls: int, kind: str, text: str) -> None:
        mask = lab == idx
        ys, xs = np.nonzero(mask)
        region = _region_name(float(ys.mean()), float(xs.mean()), h, w)
        cands.append(ReferringExpression(f"{text} in the {region}", mask, cls, kind))

    def largest(cls: int, kind: str, text: str) -> None:
        lab, sizes = comps(cls)
        if sizes.max(initial=0) >= min_pixels and (sizes == sizes.max()).sum() == 1:
            add(lab, int(np.argmax(sizes)), cls, kind, text)

    largest(WATER, "largest_water", "the largest water body")
    largest(BUILDING, "largest_building", "the largest building")
    largest(FARMLAND, "largest_farmland", "the largest farmland field")
    largest(BARE_SOIL, "largest_bare", "the largest area of bare soil")
    lab_b, sizes_b = comps(BUILDING)
    ok = np.nonzero(sizes_b >= min_pixels)[0]
    if len(ok) >= 2:
        smin = sizes_b[ok].min()
        if (sizes_b[ok] == smin).sum() == 1:
            add(lab_b, int(ok[np.argmin(sizes_b[ok])]), BUILDING, "smallest_building", "the smallest building")
        road = labels == ROAD
        if road.any():
            dist = ndimage.distance_transform_edt(~road)
            dmin = np.asarray(ndimage.minimum(dist, lab_b, ok))
            if (dmin == dmin.min()).sum() == 1:
                add(lab_b, int(ok[np.argmin(dmin)]), BUILDING, "building_near_road",
                    "the building closest to the road")
    water = labels == WATER
    if water.any():
        lab_v, sizes_v = comps(VEGETATION)
        near = ndimage.binary_dilation(water, iterations=2)
        touching = np.unique(lab_v[near & (lab_v > 0)])
        if len(touching):
            s = sizes_v[touching]
            if s.max() >= min_pixels and (s == s.max()).sum() == 1:
                add(lab_v, int(touching[np.argmax(s)]), VEGETATION, "vegetation_near_water",
                    "the largest vegetation patch next to the water")
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 11])
    order = rng.permutation(len(cands))
    return [cands[i] for i in order[:max_expressions]]


# --------------------------------------------------------------------------------------------
# Tile datasets
# --------------------------------------------------------------------------------------------


def _tile_scene(seed: int, split: str, i: int, tile: int) -> SyntheticScene:
    s = _sub_seed(seed, f"tile/{split}/{i}")
    rng = np.random.default_rng([s & 0xFFFFFFFF, 3])
    # multiples of the noise tile, so a tile of <= 256 px draws a single noise tile per stream
    origin = (int(rng.integers(0, 1 << 14)) * _NOISE_TILE, int(rng.integers(0, 1 << 14)) * _NOISE_TILE)
    return SyntheticScene(s, tile, tile, river=None, origin_px=origin)


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, compress_level=1)


def _write_tif(path: Path, array: np.ndarray, transform: Any = None, crs: str | None = "EPSG:32633",
               nodata: float | None = None) -> None:
    import rasterio
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = array if array.ndim == 3 else array[None]
    prof: dict[str, Any] = dict(
        driver="GTiff", height=arr.shape[1], width=arr.shape[2], count=arr.shape[0], dtype=arr.dtype.name,
        crs=crs, transform=transform if transform is not None else _from_origin(500000, 4600000, 10, 10),
        compress="deflate",
    )
    if nodata is not None:
        prof["nodata"] = nodata
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(arr)


def make_tile_dataset(
    out_dir: str | Path,
    n_tiles: int,
    tile: int = 256,
    seed: int = 0,
    split: str = "train",
    layout: Literal["yeseg", "swjtu"] = "yeseg",
    sar_units: Literal["db", "linear"] = "db",
) -> Path:
    """Write ``n_tiles`` synthetic tiles of one split; returns the dataset root.

    Every tile is an independent small scene (its own seed and landscape offset; about half
    of them have a river). Layouts (see :mod:`rsvl_train.data.datasets`):

    - ``"yeseg"``: ``root/{split}/opt/NAME.png`` (RGB uint8), ``root/{split}/sar/NAME.tif``
      (float32 dB, or linear), ``root/{split}/lbl/NAME.png`` (uint8 ids, 255 ignore),
      ``root/{split}/txt/NAME.txt`` (scene description).
    - ``"swjtu"``: ``root/{optical,sar,label,text}/<region>/NAME.{png,tif,png,txt}`` with
      region ``"SYN_<split>"`` and the split list ``root/splits/{split}.txt``
      (one ``region/NAME`` a line).

    Call it once per split (different splits never share tiles). A 256x256 tile takes a few
    tens of milliseconds.
    """
    root = Path(out_dir)
    names: list[str] = []
    for i in range(n_tiles):
        scene = _tile_scene(seed, split, i, tile)
        b = scene.render(0, 0, tile, tile)
        name = f"{split}_{i:05d}"
        opt = np.rint(b.optical).astype(np.uint8).transpose(1, 2, 0)
        sar = b.sar_db if sar_units == "db" else np.power(10.0, b.sar_db / 10.0).astype(np.float32)
        text = describe_labels(b.labels)
        transform = _from_origin(500000.0 + 10.0 * tile * i, 4600000.0, 10.0, 10.0)
        if layout == "yeseg":
            base = root / split
            _write_png(base / "opt" / f"{name}.png", opt)
            _write_tif(base / "sar" / f"{name}.tif", sar, transform, nodata=SAR_NODATA)
            _write_png(base / "lbl" / f"{name}.png", b.labels)
            (base / "txt").mkdir(parents=True, exist_ok=True)
            (base / "txt" / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
        elif layout == "swjtu":
            region = f"SYN_{split}"
            _write_png(root / "optical" / region / f"{name}.png", opt)
            _write_tif(root / "sar" / region / f"{name}.tif", sar, transform, nodata=SAR_NODATA)
            _write_png(root / "label" / region / f"{name}.png", b.labels)
            (root / "text" / region).mkdir(parents=True, exist_ok=True)
            (root / "text" / region / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
            names.append(f"{region}/{name}")
        else:
            raise ValueError(f"layout must be 'yeseg' or 'swjtu', got {layout!r}")
    if layout == "swjtu":
        (root / "splits").mkdir(parents=True, exist_ok=True)
        (root / "splits" / f"{split}.txt").write_text("".join(n + "\n" for n in names), encoding="utf-8")
    return root


def make_referring_dataset(
    out_dir: str | Path,
    n: int,
    size: int = 256,
    seed: int = 0,
    splits: dict[str, float] | None = None,
    expressions_per_image: int = 2,
) -> Path:
    """Write an RRSIS-D-like referring segmentation folder of ``n`` images; returns the root.

    Layout (read by :class:`rsvl_train.data.datasets.RRSISDataset`)::

        root/images/NAME.png            RGB uint8, size x size
        root/masks/NAME_K.png           uint8, 255 = the referred object, 0 = background
        root/{split}.json               [{"image": "NAME.png", "mask": "NAME_K.png",
                                          "expression": "...", "class": "water",
                                          "ref_id": int}, ...]

    ``splits`` maps split name -> fraction of images (default train 0.8, val 0.1, test 0.1);
    images are assigned in order, so every split gets whole images.
    """
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    splits = splits or {"train": 0.8, "val": 0.1, "test": 0.1}
    names = list(splits)
    bounds = np.cumsum([splits[s] for s in names]) / sum(splits.values()) * n
    records: dict[str, list[dict[str, Any]]] = {s: [] for s in names}
    ref_id = 0
    i = k = 0
    while i < n:
        scene = _tile_scene(seed, "referring", k, size)
        k += 1
        b = scene.render(0, 0, size, size)
        exprs = referring_expressions(b.labels, seed=k, max_expressions=expressions_per_image)
        if not exprs:
            continue
        split = names[int(np.searchsorted(bounds, i, side="right"))] if i < bounds[-1] else names[-1]
        name = f"{i:05d}"
        _write_png(root / "images" / f"{name}.png", np.rint(b.optical).astype(np.uint8).transpose(1, 2, 0))
        for j, e in enumerate(exprs):
            mname = f"{name}_{j}.png"
            _write_png(root / "masks" / mname, (e.mask * 255).astype(np.uint8))
            records[split].append(
                {"image": f"{name}.png", "mask": mname, "expression": e.text,
                 "class": CLASS_NAMES[e.class_id], "ref_id": ref_id}
            )
            ref_id += 1
        i += 1
    for s, recs in records.items():
        (root / f"{s}.json").write_text(json.dumps(recs, indent=1), encoding="utf-8")
    return root


# --------------------------------------------------------------------------------------------
# Bad inputs for tests
# --------------------------------------------------------------------------------------------


def write_misregistered_pair(
    out_dir: str | Path,
    kind: Literal["crs", "resolution", "shift"] = "crs",
    height: int = 128,
    width: int = 128,
    seed: int = 0,
) -> SceneFiles:
    """A scene whose ``sar.tif`` does not line up with ``optical.tif``.

    ``kind``: ``"crs"`` (SAR in EPSG:32634 instead of EPSG:32633), ``"resolution"`` (SAR at
    20 m instead of 10 m, so half the rows/columns), ``"shift"`` (SAR grid moved by 3.5
    pixels east and 2 pixels south). ``SceneFiles.extra`` records the SAR CRS and transform.
    """
    import rasterio
    files = write_scene(out_dir, height, width, seed)
    origin = (500000.0, 4600000.0)
    with rasterio.open(files.sar) as src:
        data = src.read(1)
    if kind == "crs":
        crs, transform = "EPSG:32634", _from_origin(*origin, 10.0, 10.0)
    elif kind == "resolution":
        data = data[::2, ::2].copy()
        crs, transform = "EPSG:32633", _from_origin(*origin, 20.0, 20.0)
    elif kind == "shift":
        crs, transform = "EPSG:32633", _from_origin(origin[0] + 35.0, origin[1] - 20.0, 10.0, 10.0)
    else:
        raise ValueError(f"kind must be 'crs', 'resolution' or 'shift', got {kind!r}")
    _write_tif(files.sar, data, transform, crs=crs, nodata=SAR_NODATA)
    files.extra = {"kind": kind, "sar_crs": crs, "sar_transform": tuple(transform)[:6]}
    return files


def write_scene_job(
    root: str | Path,
    n_good: int,
    height: int,
    width: int,
    seed: int = 10,
    bad_kind: Literal["crs", "resolution", "shift"] = "crs",
    bad_index: int | None = None,
) -> Path:
    """A batch job: ``n_good`` co-registered scenes (``root/sceneNN/``) plus one misregistered pair
    (``root/bad/``), listed in ``root/scenes.csv`` (``id,optical,sar``, paths relative to ``root``;
    the bad pair at ``bad_index``, default last). Returns the manifest path."""
    import csv

    root = Path(root)
    rows = []
    for i in range(n_good):
        name = f"scene{i}"
        write_scene(root / name, height, width, seed=seed + i, workers=1)
        rows.append({"id": name, "optical": f"{name}/optical.tif", "sar": f"{name}/sar.tif"})
    write_misregistered_pair(root / "bad", kind=bad_kind, height=height, width=width, seed=seed - 7)
    bad = {"id": "bad", "optical": "bad/optical.tif", "sar": "bad/sar.tif"}
    rows.insert(len(rows) if bad_index is None else bad_index, bad)
    manifest = root / "scenes.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "optical", "sar"])
        w.writeheader()
        w.writerows(rows)
    return manifest


def write_corrupt_tif(path: str | Path, seed: int = 0, size: int = 64, keep_fraction: float = 0.5) -> Path:
    """Write a valid single-band float32 GeoTIFF, then truncate it to ``keep_fraction`` of its bytes."""
    p = Path(path)
    rng = np.random.default_rng(seed)
    data = rng.normal(-12.0, 5.0, (size, size)).astype(np.float32)
    import rasterio
    p.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        p, "w", driver="GTiff", height=size, width=size, count=1, dtype="float32",
        crs="EPSG:32633", transform=_from_origin(500000, 4600000, 10, 10),
    ) as dst:
        dst.write(data, 1)
    raw = p.read_bytes()
    p.write_bytes(raw[: max(16, int(len(raw) * keep_fraction))])
    return p
