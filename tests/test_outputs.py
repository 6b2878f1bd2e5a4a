"""Output writers, staging/atomicity, class table, preview, report, done marker (rsvl_runtime.outputs)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.transform import from_origin

from rsvl_runtime import outputs as out
from rsvl_runtime.classes import ClassStats, write_classes_json
from rsvl_runtime.colours import NODATA_COLOR, default_colors
from rsvl_runtime.preview import write_preview
from rsvl_runtime.report import render_report

from ._runtime_rasters import CRS


def _write(path: Path, data: np.ndarray, chunks: list[int], **kw) -> Path:  # type: ignore[no-untyped-def]
    c, h, w = data.shape
    wr = out.GeoTiffRowWriter(path, width=w, height=h, count=c, crs=CRS,
                              transform=from_origin(500000, 4100000, 10, 10), nodata=255, **kw)
    y = 0
    for n in chunks:
        wr.write(data[:, y:y + n])
        y += n
    assert y == h
    return wr.close()


@pytest.mark.parametrize("cog", [False, True])
def test_row_writer_roundtrip_layout(tmp_path: Path, cog: bool) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 6, (2, 1100, 700), dtype=np.uint8)
    data[:, :5, :5] = 255
    p = _write(tmp_path / "x.tif", data, [100, 333, 1, 500, 166], cog=cog,
               descriptions=["a", "b"])
    with rasterio.open(p) as ds:
        np.testing.assert_array_equal(ds.read(), data)
        assert ds.crs.to_epsg() == 32633 and ds.transform == from_origin(500000, 4100000, 10, 10)
        assert ds.nodata == 255 and ds.profile["tiled"] and ds.block_shapes[0] == (512, 512)
        assert ds.compression.value.lower() == "deflate"
        assert ds.overviews(1)[:2] == [2, 4]
        assert ds.descriptions == ("a", "b")
        if cog:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


@pytest.mark.parametrize("cog", [False, True])
def test_row_writer_resumes_a_checkpoint_inside_a_block(tmp_path: Path, cog: bool) -> None:
    """Checkpointed after 600 rows (one full block deflated into the tile spool, 88 rows of the
    next one raw), a new writer resumes there: the file equals an uninterrupted run's pixels;
    spools and side files are gone after close; a damaged tile index refuses to resume."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 6, (3, 1100, 700), dtype=np.uint8)
    kw = dict(width=700, height=1100, count=3, crs=CRS, transform=from_origin(500000, 4100000, 10, 10),
              nodata=255, cog=cog, descriptions=["a", "b", "c"])
    first = out.GeoTiffRowWriter(tmp_path / "x.tif", **kw)
    first.write(data[:, :600])
    crc = first.checkpoint()
    first.write(data[:, 600:700])  # rows after the checkpoint: lost with the process
    first.abort()
    if cog:
        assert (tmp_path / "x.tif.tiles").stat().st_size > 0 and (tmp_path / "x.tif.partial").stat().st_size == 3 * 88 * 700
    resumed = out.GeoTiffRowWriter(tmp_path / "x.tif", resume=(600, crc), **kw)
    assert resumed.rows_written == 512
    resumed.write(data[:, 600:])
    (tmp_path / "ref").mkdir()
    ref = _write(tmp_path / "ref" / "x.tif", data, [1100], cog=cog, descriptions=["a", "b", "c"])  # uninterrupted
    with rasterio.open(resumed.close()) as ds, rasterio.open(ref) as r:
        np.testing.assert_array_equal(ds.read(), data)
        assert ds.overviews(1) == r.overviews(1) and ds.descriptions == ("a", "b", "c")
        for level in range(len(ds.overviews(1))):  # the levels of the blocks before and after the checkpoint
            with rasterio.open(ds.name, OVERVIEW_LEVEL=level) as a, rasterio.open(r.name, OVERVIEW_LEVEL=level) as b:
                np.testing.assert_array_equal(a.read(), b.read())
        if cog:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "x.tif"]
    if cog:  # a checkpoint whose tile index is damaged cannot resume (the run starts over)
        again = out.GeoTiffRowWriter(tmp_path / "y.tif", **kw)
        again.write(data[:, :600])
        crc = again.checkpoint()
        again.abort()
        (tmp_path / "y.tif.tiles.idx").write_bytes(b"not an index")
        with pytest.raises(ValueError, match="tile index"):
            out.GeoTiffRowWriter(tmp_path / "y.tif", resume=(600, crc), **kw)
        with pytest.raises(ValueError, match="checksum"):  # rows that are not the checkpointed ones
            wrong = out.GeoTiffRowWriter(tmp_path / "z.tif", **kw)
            wrong.write(data[:, :600])
            crc = wrong.checkpoint()
            wrong.abort()
            out.GeoTiffRowWriter(tmp_path / "z.tif", resume=(600, crc ^ 1), **kw)


