"""Tile grid, blending window and streaming accumulation of tiled logits (pure numpy).

A scene of ``height x width`` pixels is covered by square tiles of ``tile`` pixels whose
offsets advance by ``stride = round(tile * (1 - overlap))``. The last tile of a row/column is
shifted back so that it ends on the scene edge (ragged edges never produce a tile that hangs
outside the scene). A scene dimension smaller than a tile gets a single tile at offset 0; the
caller pads the data (:func:`pad_to_tile`, reflect) and the logits are cropped back.

Overlapping tiles are blended with a smooth separable window (Hann, or triangular) whose
values never drop below ``floor``: a pixel covered by a single tile (scene borders) still gets
a positive weight, and since the blended value is ``sum(w * logits) / sum(w)`` (the weights
normalised per pixel before they are applied, :func:`normalised_profiles`) a per-pixel function
is reproduced everywhere, with no seams.

:class:`RowAccumulator` keeps only the rows of the scene that tiles can still touch
(``[K, min(tile, height), width]`` float32) and hands back finished rows as soon as the next
row of tiles starts, so memory does not grow with the scene height.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .parallel import WorkPool, split_range

#: Default smallest window weight (relative to the window's peak of 1).
WINDOW_FLOOR = 1e-3
WINDOW_KINDS = ("hann", "triangular", "flat")


def tile_stride(tile: int, overlap: float) -> int:
    """Offset between consecutive tiles: ``round(tile * (1 - overlap))``, at least 1."""
    _check_tile(tile, overlap)
    return max(1, round(tile * (1.0 - overlap)))


def _check_tile(tile: int, overlap: float) -> None:
    if int(tile) != tile or tile < 1:
        raise ValueError(f"tile size must be a positive integer, got {tile!r}")
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"tile overlap must be a fraction in [0, 1), got {overlap!r}")


def tile_offsets(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of the tiles along one axis of ``length`` pixels.

    Tiles advance by :func:`tile_stride`; the last one is shifted back to end on the edge.
    ``length <= tile`` gives ``[0]`` (one padded tile).
    """
    if length < 1:
        raise ValueError(f"cannot tile an axis of length {length}")
    stride = tile_stride(tile, overlap)
    if length <= tile:
        return [0]
    offsets = list(range(0, length - tile, stride))
    offsets.append(length - tile)
    return offsets


@dataclass(frozen=True)
class Tile:
    """One tile: its row/column index in the grid, its offset and its extent inside the scene."""

    row: int
    col: int
    y: int
    x: int
    height: int  # rows of the tile that lie inside the scene (< tile only for small scenes)
    width: int


@dataclass(frozen=True)
class TileGrid:
    """The tiles that cover a ``height x width`` scene."""

    height: int
    width: int
    tile: int
    overlap: float = 0.25

    def __post_init__(self) -> None:
        _check_tile(self.tile, self.overlap)
        if self.height < 1 or self.width < 1:
            raise ValueError(f"cannot tile an empty scene ({self.height}x{self.width})")

    @property
    def stride(self) -> int:
        """Offset between consecutive tiles."""
        return tile_stride(self.tile, self.overlap)

    @property
    def row_offsets(self) -> list[int]:
        """Row offsets (y) of the rows of tiles."""
        return tile_offsets(self.height, self.tile, self.overlap)

    @property
    def col_offsets(self) -> list[int]:
        """Column offsets (x) of the columns of tiles."""
        return tile_offsets(self.width, self.tile, self.overlap)

    @property
    def strip_height(self) -> int:
        """Rows of scene covered by one row of tiles: ``min(tile, height)``."""
        return min(self.tile, self.height)

    @property
    def n_tiles(self) -> int:
        """Number of tiles."""
        return len(self.row_offsets) * len(self.col_offsets)

    def strip_rows(self, row: int) -> tuple[int, int]:
        """Scene rows ``[y0, y1)`` read for the row of tiles ``row``."""
        y0 = self.row_offsets[row]
        return y0, y0 + self.strip_height

    def row_tiles(self, row: int) -> list[Tile]:
        """The tiles of one row of tiles, left to right."""
        y = self.row_offsets[row]
        h = min(self.tile, self.height - y)
        return [Tile(row, c, y, x, h, min(self.tile, self.width - x))
                for c, x in enumerate(self.col_offsets)]

    def tiles(self) -> Iterator[Tile]:
        """All tiles in row-major order."""
        for r in range(len(self.row_offsets)):
            yield from self.row_tiles(r)


