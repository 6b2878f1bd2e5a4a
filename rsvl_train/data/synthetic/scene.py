"""The synthetic scene model: :class:`SyntheticScene` renders any window of a deterministic
optical + SAR + label scene in memory.

Every label decision and every smooth field is a function of the global pixel coordinate
(hashed lattices from :mod:`rsvl_train.data.synthetic.noise`, analytic rivers and road grids),
so a window renders to the same values whichever block size it is rendered with. The class
appearance is tabulated in :mod:`rsvl_train.data.synthetic` (the package docstring).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .constants import (
    BARE_SOIL,
    BUILDING,
    FARMLAND,
    IGNORE_INDEX,
    OTHER,
    ROAD,
    VEGETATION,
    WATER,
)
from .noise import (
    fbm_block,
    fbm_points,
    hash_keys,
    mix64,
    noise_block,
    pixel_noise,
    sub_seed,
    unit,
)

__all__ = ["SceneBlock", "SyntheticScene"]

# Feature sizes in pixels.
_ZONE_SCALE = 380.0
_PARCEL_H, _PARCEL_W = 64, 96
_BUILDING_CELL = 28
_MAJOR_SPACING, _MAJOR_HALF_WIDTH = 320, 3.0
_MINOR_SPACING, _MINOR_HALF_WIDTH = 84, 2.0
_URBAN, _AGRI, _FOREST, _BARE = range(4)


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
class SceneBlock:
    """One rendered window of a :class:`SyntheticScene`."""

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
            name: sub_seed(s, name)
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
                fbm_points(gy, gx, _ZONE_SCALE, sd["zone_u"]) + 0.00,
                fbm_points(gy, gx, _ZONE_SCALE, sd["zone_a"]) + 0.08,
                fbm_points(gy, gx, _ZONE_SCALE, sd["zone_f"]) + 0.02,
                fbm_points(gy, gx, _ZONE_SCALE, sd["zone_b"]) - 0.04,
            ]
        )
        return np.argmax(scores, axis=0)

    def _zone_block(self, gy0: int, gx0: int, h: int, w: int) -> np.ndarray:
        sd = self._seeds
        best = fbm_block(gy0, gx0, h, w, _ZONE_SCALE, sd["zone_u"])
        zone = np.zeros((h, w), dtype=np.uint8)
        for z, (name, bias) in enumerate((("zone_a", 0.08), ("zone_f", 0.02), ("zone_b", -0.04)), 1):
            s = fbm_block(gy0, gx0, h, w, _ZONE_SCALE, sd[name]) + np.float32(bias)
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
        hsh = hash_keys(self._seeds["building"], ucy[:, None], ucx[None, :])
        u = [unit(hash_keys(int(k), hsh)) for k in range(6)]
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

    def render(self, row: int, col: int, height: int, width: int) -> SceneBlock:
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
        wy = (fbm_block(gy0, gx0, h, w, 90.0, sd["warp_y"], 2) - 0.5) * 40.0
        wx = (fbm_block(gy0, gx0, h, w, 90.0, sd["warp_x"], 2) - 0.5) * 40.0
        ty = (GYi + wy) / np.float32(_PARCEL_H)
        tx = (GXi + wx) / np.float32(_PARCEL_W)
        py, px = np.floor(ty), np.floor(tx)
        ph = hash_keys(sd["parcel"], py.astype(np.int64), px.astype(np.int64)).reshape(h, w)
        pu = unit(ph).astype(np.float32)
        pu2 = unit(mix64(ph ^ np.uint64(1))).astype(np.float32)
        pu3 = unit(mix64(ph ^ np.uint64(2))).astype(np.float32)
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
        oth = fbm_block(gy0, gx0, h, w, 30.0, sd["other"], 2)
        labels[(oth > 0.76) & (zone != _FOREST)] = OTHER

        bld, roof_u = self._buildings(row, col, h, w)
        labels[bld] = BUILDING

        # roads: a warped major grid everywhere, a straight minor grid in urban zones
        major = np.zeros((h, w), dtype=bool)
        for axis, key, warp_key in (("h", "major_h", "road_warp_h"), ("v", "major_v", "road_warp_v")):
            warp = (fbm_block(gy0, gx0, h, w, 500.0, sd[warp_key], 2) - 0.5) * 160.0
            t = (GYi if axis == "h" else GXi) + warp
            k = np.round(t / _MAJOR_SPACING)
            on = unit(hash_keys(sd[key], k.astype(np.int64))).reshape(h, w) < 0.75
            major |= on & (np.abs(t - k * _MAJOR_SPACING) < _MAJOR_HALF_WIDTH)
        urban = zone == _URBAN
        minor = np.zeros((h, w), dtype=bool)
        for axis in (0, 1):
            t, other_t = (GYi, GXi) if axis == 0 else (GXi, GYi)
            k = np.floor((t + _MINOR_SPACING / 2) / _MINOR_SPACING)
            near = np.abs(t - k * _MINOR_SPACING) < _MINOR_HALF_WIDTH  # (h,1) or (1,w)
            seg = np.floor(other_t / _MINOR_SPACING)
            on = unit(hash_keys(sd["minor"], axis, k.astype(np.int64), seg.astype(np.int64))) < 0.85
            minor |= near & on.reshape(np.broadcast(k, seg).shape)
        labels[minor & urban] = ROAD

        # water last: river(s) and ponds (roads stop at the bank)
        labels[major] = ROAD
        water = self._river_distance(Y, X) < 0
        pond = fbm_block(gy0, gx0, h, w, 150.0, sd["pond"], 3)
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

        turbid = fbm_block(gy0, gx0, h, w, 220.0, sd["turbid"], 2)
        tmix = np.clip((turbid - 0.45) * 2.2, 0.0, 0.85)
        paint(labels == WATER, [25 + tmix * 105, 55 + tmix * 55, 65 + tmix * 15])
        texture = fbm_block(gy0, gx0, h, w, 6.0, sd["texture"], 2)
        tex = 0.55 + 0.9 * texture
        paint(labels == VEGETATION, [50 * tex, 92 * tex, 44 * tex])
        theta = np.where(pu2 < 0.5, 0.0, np.pi / 2).astype(np.float32) + (pu2 - 0.5) * 0.6
        period = 4.0 + pu3 * 4.0
        stripes = np.sin(2 * np.pi * (GXi * np.cos(theta) + GYi * np.sin(theta)) / period).astype(np.float32)
        sfac = 1.0 + 0.12 * stripes
        paint(labels == FARMLAND, [(185 - 90 * pu) * sfac, (170 - 30 * pu) * sfac, (95 - 35 * pu) * sfac])
        bare_tex = fbm_block(gy0, gx0, h, w, 40.0, sd["bare_tex"], 3)
        btx = 0.85 + 0.3 * bare_tex
        paint(labels == BARE_SOIL, [165 * btx, 135 * btx, 100 * btx])
        grey = 150 + 65 * roof_u
        red = roof_u > 0.8
        dark = roof_u < 0.1
        paint(labels == BUILDING, [np.where(red, 160, np.where(dark, 105, grey)),
                                   np.where(red, 85, np.where(dark, 105, grey)),
                                   np.where(red, 72, np.where(dark, 110, grey + 4))])
        paint(labels == ROAD, [112.0, 112.0, 116.0])
        orr = noise_block(gy0, gx0, h, w, 14.0, sd["other_r"])
        ogg = noise_block(gy0, gx0, h, w, 14.0, sd["other_g"])
        obb = noise_block(gy0, gx0, h, w, 14.0, sd["other_b"])
        paint(labels == OTHER, [95 + 90 * orr, 95 + 80 * ogg, 85 + 70 * obb])
        # cast shadows (sun from the north-west)
        shadow = ~bld
        shadow &= self._buildings(row - 3, col - 3, h, w)[0]
        rgb[:, shadow] *= np.float32(0.45)
        illum = 0.92 + 0.16 * fbm_block(gy0, gx0, h, w, 700.0, sd["illum"], 2)
        rgb *= illum
        rgb += np.float32(3.0) * pixel_noise((gy0, gx0, h, w), self.seed, "optical_noise", "normal", 3)
        np.clip(rgb, 0.0, 255.0, out=rgb)

        # ---- SAR (dB) -----------------------------------------------------------------------
        base = np.choose(labels.astype(np.intp), [-22.0, 2.0, -18.0, -9.0, -12.0, -15.0, -11.0], mode="clip")
        db = base.astype(np.float32)
        wind = fbm_block(gy0, gx0, h, w, 300.0, sd["wind"], 2)
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
        linear *= pixel_noise((gy0, gx0, h, w), self.seed, "speckle", "gamma4")
        linear += np.float32(10 ** -2.6) * pixel_noise((gy0, gx0, h, w), self.seed, "thermal", "exp")
        sar_db = (np.float32(10.0) * np.log10(linear)).astype(np.float32)

        labels[~valid] = IGNORE_INDEX
        return SceneBlock(labels=labels, optical=rgb, sar_db=sar_db, valid=valid)

    def windows(self, block: int) -> Iterator[tuple[int, int, int, int]]:
        """``(row, col, height, width)`` of the blocks covering the scene, row-major."""
        for r in range(0, self.height, block):
            for c in range(0, self.width, block):
                yield r, c, min(block, self.height - r), min(block, self.width - c)
