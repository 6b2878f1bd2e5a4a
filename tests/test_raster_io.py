"""Opening/checking input rasters, co-registration, alignment and pixel areas (rsvl_runtime.raster_io)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rsvl_runtime.raster_io import (
    RasterInputError,
    align_to,
    check_coregistered,
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
