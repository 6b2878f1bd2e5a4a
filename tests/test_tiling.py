"""Tile grid, blending window and streaming accumulation (rsvl_runtime.tiling)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rsvl_runtime.tiling import (
    RowAccumulator,
    TileGrid,
    blend_tiles,
    normalised_profiles,
    pad_to_tile,
    tile_offsets,
    tile_stride,
    window_1d,
)

SIZES = [(100, 70, 64), (300, 257, 64), (40, 50, 64), (70, 200, 128), (64, 64, 64), (1, 5, 4),
         (257, 300, 32)]


@pytest.mark.parametrize("length,tile,overlap", [(100, 64, 0.25), (257, 64, 0.25), (64, 64, 0.5),
                                                 (1000, 256, 0.25), (65, 64, 0.0), (40, 64, 0.25)])
def test_offsets_cover_axis_and_stay_inside(length: int, tile: int, overlap: float) -> None:
    offs = tile_offsets(length, tile, overlap)
    assert offs[0] == 0 and offs == sorted(set(offs))
    if length <= tile:
        assert offs == [0]
        return
    assert offs[-1] == length - tile  # ragged edge: the last tile is shifted back inside
    covered = np.zeros(length, bool)
    for o in offs:
        covered[o:o + tile] = True
    assert covered.all()
    assert all(b - a <= tile_stride(tile, overlap) for a, b in itertools.pairwise(offs))


def test_stride_and_argument_checks() -> None:
    assert tile_stride(256, 0.25) == 192
    assert tile_stride(4, 0.99) == 1
    for bad in [(0, 0.2), (64, 1.0), (64, -0.1)]:
        with pytest.raises(ValueError):
            tile_stride(*bad)
    with pytest.raises(ValueError):
        TileGrid(0, 10, 64)


def test_grid_tiles_extent() -> None:
    g = TileGrid(40, 300, 64, 0.25)
    tiles = list(g.tiles())
    assert g.n_tiles == len(tiles) and g.strip_height == 40
    assert all(t.height == 40 and t.width == 64 for t in tiles)
    assert tiles[-1].x == 300 - 64


@pytest.mark.parametrize("kind", ["hann", "triangular", "flat"])
def test_window_positive_symmetric(kind: str) -> None:
    w = window_1d(64, kind)
    assert w.shape == (64,) and w.dtype == np.float32
    assert w.min() > 0 and np.isclose(w.max(), 1.0)
    np.testing.assert_allclose(w, w[::-1])
    assert window_1d(64, kind, floor=0.01).min() >= 0.01 - 1e-7


@pytest.mark.parametrize("length,tile,overlap", [(1000, 256, 0.25), (257, 64, 0.5), (40, 64, 0.25), (64, 64, 0.0)])
def test_normalised_profiles_sum_to_one_and_leave_single_cover_exact(length: int, tile: int, overlap: float) -> None:
    """Along an axis the tiles' normalised weights of a pixel sum to 1 (float32 rounding), and a
    pixel that one tile covers gets exactly 1: the tile's logits pass through bit for bit."""
    offsets = tile_offsets(length, tile, overlap)
    profiles = normalised_profiles(offsets, length, tile, window_1d(tile))
    total, cover = np.zeros(length), np.zeros(length, int)
    for o, p in zip(offsets, profiles):
        assert p.dtype == np.float32 and p.shape == (min(tile, length - o),) and p.min() > 0
        total[o:o + len(p)] += p
        cover[o:o + len(p)] += 1
    np.testing.assert_allclose(total, 1.0, rtol=1e-6)
    for o, p in zip(offsets, profiles):
        single = cover[o:o + len(p)] == 1
        assert np.all(p[single] == 1.0)


def test_pad_to_tile_reflect_and_singleton() -> None:
    a = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    p = pad_to_tile(a, 8)
    assert p.shape == (1, 8, 8)
    np.testing.assert_array_equal(p[:, :3, :4], a)
    np.testing.assert_array_equal(p[0, 3, :4], a[0, 1])  # reflect
    one = pad_to_tile(np.ones((2, 1, 5)), 8)
    assert one.shape == (2, 8, 8) and np.all(one == 1)
    with pytest.raises(ValueError):
        pad_to_tile(np.ones((1, 9, 2)), 8)


