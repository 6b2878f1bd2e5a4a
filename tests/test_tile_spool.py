"""The deflated-tile spool of a COG's full resolution (rsvl_runtime.tile_spool)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from rsvl_runtime.parallel import WorkPool
from rsvl_runtime.tile_spool import TileSpool


def _tile(data: np.ndarray, band: int, row: int, col: int) -> np.ndarray:
    """The 512 x 512 tile of ``data`` padded with 0, as the COG stores it."""
    out = np.zeros((512, 512), np.uint8)
    part = data[band, row * 512:(row + 1) * 512, col * 512:(col + 1) * 512]
    out[:part.shape[0], :part.shape[1]] = part
    return out


@pytest.mark.parametrize("count", [2, 1])  # 1 band: its columns split over the two workers
def test_tiles_are_zlib_streams_of_the_padded_tiles_in_tiff_order(tmp_path: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 9, (count, 1100, 600), dtype=np.uint8)
    spool = TileSpool(tmp_path / "x.tiles", count=count, width=600, height=1100, block=512, level=1)
    pool = WorkPool(2)
    try:
        for y0 in (0, 512, 1024):
            spool.add(y0, data[:, y0:y0 + 512], pool)
    finally:
        pool.close()
    assert spool.rows_done() == 1100
    rows = list(spool.tile_rows())
    assert len(rows) == count * 3 and all(len(r) == 2 for r in rows)  # band by band, 3 rows of 2 tiles
    for i, row in enumerate(rows):
        band, r = divmod(i, 3)
        for col, (off, n) in enumerate(row):
            got = np.frombuffer(zlib.decompress(spool.read(off, n)), np.uint8).reshape(512, 512)
            np.testing.assert_array_equal(got, _tile(data, band, r, col))
    spool.remove()
    assert list(tmp_path.iterdir()) == []


def test_resume_truncates_to_the_checkpoint_and_refuses_a_bad_index(tmp_path: Path) -> None:
    data = np.arange(3 * 1536 * 520, dtype=np.uint32).astype(np.uint8).reshape(3, 1536, 520)
    kw = dict(count=3, width=520, height=1536, block=512, level=6)
    spool = TileSpool(tmp_path / "x.tiles", **kw)
    spool.add(0, data[:, :512])
    spool.checkpoint()
    end = spool.end
    spool.add(512, data[:, 512:1024])  # after the checkpoint: lost with the process
    spool.close()
    again = TileSpool(tmp_path / "x.tiles", resume=True, **kw)
    assert again.end == end == (tmp_path / "x.tiles").stat().st_size and again.rows_done() == 512
    with pytest.raises(ValueError, match="never written"):
        list(again.tile_rows())
    again.add(512, data[:, 512:1024])
    again.add(1024, data[:, 1024:])
    off, n = list(again.tile_rows())[-1][-1]  # band 3, last row, last (edge) tile
    np.testing.assert_array_equal(np.frombuffer(zlib.decompress(again.read(off, n)), np.uint8).reshape(512, 512),
                                  _tile(data, 2, 2, 1))
    with pytest.raises(ValueError, match="rows"):
        again.add(1024, data[:, 1024:1100])  # a block row must be whole
    again.close()
    with pytest.raises(ValueError, match="another raster shape"):
        TileSpool(tmp_path / "x.tiles", resume=True, **{**kw, "width": 1100})
    (tmp_path / "x.tiles").write_bytes(b"")  # shorter than the index says
    with pytest.raises(ValueError, match="shorter"):
        TileSpool(tmp_path / "x.tiles", resume=True, **kw)
    (tmp_path / "x.tiles.idx").unlink()
    with pytest.raises(ValueError, match="no readable tile index"):
        TileSpool(tmp_path / "x.tiles", resume=True, **kw)