def test_row_writer_refuses_incomplete(tmp_path: Path) -> None:
    wr = out.GeoTiffRowWriter(tmp_path / "x.tif", width=10, height=20, count=1, crs=CRS,
                              transform=from_origin(0, 0, 1, 1), nodata=255, cog=False)
    wr.write(np.zeros((1, 5, 10), np.uint8))
    with pytest.raises(RuntimeError, match="only 5 of 20 rows"):
        wr.close()
    with pytest.raises(ValueError):
        out.GeoTiffRowWriter(tmp_path / "y.tif", width=10, height=2, count=1, crs=CRS,
                             transform=from_origin(0, 0, 1, 1), nodata=255).write(np.zeros((2, 2, 10), np.uint8))


def test_overview_mode_resampling_keeps_class_ids(tmp_path: Path) -> None:
    data = np.zeros((1, 64, 64), np.uint8)
    data[0, :, 32:] = 3
    data[0, ::2, ::2] = 1  # a quarter of the pixels: average would invent ids
    p = _write(tmp_path / "l.tif", data, [64], cog=False, overview_resampling=Resampling.mode)
    with rasterio.open(p) as ds:
        ov = ds.read(1, out_shape=(32, 32))
    assert set(np.unique(ov)) <= {0, 1, 3}


def test_overview_factors() -> None:
    assert out.overview_factors(100, 70) == [2]
    assert out.overview_factors(10000, 10000) == [2, 4, 8, 16, 32, 64]


def test_stage_commit_and_discard(tmp_path: Path) -> None:
    st = out.OutputStage(tmp_path)
    a = st.temp("a.txt")
    a.write_text("A")
    assert not (tmp_path / "a.txt").exists() and a.name.startswith(".a.txt.")
    with pytest.raises(ValueError):
        st.temp("a.txt")
    st.commit()
    assert (tmp_path / "a.txt").read_text() == "A"
    st2 = out.OutputStage(tmp_path)
    st2.temp("b.txt").write_text("B")
    st2.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_class_stats_table() -> None:
    s = ClassStats(3)
    labels = np.array([[0, 1, 255], [2, 2, 1]], np.uint8)
    s.update(labels, np.array([100.0, 50.0]))
    t = s.table(["water", "forest", "urban"], [(0, 0, 255), (0, 255, 0), (255, 0, 0)])
    assert [c["pixels"] for c in t] == [1, 2, 2]
    assert [c["area_m2"] for c in t] == [100.0, 150.0, 100.0]
    assert s.nodata_pixels == 1 and s.nodata_area_m2 == 100.0
    assert np.isclose(sum(c["fraction"] for c in t), 1.0)
    assert t[1] == {"id": 1, "name": "forest", "color": [0, 255, 0], "pixels": 2, "area_m2": 150.0,
                    "fraction": 150.0 / 350.0}


def test_classes_json(tmp_path: Path) -> None:
    s = ClassStats(2)
    s.update(np.array([[0, 1]], np.uint8), np.array([4.0]))
    write_classes_json(tmp_path / "classes.json", s.table(["a", "b"], default_colors(2)), s, "EPSG:32633")
    doc = json.loads((tmp_path / "classes.json").read_text())
    assert doc["valid_area_m2"] == 8.0 and doc["classes"][1]["name"] == "b" and doc["crs"] == "EPSG:32633"