def _tiled(field: np.ndarray, grid: TileGrid, fn, window=None):  # type: ignore[no-untyped-def]
    def gen():  # type: ignore[no-untyped-def]
        for t in grid.tiles():
            patch = pad_to_tile(field[:, t.y:t.y + t.height, t.x:t.x + t.width], grid.tile)
            yield t, fn(patch)
    return blend_tiles(grid, 3, gen(), window)


@pytest.mark.parametrize("h,w,tile", SIZES)
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_blending_a_per_pixel_function_is_exact(h: int, w: int, tile: int, overlap: float) -> None:
    """Weights normalise, so a per-pixel function is reproduced everywhere: no seams, ragged
    edges and padded small scenes included."""
    rng = np.random.default_rng(h * w)
    field = rng.normal(size=(2, h, w)).astype(np.float32)
    m = rng.normal(size=(3, 2)).astype(np.float32)

    def fn(x: np.ndarray) -> np.ndarray:
        return np.tanh(np.einsum("kc,chw->khw", m, x)) * 4 + x[:1] ** 2

    grid = TileGrid(h, w, tile, overlap)
    np.testing.assert_allclose(_tiled(field, grid, fn), fn(field), rtol=1e-5, atol=1e-5)


def test_blend_stores_where_no_tile_was_before_so_the_buffer_needs_no_zeroing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The accumulator stores (not adds) the part of a tile no earlier tile covered, so whatever
    the buffer held before (NaN here, stale rows of the previous strip in a run) never shows."""
    import rsvl_runtime.tiling as tiling

    grid = TileGrid(300, 257, 64, 0.25)
    rng = np.random.default_rng(3)
    tiles = [(t, rng.normal(size=(2, 64, 64)).astype(np.float32)) for t in grid.tiles()]
    clean = blend_tiles(grid, 2, iter(tiles))

    class Poisoned(RowAccumulator):
        def __init__(self, *a, **k) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*a, **k)
            self._acc[:] = np.nan

    monkeypatch.setattr(tiling, "RowAccumulator", Poisoned)
    poisoned = blend_tiles(grid, 2, iter(tiles))
    assert np.isfinite(poisoned).all()
    assert np.array_equal(poisoned, clean)


def test_blending_tile_dependent_values_is_smooth() -> None:
    """Tiles that disagree (a constant per tile) blend into a convex combination: no value
    outside the range of the covering tiles, and the result is continuous across tile edges."""
    grid = TileGrid(200, 200, 64, 0.25)
    vals = {}

    def gen():  # type: ignore[no-untyped-def]
        for t in grid.tiles():
            vals[(t.row, t.col)] = float(t.row * 10 + t.col)
            yield t, np.full((1, 64, 64), vals[(t.row, t.col)], np.float32)
    out = blend_tiles(grid, 1, gen())
    assert out.min() >= min(vals.values()) - 1e-4 and out.max() <= max(vals.values()) + 1e-4
    assert np.abs(np.diff(out[0], axis=1)).max() < 1.0  # no jump of a whole tile step (1.0)


def test_row_accumulator_memory_and_order() -> None:
    grid = TileGrid(1000, 300, 64, 0.25)
    acc = RowAccumulator(grid, 7)
    assert acc._acc.shape == (7, 64, 300)  # one strip, independent of the scene height
    tiles = list(grid.tiles())
    finished = acc.add(tiles[0], np.zeros((7, 64, 64), np.float32))
    assert finished == []
    with pytest.raises(ValueError, match="row-major"):  # a column to the left of the last one
        acc.add(tiles[0], np.zeros((7, 64, 64), np.float32))
    acc2 = RowAccumulator(grid, 1)
    for t in [t for t in tiles if t.row == 0]:
        acc2.add(t, np.ones((1, 64, 64), np.float32))
    seen, values = [], []
    row1 = next(t for t in tiles if t.row == 1)
    emit = lambda f: (seen.append(f), values.append(f.logits().copy()))  # noqa: E731 - views: copy during the call
    assert acc2.add(row1, np.ones((1, 64, 64), np.float32), emit) == []  # views to emit
    assert len(seen) == 1 and seen[0].y0 == 0 and seen[0].n_rows == grid.row_offsets[1]
    assert np.shares_memory(seen[0].values, acc2._acc)
    np.testing.assert_allclose(values[0], 1.0, rtol=1e-6)  # the weights of a pixel sum to 1
    with pytest.raises(ValueError):
        acc2.add(tiles[0], np.ones((1, 64, 64), np.float32))
