"""Overviews of an output raster computed while its rows are written (pure numpy); the COG writer
(:mod:`rsvl_runtime.cog`) encodes them.

:class:`OverviewPyramid` receives each finished block of full-resolution rows (the row writer's
512-row block, :class:`~rsvl_runtime.outputs.GeoTiffRowWriter`) and reduces it 2x2 level by
level (:func:`reduce_average` for scores, :func:`reduce_mode` for labels and masks; level
``n + 1`` from level ``n``, nodata ignored, as GDAL does), writing each level into its own spool
next to the raster (``<spool>.ov<factor>.tif``, with the spool's creation options). The levels
equal GDAL's ``build_overviews`` bit for bit where the raster size is a multiple of the factor
(tested); elsewhere GDAL stretches its source windows over the whole width, ours stay f x f. A
block row is a multiple of every factor up to the block size, so a block reduces on its own,
with no state carried to the next one; levels above the block size (scenes over 131072 px on
the long side) are reduced from the last level when the raster closes.

Why: GDAL's ``build_overviews`` re-reads the finished raster after the tile loop and holds the
Python GIL while it computes (measured: a Python thread ran at 15-35 % of its speed beside it),
so the class table, preview and report could not run meanwhile. Reduced here, on blocks already in
memory, overviews cost a few numpy passes inside the loop, spread over the run's workers.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from .parallel import WorkPool

RESAMPLINGS = ("average", "mode")

__all__ = ["RESAMPLINGS", "OverviewPyramid", "reduce_average", "reduce_mode"]


def _quads(rows: np.ndarray, nodata: int) -> list[np.ndarray]:
    """The four pixels of each 2x2 group of ``rows [C, h, w]`` (odd edges padded with nodata):
    ``[top-left, top-right, bottom-left, bottom-right]``, each ``[C, ceil(h/2), ceil(w/2)]``."""
    c, h, w = rows.shape
    if h % 2 or w % 2:
        padded = np.full((c, h + h % 2, w + w % 2), nodata, rows.dtype)
        padded[:, :h, :w] = rows
        rows = padded
    if rows.dtype == np.uint8 and rows.strides[2] == 1 and rows.strides[1] % 2 == 0 and sys.byteorder == "little":
        # each pair of columns as one uint16 (the left pixel in the low byte): the four quads come
        # out contiguous, so the comparisons of reduce_mode run vectorised (12.4 -> 7.8 ms for
        # a 512 x 10000 label block; strided views of every other column do not)
        pairs = rows.view(np.uint16)
        top, bottom = pairs[:, 0::2], pairs[:, 1::2]
        low, shift = np.uint16(0xFF), np.uint16(8)
        return [(top & low).astype(np.uint8), (top >> shift).astype(np.uint8),
                (bottom & low).astype(np.uint8), (bottom >> shift).astype(np.uint8)]
    return [rows[:, 0::2, 0::2], rows[:, 0::2, 1::2], rows[:, 1::2, 0::2], rows[:, 1::2, 1::2]]


def _sum2x2(a: np.ndarray, dtype: Any) -> np.ndarray:
    """Sums of the 2x2 groups of ``a [C, h, w]`` as ``dtype`` (odd edges padded with 0; rows
    first: contiguous reads)."""
    c, h, w = a.shape
    if h % 2 or w % 2:
        padded = np.zeros((c, h + h % 2, w + w % 2), a.dtype)
        padded[:, :h, :w] = a
        a = padded
    half = a[:, 0::2].astype(dtype)
    half += a[:, 1::2]
    return half[:, :, 0::2] + half[:, :, 1::2]


def _mean(total: np.ndarray, count: np.ndarray | None, n: int, nodata: int) -> np.ndarray:
    """``round(total / count)`` (half up) as uint8, nodata where nothing was counted; ``count``
    None: every group counted ``n`` pixels."""
    out = ((total + n // 2) // n).astype(np.uint8)  # full groups; the others below
    if count is None:
        return out
    part = count < n
    t, k = total[part], count[part].astype(total.dtype)
    out[part] = np.where(k > 0, (t + k // 2) // np.maximum(k, 1), nodata).astype(np.uint8)
    return out


#: Every other byte of a uint64 (the left pixel of each column pair, or with ``>> 8`` the right one).
_EVEN_BYTES = np.uint64(0x00FF00FF00FF00FF)
#: 2 in each 16-bit lane: the half-up rounding of a sum of four.
_TWO_PER_LANE = np.uint64(0x0002000200020002)
#: Row pairs per pass of :func:`_mean_full_groups` (the scratch rows stay in the L2 cache:
#: 37 -> 11 ms per 7 x 512 x 10000 block against whole-array numpy passes).
_SWAR_ROW_PAIRS = 16


def _packable(rows: np.ndarray) -> bool:
    """Whether uint8 ``rows`` can be viewed as wider little-endian words, row by row (the packed
    paths of :func:`reduce_average` and :func:`reduce_mode`)."""
    return rows.dtype == np.uint8 and rows.flags.c_contiguous and sys.byteorder == "little"


def _mean_full_groups(rows: np.ndarray) -> np.ndarray:
    """``round((a + b + c + d) / 4)`` (half up) of every 2x2 group of uint8 ``rows [C, h, w]``
    (``h`` even, ``w`` a multiple of 8, rows contiguous): eight pixels per uint64 word, the sums
    in 16-bit lanes (at most 1020 + 2), the result in each lane's low byte."""
    c, h, w = rows.shape
    out = np.empty((c * h // 2, w // 2), np.uint8)
    words = rows.reshape(c * h, w).view(np.uint64)
    step = 2 * _SWAR_ROW_PAIRS
    total = np.empty((_SWAR_ROW_PAIRS, w // 8), np.uint64)
    part = np.empty_like(total)
    eight, two = np.uint64(8), np.uint64(2)
    for r in range(0, c * h, step):
        top, bottom = words[r:r + step:2], words[r + 1:r + step:2]
        s, t = total[:top.shape[0]], part[:top.shape[0]]
        np.bitwise_and(top, _EVEN_BYTES, out=s)
        np.right_shift(top, eight, out=t)
        t &= _EVEN_BYTES
        s += t
        np.bitwise_and(bottom, _EVEN_BYTES, out=t)
        s += t
        np.right_shift(bottom, eight, out=t)
        t &= _EVEN_BYTES
        s += t
        s += _TWO_PER_LANE
        s >>= two
        out[r // 2:r // 2 + s.shape[0]] = s.view(np.uint16)  # each lane's value (<= 255)
    return out.reshape(c, h // 2, w // 2)


def reduce_average(rows: np.ndarray, nodata: int) -> np.ndarray:
    """2x2 mean of uint8 ``rows [C, h, w]`` over the pixels that are not ``nodata``, rounded half
    up; a group of nodata only is nodata (GDAL's ``AVERAGE``, bit for bit)."""
    c, h, w = rows.shape
    has_nodata = (rows.min() == 0) if nodata == 0 else bool((rows == nodata).any())
    if not has_nodata and h % 2 == 0 and w % 8 == 0 and _packable(rows):
        return _mean_full_groups(rows)
    values = rows if nodata == 0 or not has_nodata else np.where(rows != nodata, rows, 0).astype(np.uint8)
    count = None
    if has_nodata or h % 2 or w % 2:
        count = _sum2x2((rows != nodata).view(np.uint8), np.uint8)
    return _mean(_sum2x2(values, np.uint16), count, 4, nodata)


def _mode_full_groups(rows: np.ndarray) -> np.ndarray:
    """GDAL's ``MODE`` of every 2x2 group ``a b / c d`` of uint8 ``rows [C, h, w]`` without
    nodata (``h``, ``w`` even, rows contiguous), in closed form: after ``a, b, c`` the answer is
    ``c`` when ``c == b != a`` (b and c reached 2 before a could), else ``a``, with a count of
    ``1 + [a == b] + [c in (a, b)]``; ``d`` replaces it when its count ``1 + [d == a] + [d == b]
    + [d == c]`` is higher. Cache-sized passes of :data:`_SWAR_ROW_PAIRS` x 2 row pairs."""
    c, h, w = rows.shape
    out = np.empty((c * h // 2, w // 2), np.uint8)
    pairs = rows.reshape(c * h, w).view(np.uint16)  # the left pixel of each pair in the low byte
    low, eight = np.uint16(0xFF), np.uint16(8)
    step = 4 * _SWAR_ROW_PAIRS
    for r in range(0, c * h, step):
        top, bottom = pairs[r:r + step:2], pairs[r + 1:r + step:2]
        a, b = (top & low).astype(np.uint8), (top >> eight).astype(np.uint8)
        q, d = (bottom & low).astype(np.uint8), (bottom >> eight).astype(np.uint8)
        a_b, b_q = a == b, b == q
        held = ((a == q) | b_q).view(np.uint8) + a_b.view(np.uint8)  # the best count after q, - 1
        d_count = (a == d).view(np.uint8) + (b == d).view(np.uint8) + (q == d).view(np.uint8)
        np.copyto(out[r // 2:r // 2 + a.shape[0]], np.where(d_count > held, d, np.where(b_q & ~a_b, q, a)))
    return out.reshape(c, h // 2, w // 2)


def reduce_mode(rows: np.ndarray, nodata: int) -> np.ndarray:
    """2x2 mode of uint8 ``rows [C, h, w]`` over the pixels that are not ``nodata``, exactly as
    GDAL's ``MODE``: the group is scanned row-major and the answer changes only when a value's
    running count beats the best so far (so on a tie the value that reached the count first
    wins); a group of nodata only is nodata."""
    counted = bool(rows.shape[1] % 2 or rows.shape[2] % 2 or (rows == nodata).any())  # padded or nodata
    if not counted and _packable(rows):
        return _mode_full_groups(rows)
    quads = _quads(rows, nodata)
    valid = [(q != nodata) for q in quads] if counted else None
    best_v = np.full(quads[0].shape, nodata, np.uint8)
    best_n = np.zeros(quads[0].shape, np.uint8)
    for t, q in enumerate(quads):
        n = np.ones(q.shape, np.uint8)  # running count of q among pixels 0..t
        for j in range(t):
            same = quads[j] == q
            if valid is not None:
                same &= valid[j]
            n += same
        if valid is not None:
            n *= valid[t]
        better = n > best_n
        np.copyto(best_v, q, where=better)
        np.maximum(best_n, n, out=best_n)
    return best_v


_REDUCE = {"average": reduce_average, "mode": reduce_mode}


class OverviewPyramid:
    """Overview levels (``factors``: 2, 4, ...) of a uint8 raster, fed block by block.

    ``base``: the full-resolution spool (the level files are ``<base>.ov<factor>.tif``);
    ``profile``: its rasterio profile (size, bands, CRS, transform, nodata); ``block``: rows per
    :meth:`add` call except the last (a multiple of 2). ``resume``: reopen the level files of a
    checkpointed run instead of creating them (the blocks already added stay).
    :attr:`seconds` is the time spent reducing and writing.
    """

    def __init__(self, base: str | os.PathLike[str], profile: dict[str, Any], factors: Sequence[int],
                 resampling: str, block: int, resume: bool = False) -> None:
        if resampling not in RESAMPLINGS:
            raise ValueError(f"overview resampling must be one of {RESAMPLINGS}, got {resampling!r}")
        self.base = Path(base)
        self.profile = dict(profile)
        self.factors = [int(f) for f in factors]
        self.resampling = resampling
        self.block = int(block)
        if profile.get("nodata") is None:
            raise ValueError("an overview pyramid needs the raster's nodata value (ignored when reducing)")
        self.nodata = int(profile["nodata"])
        self.streamed = [f for f in self.factors if f <= self.block]  # reduced block by block
        self.seconds = 0.0
        self._ds: dict[int, Any] = {}
        mode = "r+" if resume else "w"
        for f in self.streamed:
            self._ds[f] = self._open(f, mode)

    def path(self, factor: int) -> Path:
        return Path(f"{self.base}.ov{factor}.tif")

    @property
    def paths(self) -> list[Path]:
        return [self.path(f) for f in self.factors]

    def _level_profile(self, factor: int) -> dict[str, Any]:
        p = self.profile
        w, h = -(-int(p["width"]) // factor), -(-int(p["height"]) // factor)
        keep = {k: v for k, v in p.items() if k not in ("zlevel", "photometric")}
        # tiles as tall as the rows one block reduces to: each add() writes whole tiles (a partial
        # tile is re-read and re-encoded when the next block fills it; measured 1.7x slower for
        # 7 bands x 10000 px); TIFF tiles are multiples of 16 rows
        return {**keep, "width": w, "height": h, "transform": p["transform"] @ rasterio.Affine.scale(factor),
                "tiled": True, "blockxsize": 512, "blockysize": max(16, self.block // factor),
                "BIGTIFF": "IF_SAFER"}

    def _open(self, factor: int, mode: str) -> Any:
        if mode == "w":
            return rasterio.open(self.path(factor), "w", **self._level_profile(factor))
        return rasterio.open(self.path(factor), "r+")

    def add(self, y0: int, rows: np.ndarray, pool: WorkPool | None = None) -> None:
        """Reduce the full-resolution rows ``[C, n, W]`` starting at scene row ``y0`` (a multiple
        of the block) into every streamed level; ``pool``: split the bands over its workers
        (each band reduces on its own, so the levels are the same)."""
        t0 = time.perf_counter()
        if y0 % self.block:
            raise ValueError(f"overview block at row {y0} is not aligned to {self.block} rows")

        def reduce(bands: slice) -> list[np.ndarray]:
            levels, level = [], rows[bands]
            for _ in self.streamed:  # each level from the one below, as GDAL does
                level = _REDUCE[self.resampling](level, self.nodata)
                levels.append(level)
            return levels

        pool = pool or WorkPool(1)
        split = pool.map(reduce, pool.ranges(rows.shape[0]))
        levels = split[0] if len(split) == 1 else [np.concatenate(ls) for ls in zip(*split)]
        for f, level in zip(self.streamed, levels):
            self._ds[f].write(level, window=Window(0, y0 // f, level.shape[2], level.shape[1]))
        self.seconds += time.perf_counter() - t0

    def checkpoint(self) -> None:
        """Make the levels written so far durable (close and reopen the level files)."""
        for f, ds in list(self._ds.items()):
            ds.close()
            self._ds[f] = self._open(f, "r+")

    def close(self) -> None:
        """Close the streamed levels and reduce the ones above the block size from the last."""
        for ds in self._ds.values():
            ds.close()
        self._ds = {}
        t0 = time.perf_counter()
        rest = [f for f in self.factors if f not in self.streamed]
        if rest:
            with rasterio.open(self.path(self.streamed[-1] if self.streamed else 1)) as src:
                level = src.read()
            for f in rest:
                level = _REDUCE[self.resampling](level, self.nodata)
                with rasterio.open(self.path(f), "w", **self._level_profile(f)) as ds:
                    ds.write(level)
        self.seconds += time.perf_counter() - t0

    def abort(self) -> None:
        for ds in self._ds.values():
            if not ds.closed:
                ds.close()
        self._ds = {}

    def remove(self) -> None:
        """Delete the level files."""
        for p in self.paths:
            p.unlink(missing_ok=True)
            Path(f"{p}.aux.xml").unlink(missing_ok=True)