def window_1d(size: int, kind: str = "hann", floor: float = WINDOW_FLOOR) -> np.ndarray:
    """A symmetric 1-D weight profile peaking at 1, never below ``floor``.

    ``hann``: ``sin(pi * (i + 0.5) / size) ** 2``; ``triangular``: ``1 - |2 (i + 0.5) / size - 1|``;
    ``flat``: ones (plain averaging).
    """
    if kind not in WINDOW_KINDS:
        raise ValueError(f"window kind must be one of {WINDOW_KINDS}, got {kind!r}")
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"window floor must be in (0, 1], got {floor!r}")
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size
    if kind == "hann":
        w = np.sin(np.pi * centres) ** 2
    elif kind == "triangular":
        w = 1.0 - np.abs(2.0 * centres - 1.0)
    else:
        w = np.ones(size)
    w = w / w.max()
    return (floor + (1.0 - floor) * w).astype(np.float32)


def pad_to_tile(arr: np.ndarray, tile: int, mode: str = "reflect") -> np.ndarray:
    """Pad the last two axes of ``arr`` at the bottom/right up to ``tile`` (no-op when full).

    ``reflect`` mirrors the data (an axis of length 1 is repeated instead).
    """
    h, w = arr.shape[-2:]
    if h == tile and w == tile:
        return arr
    if h > tile or w > tile:
        raise ValueError(f"array {h}x{w} is larger than the tile ({tile})")
    pad = [(0, 0)] * (arr.ndim - 2) + [(0, tile - h), (0, tile - w)]
    if mode == "reflect" and min(h, w) == 1:
        mode = "edge"
    return np.pad(arr, pad, mode=mode)  # type: ignore[call-overload]


def normalised_profiles(offsets: Sequence[int], length: int, tile: int, profile: np.ndarray) -> list[np.ndarray]:
    """Per tile along one axis (its offset in ``offsets``), the window profile over the tile's
    extent divided by the sum of the profiles of every tile covering each pixel: along the axis
    the weights of a pixel sum to 1, and a pixel covered by one tile gets exactly 1."""
    total = np.zeros(length, np.float64)
    spans = [(o, min(tile, length - o)) for o in offsets]
    for o, n in spans:
        total[o:o + n] += profile[:n]
    return [(profile[:n] / total[o:o + n]).astype(np.float32) for o, n in spans]


@dataclass
class FinishedRows:
    """Blended logits of scene rows ``[y0, y0 + n)`` that no tile touches any more.

    ``strip`` is the row of tiles whose strip starts with these rows. ``values`` may be a view
    into the accumulator (see :meth:`RowAccumulator.add`): use it before the next ``add``; the
    accumulator does not read these rows again, so they may be overwritten in place.
    """

    strip: int
    y0: int
    values: np.ndarray  # [K, n, width] float32, sum over tiles of normalised weight * logits

    @property
    def n_rows(self) -> int:
        return int(self.values.shape[1])

    def logits(self, rows: slice = slice(None)) -> np.ndarray:
        """Blended logits ``[K, r, width]`` of the given rows (default: all), as ``values``
        holds them (a view when ``values`` is one)."""
        return self.values[:, rows]


