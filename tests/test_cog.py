"""The COG writer (rsvl_runtime.cog): GDAL's COG layout assembled from a spool and its overview
levels, tiles deflated by ISA-L (fast levels) or zlib, read back by GDAL bit for bit."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from rsvl_runtime import cog
from rsvl_runtime.parallel import WorkPool
from rsvl_runtime.tile_codec import deflate_tile

CRS = "EPSG:32633"
TRANSFORM = from_origin(500000, 4100000, 10, 10)


def _tif(path: Path, data: np.ndarray, compress: str | None = None, block_rows: int = 512, **tags: object) -> Path:
    c, h, w = data.shape
    profile = {"driver": "GTiff", "width": w, "height": h, "count": c, "dtype": "uint8", "crs": CRS,
               "transform": TRANSFORM, "nodata": 255, "tiled": True, "blockxsize": 512,
               "blockysize": block_rows, "interleave": "band", **({"compress": compress} if compress else {})}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        if tags.get("colormap"):
            ds.write_colormap(1, tags["colormap"])
        if tags.get("descriptions"):
            for i, d in enumerate(tags["descriptions"], 1):  # type: ignore[arg-type]
                ds.set_band_description(i, d)
        if tags.get("scales"):
            ds.scales = tags["scales"]
            ds.offsets = (0.0,) * c
    return path


def _pyramid(folder: Path, data: np.ndarray, compress: str | None = None, **tags: object) -> tuple[Path, list[Path], list[np.ndarray]]:
    """A spool and two coarser levels (plain decimation: the writer does not care how they were made)."""
    spool = _tif(folder / "spool.tif", data, compress, **tags)
    levels, arrays = [], []
    for f in (2, 4):
        a = np.ascontiguousarray(data[:, ::f, ::f])
        levels.append(_tif(folder / f"spool.ov{f}.tif", a, compress, block_rows=max(16, 512 // f)))
        arrays.append(a)
    return spool, levels, arrays


@pytest.mark.parametrize("count,h,w,level", [(1, 1100, 700, 6), (5, 600, 1300, 1), (3, 512, 512, 1)])
def test_cog_roundtrip_bit_for_bit_with_metadata_and_layout(tmp_path: Path, count: int, h: int, w: int, level: int) -> None:
    rng = np.random.default_rng(count)
    data = rng.integers(0, 7, (count, h, w), dtype=np.uint8)
    data[:, :9, :13] = 255
    tags = ({"colormap": {0: (255, 0, 0, 255), 1: (0, 0, 255, 255), 255: (0, 0, 0, 0)}} if count == 1 else
            {"descriptions": [f"class {i}" for i in range(count)], "scales": (1 / 255,) * count})
    spool, levels, arrays = _pyramid(tmp_path, data, **tags)
    dest = cog.write_cog(spool, levels, tmp_path / "out.tif", level=level)
    with rasterio.open(dest) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.compression.value.lower() == "deflate" and ds.block_shapes[0] == (512, 512)
        assert ds.crs.to_epsg() == 32633 and ds.transform == TRANSFORM and ds.nodata == 255
        assert ds.overviews(1) == [2, 4]
        np.testing.assert_array_equal(ds.read(), data)
        if count == 1:
            assert ds.colormap(1)[1] == (0, 0, 255, 255) and ds.colormap(1)[255] == (0, 0, 0, 0)
        else:
            assert ds.descriptions == tuple(f"class {i}" for i in range(count))
            assert ds.scales == (1 / 255,) * count
    for i, a in enumerate(arrays):
        with rasterio.open(dest, overview_level=i) as ov:
            np.testing.assert_array_equal(ov.read(), a)
    lay = cog.cog_layout(dest)
    assert lay["ghost"] == cog.GHOST and not lay["bigtiff"]
    assert lay["ifds"] == sorted(lay["ifds"]) and max(lay["ifds"]) < min(lay["first_tile"])  # IFDs before data
    assert lay["first_tile"] == sorted(lay["first_tile"], reverse=True)  # smallest overview's data first
    raw = dest.read_bytes()
    first = lay["first_tile"][0]  # GDAL's block leader (size) and trailer (last 4 bytes repeated)
    size = struct.unpack("<I", raw[first - 4:first])[0]
    assert raw[first + size:first + size + 4] == raw[first + size - 4:first + size]
    assert zlib.decompress(raw[first:first + size])[:w if w < 512 else 512] == bytes(data[0, 0, :512])


def test_cog_bigtiff_and_a_compressed_spool_give_the_same_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forced BigTIFF, and a ZSTD spool (read through GDAL instead of straight from the file):
    the same pixels; the raw and the ZSTD spool give byte-identical files."""
    import os

    reads: list[int] = []
    real_pread = os.pread
    monkeypatch.setattr(cog.os, "pread", lambda fd, n, off: reads.append(n) or real_pread(fd, n, off))
    data = np.random.default_rng(5).integers(0, 255, (2, 700, 900), dtype=np.uint8)
    (tmp_path / "raw").mkdir()
    (tmp_path / "zstd").mkdir()
    a = cog.write_cog(*_pyramid(tmp_path / "raw", data)[:2], tmp_path / "a.tif", level=1)
    # the raw spool's 2 x 2 x 2 tiles and its levels' (256 and 128 rows tall: 2 and 4 per COG
    # tile, joined) straight from the files
    assert reads.count(512 * 512) == 8 and sorted(set(reads)) == [128 * 512, 256 * 512, 512 * 512]
    n_raw = len(reads)
    b = cog.write_cog(*_pyramid(tmp_path / "zstd", data, compress="zstd")[:2], tmp_path / "b.tif", level=1)
    assert len(reads) == n_raw  # a compressed spool is read through GDAL
    big = cog.write_cog(*_pyramid(tmp_path / "raw", data)[:2], tmp_path / "big.tif", level=1, bigtiff=True)
    assert a.read_bytes() == b.read_bytes()
    assert cog.cog_layout(big)["bigtiff"] and big.read_bytes()[:4] == b"II+\x00"
    for p in (a, big):
        with rasterio.open(p) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            np.testing.assert_array_equal(ds.read(), data)


