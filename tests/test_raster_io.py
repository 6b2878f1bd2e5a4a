"""Opening/checking input rasters, co-registration, alignment and pixel areas (rsvl_runtime.raster_io)."""

from __future__ import annotations

import json
import math
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from rsvl_runtime.raster_io import (
    RasterInputError,
    align_to,
    as_raster_path,
    check_coregistered,
    is_gdal_path,
    open_raster,
    pixel_area_m2,
    prepare_input,
    resolve_nodata,
    select_bands,
    valid_mask,
)

from ._runtime_rasters import (
    OPTICAL_SPEC,
    SAR_SPEC,
    LinearModel,
    optical_array,
    sar_array,
    write_tif,
)


def test_missing_file_names_path(tmp_path: Path) -> None:
    with pytest.raises(RasterInputError, match="not found.*nope.tif"):
        open_raster(tmp_path / "nope.tif")


def test_corrupt_file_names_path_and_reason(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00" + b"\x13garbage" * 50)
    with pytest.raises(RasterInputError) as e:
        prepare_input(bad, "optical", OPTICAL_SPEC)
    msg = str(e.value)
    assert str(bad) in msg and "cannot read raster" in msg and len(msg) > len(str(bad)) + 40


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    good = write_tif(tmp_path / "good.tif", optical_array(200, 200), compress="deflate")
    data = good.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(RasterInputError, match="cut.tif"):
        prepare_input(cut, "optical", OPTICAL_SPEC)


def test_wrong_band_count_suggests_bands(tmp_path: Path) -> None:
    p = write_tif(tmp_path / "four.tif", optical_array(20, 20, bands=4))
    with pytest.raises(RasterInputError) as e:
        prepare_input(p, "optical", OPTICAL_SPEC)
    msg = str(e.value)
    assert "four.tif" in msg and "4 band" in msg and "expects 3" in msg and "--bands" in msg
    assert "red, green, blue" in msg
    one = write_tif(tmp_path / "one.tif", optical_array(20, 20, bands=1))
    with pytest.raises(RasterInputError, match="1 band.*expects 3"):
        prepare_input(one, "optical", OPTICAL_SPEC)


def test_band_selection(tmp_path: Path) -> None:
    p = write_tif(tmp_path / "four.tif", optical_array(20, 20, bands=4))
    inp = prepare_input(p, "optical", OPTICAL_SPEC, bands=[3, 2, 1])
    assert inp.bands == (3, 2, 1)
    with rasterio.open(p) as ds:
        with pytest.raises(RasterInputError, match=r"band\(s\) \[5\] do not exist.*1\.\.4"):
            select_bands(ds, [5, 2, 1], OPTICAL_SPEC, "optical")
        with pytest.raises(RasterInputError, match="lists 2 band"):
            select_bands(ds, [1, 2], OPTICAL_SPEC, "optical")
        assert select_bands(ds, [4, 3, 2], OPTICAL_SPEC, "optical") == [4, 3, 2]


def test_dtype_checks(tmp_path: Path) -> None:
    f = write_tif(tmp_path / "float_opt.tif", optical_array(10, 10).astype("float32"))
    with pytest.raises(RasterInputError, match="float32.*expects uint8"):
        prepare_input(f, "optical", OPTICAL_SPEC)
    u16 = write_tif(tmp_path / "u16.tif", optical_array(10, 10, dtype="uint16"))
    with pytest.raises(RasterInputError, match="uint16.*expects uint8"):
        prepare_input(u16, "optical", OPTICAL_SPEC)
    assert prepare_input(u16, "optical", {**OPTICAL_SPEC, "dtype": "uint16", "scale": 10000.0}).dtype == "uint16"
    s8 = write_tif(tmp_path / "sar_u8.tif", np.zeros((1, 10, 10), np.uint8))
    with pytest.raises(RasterInputError, match="SAR raster .*sar_u8.tif is uint8.*floating"):
        prepare_input(s8, "sar", SAR_SPEC)
    s = write_tif(tmp_path / "sar.tif", sar_array(10, 10))
    assert prepare_input(s, "sar", SAR_SPEC).dtype == "float32"


def test_nodata_resolution_and_mask(tmp_path: Path) -> None:
    declared = write_tif(tmp_path / "d.tif", optical_array(10, 10), nodata=0)
    none = write_tif(tmp_path / "n.tif", optical_array(10, 10))
    with rasterio.open(declared) as a, rasterio.open(none) as b:
        assert resolve_nodata(a, 7) == 0.0  # declared wins
        assert resolve_nodata(b, 7) == 7.0  # override for rasters declaring none
        assert resolve_nodata(b, None) is None
    v = np.ones((3, 2, 3), np.uint8)
    v[:, 0, 0] = 0
    v[0, 1, 1] = 0  # one band only: still valid (GDAL dataset-mask rule)
    m = valid_mask(v, 0)
    assert not m[0, 0] and m[1, 1] and m.sum() == 5
    assert valid_mask(v, -9999).all()  # not representable in uint8: nothing is nodata
    f = np.ones((1, 2, 2), np.float32)
    f[0, 0, 1] = np.nan
    f[0, 1, 1] = np.inf
    assert valid_mask(f, None).tolist() == [[True, False], [True, False]]


def _pair(tmp_path: Path, **sar_kw):  # type: ignore[no-untyped-def]
    opt = write_tif(tmp_path / "optical.tif", optical_array(30, 40))
    sar = write_tif(tmp_path / "sar.tif", sar_array(30, 40) if "shape" not in sar_kw else
                    sar_array(*sar_kw.pop("shape")), **sar_kw)
    return opt, sar


@pytest.mark.parametrize("kw,what,a,b", [
    ({"crs": "EPSG:32634"}, "CRS", "EPSG:32633", "EPSG:32634"),
    ({"res": 20.0}, "resolution", "(10, -10)", "(20, -20)"),
    ({"shape": (30, 41)}, "size", "40x30", "41x30"),
    ({"origin": (500005.0, 4100000.0)}, "grid origin", "500000", "500005"),
])
def test_coregistration_errors_name_both_files(tmp_path: Path, kw, what, a, b) -> None:  # type: ignore[no-untyped-def]
    opt, sar = _pair(tmp_path, **kw)
    with rasterio.open(opt) as o, rasterio.open(sar) as s, pytest.raises(RasterInputError) as e:
        check_coregistered(o, s)
    msg = str(e.value)
    assert str(opt) in msg and str(sar) in msg and what in msg and a in msg and b in msg
    assert "--align" in msg


def test_coregistration_tolerates_float_noise(tmp_path: Path) -> None:
    opt, sar = _pair(tmp_path, origin=(500000.0 + 1e-6, 4100000.0 - 1e-6))
    with rasterio.open(opt) as o, rasterio.open(sar) as s:
        check_coregistered(o, s)


def test_align_to_reference_grid(tmp_path: Path) -> None:
    """A SAR on a shifted, coarser grid is resampled (bilinear) onto the optical grid; a linear
    ramp stays linear, so interior values are exact."""
    opt = write_tif(tmp_path / "optical.tif", optical_array(60, 80))
    h, w = 50, 60
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (-20 + 0.1 * xx + 0.05 * yy)[None].astype(np.float32)
    sar = write_tif(tmp_path / "sar_misreg.tif", ramp, origin=(499985.0, 4100013.0), res=15.0)
    with rasterio.open(opt) as o, rasterio.open(sar) as s, pytest.raises(RasterInputError):
        check_coregistered(o, s)
    out = align_to(sar, opt, tmp_path / "sar_aligned.tif")
    assert not list(tmp_path.glob(".*.tmp"))
    with rasterio.open(opt) as o, rasterio.open(out) as s:
        check_coregistered(o, s)
        got = s.read(1)
        assert s.dtypes[0] == "float32" and s.crs == o.crs
    # optical pixel centre (col j, row i) in SAR pixel coordinates
    i, j = np.mgrid[0:60, 0:80].astype(np.float64)
    sx = (500000 + (j + 0.5) * 10 - 499985) / 15 - 0.5
    sy = (4100013 - (4100000 - (i + 0.5) * 10)) / 15 - 0.5
    expected = -20 + 0.1 * sx + 0.05 * sy
    inside = (sx > 0.5) & (sx < w - 1.5) & (sy > 0.5) & (sy < h - 1.5)
    np.testing.assert_allclose(got[inside], expected[inside], atol=1e-3)
    # outside the SAR footprint: NaN (nodata), never a fake 0 dB
    assert np.isnan(got[(sx > w + 1) | (sy > h + 1)]).all()


def test_pixel_area_projected(tmp_path: Path) -> None:
    p = write_tif(tmp_path / "a.tif", optical_array(5, 6))
    with rasterio.open(p) as ds:
        areas = pixel_area_m2(ds)
    assert areas.shape == (5,) and np.allclose(areas, 100.0)
    ft = write_tif(tmp_path / "ft.tif", optical_array(5, 6), crs="EPSG:2263",
                   origin=(1000000.0, 200000.0), res=10.0)  # NY state plane, US survey feet
    with rasterio.open(ft) as ds:
        assert np.allclose(pixel_area_m2(ds), 100 * 0.3048006096 ** 2, rtol=1e-5)


def test_pixel_area_geographic() -> None:
    class DS:  # anything with crs/transform/height
        crs = rasterio.crs.CRS.from_epsg(4326)
        transform = rasterio.transform.from_origin(10.0, 0.0005, 0.001, 0.001)
        height = 3
    areas = pixel_area_m2(DS)
    side = 6371007.181 * math.radians(0.001)
    assert areas.shape == (3,)
    assert np.allclose(areas, side ** 2, rtol=1e-5)  # ~ 111 m x 111 m at the equator
    assert 110.5 ** 2 < areas[0] < 111.8 ** 2

    class North(DS):
        transform = rasterio.transform.from_origin(10.0, 60.0005, 0.001, 0.001)
    assert np.allclose(pixel_area_m2(North), side ** 2 * 0.5, rtol=1e-3)  # cos(60°) = 0.5


# ============================================================================ remote inputs (URLs)
class _RangeHandler(BaseHTTPRequestHandler):
    """Serves the files of ``server.root`` with HTTP ``Range`` support; counts requests and bytes."""

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        srv: Any = self.server
        path = srv.root / self.path.lstrip("/")
        rng = self.headers.get("Range")
        srv.requests.append((self.command, rng))
        srv.headers.append(self.headers.get("X-Rsvl-Test"))
        if not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        m = re.match(r"bytes=(\d+)-(\d*)$", rng or "")
        if m:
            a = int(m.group(1))
            b = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            chunk = data[a:b + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
        else:
            chunk = data
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if body:
            self.wfile.write(chunk)
            srv.served += len(chunk)


@pytest.fixture
def http_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    """``(base URL, server)`` of a Range-capable HTTP server on 127.0.0.1 serving ``tmp_path/www``."""
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")  # no sidecar probing
    monkeypatch.setenv("CPL_VSIL_CURL_ALLOWED_EXTENSIONS", ".tif")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    root = tmp_path / "www"
    root.mkdir()
    srv: Any = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    srv.root, srv.requests, srv.headers, srv.served = root, [], [], 0
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", srv
    finally:
        srv.shutdown()
        srv.server_close()


def _tiled_scene(path: Path, size: int = 256) -> Path:
    """A tiled (32 px blocks), deflate-compressed optical GeoTIFF: many blocks to read by range."""
    return write_tif(path, optical_array(size, size), tiled=True, blockxsize=32, blockysize=32, compress="deflate")


def test_gdal_paths_are_kept_as_given() -> None:
    for url in ("http://host/a//b.tif", "https://h/x.tif?sig=1", "/vsicurl/http://h/x.tif", "s3://bucket/k.tif",
                "gs://b/k.tif", "az://c/k.tif", "/vsis3/bucket/k.tif", "zip+https://h/a.zip!/b.tif"):
        assert is_gdal_path(url) and as_raster_path(url) == url and isinstance(as_raster_path(url), str)
    for local in ("scene.tif", "/data/scene.tif", "C:\\data\\scene.tif", Path("/x//y.tif")):
        assert not is_gdal_path(local) and isinstance(as_raster_path(local), Path)


def test_remote_raster_is_read_by_ranges(tmp_path: Path, http_root: tuple[str, Any]) -> None:
    base, srv = http_root
    name = f"{uuid.uuid4().hex}.tif"  # GDAL caches by URL: a name no other test used
    local = _tiled_scene(srv.root / name)
    size = local.stat().st_size
    inp = prepare_input(f"{base}/{name}", "optical", OPTICAL_SPEC)
    assert inp.path == f"{base}/{name}" and inp.remote and inp.bands == (1, 2, 3)
    srv.served = 0
    with open_raster(f"/vsicurl/{base}/{name}") as ds, rasterio.open(local) as ref:
        win = Window(96, 96, 32, 32)
        np.testing.assert_array_equal(ds.read(window=win), ref.read(window=win))
    assert srv.served < size / 4  # one block and the header, not the whole file
    gets = [r for c, r in srv.requests if c == "GET"]
    assert gets and all(r and r.startswith("bytes=") for r in gets)  # only ranged reads


def test_run_scene_over_http_equals_local(tmp_path: Path, http_root: tuple[str, Any],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Same labels as the local file, by ranged reads, with the user's GDAL environment applied
    in every thread of the run (a GDAL_HTTP_HEADERS header reaches the server)."""
    from rsvl_runtime.scene import run_scene

    monkeypatch.setenv("GDAL_HTTP_HEADERS", "X-Rsvl-Test: from-env")
    base, srv = http_root
    local = _tiled_scene(srv.root / "scene.tif")
    size = local.stat().st_size
    names = [f"{uuid.uuid4().hex}.tif" for _ in range(2)]  # GDAL caches by URL: one file per run
    for name in names:
        shutil.copy(local, srv.root / name)
    args: dict[str, Any] = {"class_names": ["a", "b", "c", "d"], "optical_spec": OPTICAL_SPEC, "sar_spec": None,
                            "tile": 64, "overlap": 0.25, "batch": 4, "progress": False, "cog": False, "stac": False}
    model = LinearModel(4)
    run_scene(model, str(local), None, tmp_path / "local", **args)
    with rasterio.open(tmp_path / "local" / "labels.tif") as ds:
        expected = ds.read(1)
    for i, url in enumerate((f"{base}/{names[0]}", f"/vsicurl/{base}/{names[1]}")):
        srv.served, srv.requests, srv.headers = 0, [], []
        run_scene(model, url, None, tmp_path / f"remote{i}", **args)
        with rasterio.open(tmp_path / f"remote{i}" / "labels.tif") as ds:
            np.testing.assert_array_equal(ds.read(1), expected)
        gets = [r for c, r in srv.requests if c == "GET"]
        assert len(gets) >= 2 and all(r and r.startswith("bytes=") for r in gets)  # ranged reads only
        # the run opens the file several times and reads overlapping strips, yet fetches it about once
        assert srv.served <= 1.25 * size
        assert srv.headers and set(srv.headers) == {"from-env"}  # GDAL's environment was not reset
        done = json.loads((tmp_path / f"remote{i}" / "done.json").read_text())
        assert done["inputs"]["optical"]["path"] == url
        assert done["inputs"]["optical"]["sha256"] == "not hashed (remote)"


def test_missing_remote_raster_is_one_clear_line(http_root: tuple[str, Any]) -> None:
    base, _ = http_root
    url = f"{base}/nope.tif"
    with pytest.raises(RasterInputError) as e:
        prepare_input(url, "optical", OPTICAL_SPEC)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"remote raster not found: {url}") and "404" in msg
    assert "check the URL" in msg and "range requests" in msg
    with pytest.raises(RasterInputError, match="cannot read remote raster http://127.0.0.1:1/x.tif"):
        open_raster("http://127.0.0.1:1/x.tif")  # nothing listens on port 1


def test_batch_manifest_keeps_urls(tmp_path: Path) -> None:
    from rsvl_runtime.batch_plan import records_from_manifest

    m = tmp_path / "scenes.csv"
    m.write_text("id,optical,sar\n"
                 ",https://example.org/data//s2_optical.tif?token=a,\n"
                 "b,/vsicurl/http://h/b.tif,s3://bucket/b_sar.tif\n"
                 "c,missing.tif,\n", encoding="utf-8")
    recs = records_from_manifest(m, modes=("optical", "optical+sar"))
    assert recs[0].optical == "https://example.org/data//s2_optical.tif?token=a" and recs[0].id == "s2"
    assert recs[0].error is None
    assert (recs[1].optical, recs[1].sar, recs[1].error) == ("/vsicurl/http://h/b.tif", "s3://bucket/b_sar.tif", None)
    assert recs[2].error == f"optical file not found: {tmp_path / 'missing.tif'}"  # local files still checked