def test_preview_is_downsampled_with_legend(tmp_path: Path) -> None:
    data = (np.arange(3000)[None, None, :] // 1000 * np.ones((1, 400, 1))).astype(np.uint8)
    data[:, :10] = 255
    p = _write(tmp_path / "labels.tif", data, [400], cog=False)
    png = write_preview(p, tmp_path / "preview.png", [(255, 0, 0), (0, 255, 0), (0, 0, 255)],
                            ["r", "g", "b"], [0.3, 0.3, 0.4])
    img = Image.open(tmp_path / "preview.png")
    assert img.width <= 1024 and img.height > 1024 * 400 / 3000  # image + legend strip
    assert img.mode == "P" and "transparency" in img.info  # label ids as palette indices, with alpha
    assert np.asarray(img)[50, 10] == 0 and np.asarray(img)[0, 10] == 255  # the ids themselves
    arr = np.asarray(img.convert("RGBA"))
    assert tuple(arr[50, 10]) == (255, 0, 0, 255) and tuple(arr[50, img.width - 10]) == (0, 0, 255, 255)
    assert tuple(arr[0, 10]) == (*NODATA_COLOR, 0)  # nodata: transparent
    assert png == (tmp_path / "preview.png").read_bytes()
    assert _zlib_level_class(png) == 1  # PNG_COMPRESS_LEVEL 3 (zlib FLEVEL 1: "fast"), not Pillow's default 6


def _zlib_level_class(png: bytes) -> int:
    """The FLEVEL bits of the zlib header that opens a PNG's first IDAT chunk (0 fastest, 1 fast
    (levels 2-5), 2 default (6), 3 maximum)."""
    import struct

    i = 8  # after the signature
    while i < len(png):
        length, kind = struct.unpack(">I4s", png[i:i + 8])
        if kind == b"IDAT":
            return png[i + 9] >> 6
        i += 12 + length
    raise AssertionError("no IDAT chunk")


def test_report_self_contained(tmp_path: Path) -> None:
    table = [{"id": 0, "name": "<water>", "color": [0, 0, 255], "pixels": 3, "area_m2": 300.0, "fraction": 1.0}]
    text = render_report(title="t", preview_png=b"\x89PNGfake", table=table, timings={"total_s": 1.5},
                         inputs={"optical": "/x/o.tif"}, raster={"crs": "EPSG:32633"},
                         bundle_info={"model": "tsmnet-tiny"})
    assert base64.b64encode(b"\x89PNGfake").decode() in text
    assert "&lt;water&gt;" in text and "<water>" not in text
    assert "tsmnet-tiny" in text and "/x/o.tif" in text and "EPSG:32633" in text
    assert "http" not in text.replace("http-equiv", "")  # nothing external


def test_done_marker(tmp_path: Path) -> None:
    assert not out.is_complete(tmp_path)
    f = tmp_path / "labels.tif"
    f.write_bytes(b"1234")
    out.write_done(tmp_path, {"labels.tif": f}, {"timings": {"total_s": 1.0}})
    assert out.is_complete(tmp_path)
    f.write_bytes(b"12")  # changed after the run
    assert not out.is_complete(tmp_path)
    f.write_bytes(b"1234")
    assert out.is_complete(tmp_path)
    f.unlink()
    assert not out.is_complete(tmp_path)
    (tmp_path / out.DONE).write_text("{not json")
    assert not out.is_complete(tmp_path)
    out.clear_done(tmp_path)
    assert not (tmp_path / out.DONE).exists()


def test_committed_files_get_normal_permissions(tmp_path: Path) -> None:
    st = out.OutputStage(tmp_path)
    st.temp("a.txt").write_text("A")
    st.commit()
    f = tmp_path / "a.txt"
    assert (f.stat().st_mode & 0o777) == out.file_mode()  # not mkstemp's 0600
    out.write_done(tmp_path, {"a.txt": f}, {})
    assert ((tmp_path / out.DONE).stat().st_mode & 0o777) == out.file_mode()