class RowAccumulator:
    """Streaming weighted accumulation of tile logits, one row of tiles at a time.

    The blend is ``sum_t w_t * logits_t`` with per-pixel weights that sum to 1. The window is
    separable and the grid is a product of row and column offsets, so the sum of the windows
    over the tiles covering a pixel is the product of the row sum and the column sum; each tile's
    weight is its row profile over the row sums times its column profile over the column sums
    (:func:`normalised_profiles`), computed once for the grid. No weight sum is accumulated and
    no division is left for the finished rows.

    Holds ``[K, strip_height, width]`` for the scene rows ``[y_r, y_r + strip_height)`` of the
    current row of tiles ``r``. Tiles must arrive in row-major order (:meth:`TileGrid.tiles`); when
    a tile of the next row arrives, the rows above it are final and returned as
    :class:`FinishedRows`, and the buffer slides down. The part of a tile that no earlier tile
    covers is stored (weight * logits) instead of added, so the buffer is never zeroed.

    ``profile``: the 1-D window profile (:func:`window_1d`, default Hann). ``start_row``: the
    first row of tiles fed (a resumed run); rows of strips it does not fully cover are emitted
    with partial sums and must be discarded by the caller
    (:func:`rsvl_runtime.resume.resume_plan` picks a start that leaves the wanted rows exact).
    """

    def __init__(self, grid: TileGrid, channels: int, profile: np.ndarray | None = None,
                 start_row: int = 0) -> None:
        if channels < 1:
            raise ValueError(f"need at least one logit channel, got {channels}")
        self.grid = grid
        self.channels = channels
        self.profile = window_1d(grid.tile) if profile is None else np.asarray(profile, np.float32)
        if self.profile.shape != (grid.tile,):
            raise ValueError(f"window profile shape {self.profile.shape} != ({grid.tile},)")
        self._rows = grid.row_offsets
        self._wy = normalised_profiles(self._rows, grid.height, grid.tile, self.profile)
        self._wx = normalised_profiles(grid.col_offsets, grid.width, grid.tile, self.profile)
        self._wy_id = _dedupe(self._wy)
        self._wx_id = _dedupe(self._wx)
        self._weights: dict[tuple[int, int], np.ndarray] = {}
        h = grid.strip_height
        self._acc = np.zeros((channels, h, grid.width), np.float32)
        if not 0 <= start_row < len(self._rows):
            raise ValueError(f"start_row {start_row} outside the grid's {len(self._rows)} rows of tiles")
        self._row = start_row
        self._carry = 0  # top rows of the buffer that hold the previous strip's sums
        self._col_end = 0  # columns [0, _col_end) of the fresh rows hold this strip's sums
        self._last_x = -1  # column offset of the strip's last tile
        self._done = False
        self._scratch: np.ndarray | None = None

    def weight(self, tile: Tile) -> np.ndarray:
        """The normalised 2-D weight ``[tile.height, tile.width]`` of ``tile`` (cached per
        distinct pair of row and column profiles)."""
        key = (self._wy_id[tile.row], self._wx_id[tile.col])
        w = self._weights.get(key)
        if w is None:
            if len(self._weights) >= MAX_CACHED_WEIGHTS:
                self._weights.clear()
            w = self._weights[key] = np.multiply.outer(self._wy[tile.row], self._wx[tile.col])
        return w

    def add(self, tile: Tile, logits: np.ndarray,
            emit: Callable[[FinishedRows], None] | None = None) -> list[FinishedRows]:
        """Accumulate ``logits [K, tile, tile]`` of ``tile``.

        Rows finished by this tile (when it starts a new row of tiles) are passed to ``emit`` as
        views into the buffer, valid only during the call (no copy); without ``emit`` they are
        returned as copies.
        """
        if self._done:
            raise RuntimeError("RowAccumulator.finish() was already called")
        finished = self._to_row(tile.row, emit)
        region = self._claim(tile)
        self._accumulate(tile, logits, self._scratch_for(logits[None])[0], region)
        return finished

    def add_batch(self, tiles: Sequence[Tile], logits: np.ndarray,
                  emit: Callable[[FinishedRows], None], pool: WorkPool | None = None) -> None:
        """:meth:`add` for a batch (``logits [B, K, tile, tile]``), finished rows passed to
        ``emit``; with a ``pool`` the tiles of each row of tiles are accumulated by its workers
        at once, each over its own band of every tile's rows (disjoint rows of the buffer; all
        channels: a split by channel left one worker 4 of K = 7 planes)."""
        if self._done:
            raise RuntimeError("RowAccumulator.finish() was already called")
        scratch = self._scratch_for(logits)
        i = 0
        while i < len(tiles):
            j = i
            while j < len(tiles) and tiles[j].row == tiles[i].row:
                j += 1
            self._to_row(tiles[i].row, emit)
            group = [(g, self._claim(tiles[g])) for g in range(i, j)]
            parts = pool.workers if pool is not None else 1

            def work(part: int, group: list[tuple[int, tuple[int, int]]] = group) -> None:
                for g, region in group:
                    bands = split_range(tiles[g].height, parts)
                    if part < len(bands):
                        self._accumulate(tiles[g], logits[g], scratch[g], region, bands[part])

            if pool is not None and parts > 1:
                pool.map(work, range(parts))
            else:
                work(0)
            i = j

    def _to_row(self, row: int, emit: Callable[[FinishedRows], None] | None) -> list[FinishedRows]:
        if row < self._row:
            raise ValueError(f"tile of row {row} arrived after row {self._row}: "
                             "tiles must come in row-major order")
        finished = []
        while row > self._row:
            fin = self._advance(emit)
            if fin is not None:
                finished.append(fin)
        return finished

    def _claim(self, tile: Tile) -> tuple[int, int]:
        """``(carry, col_end)`` for ``tile``: buffer rows ``[0, carry)`` and, below them, the
        columns before ``col_end`` already hold sums (added to); the rest of the tile is stored."""
        if tile.x <= self._last_x:
            raise ValueError(f"tile at column {tile.x} of row {tile.row} arrived after the one at column "
                             f"{self._last_x}: tiles must come in row-major order")
        region = (self._carry, self._col_end)
        self._col_end = max(self._col_end, tile.x + tile.width)
        self._last_x = tile.x
        return region

    def _scratch_for(self, logits: np.ndarray) -> np.ndarray:
        """A reused float32 buffer of ``logits``' shape (a batch's weighted logits)."""
        if self._scratch is None or self._scratch.shape[1:] != logits.shape[1:] \
                or self._scratch.shape[0] < logits.shape[0]:
            self._scratch = np.empty(logits.shape, np.float32)
        return self._scratch[:logits.shape[0]]

    def _accumulate(self, tile: Tile, logits: np.ndarray, scratch: np.ndarray,
                    region: tuple[int, int], band: slice | None = None) -> None:
        """The tile's ``weight * logits`` (its rows ``band``, default all) into the buffer: added
        where earlier tiles left sums (the carried rows; the columns before ``col_end``), stored
        elsewhere. Every pixel is computed on its own, so any split into bands gives the same bits."""
        h, w = tile.height, tile.width
        wgt = self.weight(tile)
        carry, col_end = region
        y = tile.y - self._rows[self._row]
        acc, lg, tmp = self._acc, logits, scratch
        b0, b1 = (0, h) if band is None else (band.start, band.stop)
        split = min(max(col_end - tile.x, 0), w)  # tile columns [0, split) overlap the row's earlier tiles
        top = min(max(carry - y, 0), h)  # tile rows [0, top) are carried rows
        for rows, cols, add in ((slice(b0, min(top, b1)), slice(0, w), True),
                                (slice(max(top, b0), b1), slice(0, split), True),
                                (slice(max(top, b0), b1), slice(split, w), False)):
            if rows.stop <= rows.start or cols.stop <= cols.start:
                continue
            dst = acc[:, y + rows.start:y + rows.stop, tile.x + cols.start:tile.x + cols.stop]
            if add:
                part = tmp[:, rows, cols]
                np.multiply(lg[:, rows, cols], wgt[rows, cols], out=part)
                dst += part
            else:
                np.multiply(lg[:, rows, cols], wgt[rows, cols], out=dst)

    def finish(self) -> FinishedRows:
        """Return the remaining rows (the last strip, to the bottom of the scene), as views."""
        if self._done:
            raise RuntimeError("RowAccumulator.finish() was already called")
        self._done = True
        y0 = self._rows[self._row]
        n = self.grid.height - y0
        return FinishedRows(self._row, y0, self._acc[:, :n])

    def _advance(self, emit: Callable[[FinishedRows], None] | None) -> FinishedRows | None:
        """Hand over the rows above the next row of tiles and slide the buffer down."""
        y0, y_next = self._rows[self._row], self._rows[self._row + 1]
        d = y_next - y0
        view = FinishedRows(self._row, y0, self._acc[:, :d])
        out = None
        if emit is not None:
            emit(view)
        else:
            out = FinishedRows(self._row, y0, view.values.copy())
        keep = self._acc.shape[1] - d  # rows of this strip that the next one covers too
        for k in range(self.channels):  # per channel: small temporaries
            self._acc[k, :keep] = self._acc[k, d:]
        self._carry, self._col_end, self._last_x = keep, 0, -1
        self._row += 1
        return out


#: Distinct 2-D tile weights kept by a :class:`RowAccumulator` (a regular grid has at most 9).
MAX_CACHED_WEIGHTS = 64


def _dedupe(profiles: Sequence[np.ndarray]) -> list[int]:
    """An id per profile, equal for equal profiles (bit for bit)."""
    ids: dict[bytes, int] = {}
    return [ids.setdefault(p.tobytes(), len(ids)) for p in profiles]


def blend_tiles(grid: TileGrid, channels: int, tiles: Iterator[tuple[Tile, np.ndarray]],
                profile: np.ndarray | None = None) -> np.ndarray:
    """Blend all tiles into one ``[K, height, width]`` array (convenience for small scenes/tests)."""
    out = np.empty((channels, grid.height, grid.width), np.float32)
    acc = RowAccumulator(grid, channels, profile)
    for tile, logits in tiles:
        for f in acc.add(tile, logits):
            out[:, f.y0:f.y0 + f.n_rows] = f.logits()
    f = acc.finish()
    out[:, f.y0:f.y0 + f.n_rows] = f.logits()
    return out