def test_cog_reads_the_same_in_an_independent_tiff_reader(tmp_path: Path) -> None:
    """tifffile (its own TIFF parser and zlib, not GDAL) sees the same pyramid: planar bands,
    DEFLATE, GeoTIFF tags, the same pixels at every level."""
    import tifffile

    data = np.random.default_rng(9).integers(0, 255, (3, 900, 1100), dtype=np.uint8)
    spool, levels, arrays = _pyramid(tmp_path, data, descriptions=["a", "b", "c"])
    dest = cog.write_cog(spool, levels, tmp_path / "out.tif", level=1)
    with tifffile.TiffFile(dest) as tif:
        assert tif.is_geotiff and len(tif.pages) == 3
        page = tif.pages[0]
        assert page.planarconfig == 2 and page.compression == 8 and page.tile == (512, 512)
        np.testing.assert_array_equal(page.asarray(), data)
        for p, a in zip(tif.pages[1:], arrays):
            np.testing.assert_array_equal(p.asarray(), a)


def test_cog_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    p = tmp_path / "f.tif"
    with rasterio.open(p, "w", driver="GTiff", width=8, height=8, count=1, dtype="float32") as ds:
        ds.write(np.zeros((1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        cog.write_cog(p, [], tmp_path / "o.tif")
    (tmp_path / "x.tif").write_bytes(b"not a tiff")
    with pytest.raises(ValueError, match="not a TIFF"):
        cog.write_cog(tmp_path / "x.tif", [], tmp_path / "o.tif")


@pytest.mark.parametrize("level", [1, 6])
def test_deflate_tile_is_a_zlib_stream(level: int) -> None:
    tile = np.random.default_rng(level).integers(0, 4, (512, 512), dtype=np.uint8)
    assert zlib.decompress(deflate_tile(tile, level)) == tile.tobytes()


def test_workpool_imap_keeps_order_bounds_look_ahead_and_raises() -> None:
    import threading

    in_flight, peak, lock = [0], [0], threading.Lock()

    def slow_square(x: int) -> int:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        threading.Event().wait(0.002)
        with lock:
            in_flight[0] -= 1
        if x == 13:
            raise KeyError(x)
        return x * x

    with WorkPool(3) as pool:
        assert list(pool.imap(slow_square, range(12), ahead=4)) == [x * x for x in range(12)]
        assert peak[0] <= 4
        with pytest.raises(KeyError):
            list(pool.imap(slow_square, range(20)))
    assert list(WorkPool(1).imap(lambda x: -x, [1, 2])) == [-1, -2]
