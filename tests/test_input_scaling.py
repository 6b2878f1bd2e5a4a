"""uint16/float optical inputs: --scale/--offset, --stretch, --sensor presets and bundle-declared
scaling (rsvl_runtime.normalization, rsvl_runtime.sensors, rsvl_runtime.raster_io, rsvl_runtime.reading)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from rsvl_runtime import raster_io
from rsvl_runtime.checks import check_array, preflight, with_array_limits
from rsvl_runtime.manifest import ModalitySpec
from rsvl_runtime.normalization import OpticalScaling, normalize_optical
from rsvl_runtime.options import InputOptions
from rsvl_runtime.raster_io import (
    RasterInputError,
    decimated_shape,
    prepare_input,
    with_stretch_limits,
)
from rsvl_runtime.reading import InputHasher, prepare_sources
from rsvl_runtime.scene import run_scene
from rsvl_runtime.sensors import PRESETS, get_preset, resolve_scaling, scaling_of
from rsvl_runtime.tiling import TileGrid

from ._runtime_rasters import OPTICAL_SPEC, LinearModel, optical_array, write_tif

MEAN = np.asarray(OPTICAL_SPEC["mean"], np.float32).reshape(3, 1, 1)
STD = np.asarray(OPTICAL_SPEC["std"], np.float32).reshape(3, 1, 1)
SCENE: dict[str, Any] = {"class_names": ["a", "b", "c", "d"], "optical_spec": OPTICAL_SPEC, "sar_spec": None,
                         "tile": 64, "overlap": 0.25, "batch": 4, "progress": False, "cog": False, "stac": False}


class Recorder(LinearModel):
    """The per-pixel fake model, keeping every normalised optical batch it was given."""

    def __init__(self) -> None:
        super().__init__(4)
        self.batches: list[np.ndarray] = []

    def __call__(self, optical: np.ndarray | None, sar: np.ndarray | None) -> np.ndarray:
        assert optical is not None
        self.batches.append(optical.copy())
        return super().__call__(optical, sar)


def _labels(out: Path) -> np.ndarray:
    with rasterio.open(out / "labels.tif") as ds:
        return ds.read(1)


def _stack(path: Path, n: int, dtype: str = "uint16", h: int = 40, w: int = 40) -> tuple[Path, np.ndarray]:
    """An ``n``-band raster whose band ``i`` (1-based) is ``i * 300`` plus a ramp: bands tell apart."""
    ramp = np.arange(h * w, dtype=np.float64).reshape(h, w) % 97
    data = np.stack([i * 300 + ramp for i in range(1, n + 1)]).astype(dtype)
    return write_tif(path, data), data


# ----------------------------------------------------------------------------- --scale / --offset
def test_uint16_reflectance_with_scale_equals_the_uint8_path(tmp_path: Path) -> None:
    o = optical_array(150, 130)
    u = np.rint(o.astype(np.float64) / 255 * 10000).astype(np.uint16)
    x8 = o.astype(np.float32) / 255
    x16 = OpticalScaling(scale=1e-4).apply(u)
    assert np.abs(x16 - x8).max() <= 1e-4  # the 0..1 values the bundle's statistics apply to
    n8, n16 = normalize_optical(o, OPTICAL_SPEC), normalize_optical(u, OPTICAL_SPEC, OpticalScaling(scale=1e-4))
    assert np.abs(n16 - n8).max() <= 5e-5 / float(STD.min()) + 1e-6  # rounding to uint16, over std
    p8, p16 = write_tif(tmp_path / "u8.tif", o), write_tif(tmp_path / "u16.tif", u)
    with pytest.raises(RasterInputError, match="is uint16 but the bundle expects uint8"):
        run_scene(LinearModel(4), str(p16), None, tmp_path / "refused", **SCENE)
    run_scene(LinearModel(4), str(p8), None, tmp_path / "a", **SCENE)
    run_scene(LinearModel(4), str(p16), None, tmp_path / "b", **SCENE, scale=1e-4)
    np.testing.assert_array_equal(_labels(tmp_path / "b"), _labels(tmp_path / "a"))


def test_float_reflectance_and_offset(tmp_path: Path) -> None:
    refl = (optical_array(40, 40).astype(np.float32) / 255)
    p = write_tif(tmp_path / "refl.tif", refl)
    with pytest.raises(RasterInputError, match="float32 but the bundle expects uint8.*--scale 1 for float"):
        prepare_input(p, "optical", OPTICAL_SPEC)
    inp = prepare_input(p, "optical", OPTICAL_SPEC, scaling=OpticalScaling(scale=1.0))
    assert inp.dtype == "float32"
    dn = np.array([[[1000]], [[2000]], [[3000]]], np.uint16)
    got = normalize_optical(dn, OPTICAL_SPEC, OpticalScaling(scale=2.75e-05, offset=-0.2))
    np.testing.assert_allclose(got, (dn * 2.75e-05 - 0.2 - MEAN) / STD, rtol=1e-5)


# ----------------------------------------------------------------------------- sensor presets
@pytest.mark.parametrize("sensor,n,scale,offset", [
    ("sentinel2-l2a", 12, 1e-4, 0.0), ("sentinel2-l2a", 13, 1e-4, 0.0),
    ("sentinel2-l2a-pb04", 12, 1e-4, -0.1), ("landsat-c2-l2", 7, 2.75e-05, -0.2),
])
def test_preset_picks_bands_and_scaling(tmp_path: Path, sensor: str, n: int, scale: float, offset: float) -> None:
    p, data = _stack(tmp_path / "stack.tif", n)
    model = Recorder()
    run_scene(model, str(p), None, tmp_path / "out", **SCENE, sensor=sensor)
    x = model.batches[0][0, :, :40, :40]  # one tile covers the 40x40 scene
    expected = (data[[3, 2, 1]].astype(np.float32) * np.float32(scale) + np.float32(offset) - MEAN) / STD
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)  # bands 4,3,2, the preset's scaling
    assert get_preset(sensor).bands == (4, 3, 2)


def test_user_bands_and_scale_win_over_the_preset(tmp_path: Path) -> None:
    p, _ = _stack(tmp_path / "stack.tif", 12)
    opts = InputOptions(sensor="sentinel2-l2a-pb04", bands=(1, 2, 3))
    inp = prepare_input(p, "optical", OPTICAL_SPEC, bands=opts.bands, scaling=scaling_of(opts))
    assert inp.bands == (1, 2, 3)
    assert resolve_scaling("sentinel2-l2a-pb04", 2e-4, None, None) == OpticalScaling(2e-4, 0.0, sensor="sentinel2-l2a-pb04")
    assert resolve_scaling("sentinel2-l2a-pb04", None, 0.05, None) == OpticalScaling(1e-4, 0.05, sensor="sentinel2-l2a-pb04")
    assert resolve_scaling(None, None, None, None) is None


def test_preset_refusals_name_the_preset_bands(tmp_path: Path) -> None:
    rgb = write_tif(tmp_path / "rgb.tif", optical_array(20, 20, dtype="uint16"))
    with pytest.raises(RasterInputError) as e:
        prepare_input(rgb, "optical", OPTICAL_SPEC, scaling=resolve_scaling("landsat-c2-l2", None, None, None))
    msg = str(e.value)
    assert "--sensor landsat-c2-l2 reads bands 4,3,2 (SR_B4, SR_B3, SR_B2)" in msg and "SR_B1 SR_B2" in msg
    assert "has 3 band(s)" in msg and "--bands 1,2,3" in msg
    u8, _ = _stack(tmp_path / "u8.tif", 12, dtype="uint8")
    with pytest.raises(RasterInputError, match="is uint8 but --sensor sentinel2-l2a .* uint16 .*--scale 1"):
        prepare_input(u8, "optical", OPTICAL_SPEC, scaling=resolve_scaling("sentinel2-l2a", None, None, None))
    with pytest.raises(ValueError, match="'sentinel2' is not a known sensor preset .*did you mean sentinel2-l2a"):
        InputOptions(sensor="sentinel2")


def test_band_hint_suggests_the_matching_preset(tmp_path: Path) -> None:
    s2, _ = _stack(tmp_path / "s2.tif", 12)
    with pytest.raises(RasterInputError) as e:
        prepare_input(s2, "optical", OPTICAL_SPEC)
    msg = str(e.value)
    assert "has 12 band(s)" in msg and "--sensor sentinel2-l2a (" in msg and "--sensor sentinel2-l2a-pb04" in msg
    assert "bands 4,3,2 (B4, B3, B2)" in msg and "landsat" not in msg
    ls, _ = _stack(tmp_path / "ls.tif", 7)
    with pytest.raises(RasterInputError, match=r"--sensor landsat-c2-l2 .*bands 4,3,2 \(SR_B4, SR_B3, SR_B2\)"):
        prepare_input(ls, "optical", OPTICAL_SPEC)
    # a raster whose band descriptions are the bundle's band names: the hint gives their indexes
    named = write_tif(tmp_path / "named.tif", optical_array(20, 20, bands=4))
    with rasterio.open(named, "r+") as ds:
        for i, d in enumerate(["nir", "blue", "green", "red"], 1):
            ds.set_band_description(i, d)
    with pytest.raises(RasterInputError, match=r"e\.g\. --bands 4,3,2 \(its band descriptions\)"):
        prepare_input(named, "optical", OPTICAL_SPEC)


def test_refusal_without_scaling_names_the_flags_not_gdal_translate(tmp_path: Path) -> None:
    u16 = write_tif(tmp_path / "u16.tif", optical_array(20, 20, dtype="uint16"))
    with pytest.raises(RasterInputError) as e:
        preflight(str(u16), None, InputOptions(optical_spec=OPTICAL_SPEC))
    msg = str(e.value)
    assert "u16.tif is uint16 but the bundle expects uint8" in msg and "--scale 0.0001" in msg
    assert "--sensor sentinel2-l2a|sentinel2-l2a-pb04|landsat-c2-l2" in msg and "--stretch p2,p98" in msg
    assert "gdal_translate" not in msg and "\n" not in msg
    preflight(str(u16), None, InputOptions(optical_spec=OPTICAL_SPEC, scale=1e-4))  # accepted when scaled
    with pytest.raises(RasterInputError, match="optical array is bool.*convert it"):
        check_array(np.zeros((3, 4, 4), bool), "optical", OPTICAL_SPEC, scaling=OpticalScaling(scale=1.0))


@pytest.mark.parametrize("kw,match", [
    ({"offset": -0.2}, "--offset -0.2 needs --scale"), ({"scale": 0.0}, "--scale 0 maps"),
    ({"scale": float("nan")}, "--scale nan: give a finite number"),
    ({"stretch": (98.0, 2.0)}, "0 <= low < high <= 100"), ({"stretch": (2.0, 101.0)}, "0 <= low < high <= 100"),
])
def test_impossible_scaling_options(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InputOptions(**kw)
    assert InputOptions(sensor="Landsat-C2-L2", offset=-0.1).sensor == "landsat-c2-l2"


# ----------------------------------------------------------------------------- --stretch
def _stretch_scene(tmp_path: Path, h: int = 200, w: int = 180) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(5)
    data = (rng.gamma(2.0, 600.0, (3, h, w)) + np.array([100, 200, 300])[:, None, None]).astype(np.uint16)
    data[:, :10, :] = 0  # nodata rows: excluded from the percentiles
    data[0, 50, 50] = 60000  # an outlier the stretch clips
    return write_tif(tmp_path / "s.tif", data, nodata=0), data


def test_stretch_limits_are_percentiles_of_the_decimated_read(tmp_path: Path) -> None:
    p, _ = _stretch_scene(tmp_path)
    src = prepare_input(p, "optical", OPTICAL_SPEC, scaling=OpticalScaling(scale=1e-4, stretch=(2.0, 98.0)))
    got = with_stretch_limits(src, max_side=64)
    shape = decimated_shape(200, 180, 64)
    assert shape == (50, 45)
    with rasterio.open(p) as ds:
        dec = ds.read(out_shape=(3, *shape), resampling=rasterio.enums.Resampling.nearest).astype(np.float64)
    ok = (dec != 0).any(axis=0)
    assert 0 < ok.sum() < ok.size  # the sample has nodata, excluded below
    scaled = dec * np.float32(1e-4)
    lo = [np.percentile(scaled[c][ok], 2) for c in range(3)]
    hi = [np.percentile(scaled[c][ok], 98) for c in range(3)]
    assert got.scaling is not None and got.scaling.stretch == (2.0, 98.0)
    np.testing.assert_allclose(got.scaling.low, lo, rtol=1e-5)
    np.testing.assert_allclose(got.scaling.high, hi, rtol=1e-5)
    rec = InputHasher({"optical": got}, enabled=False).records()["optical"]["scaling"]
    assert rec["stretch"]["percentiles"] == [2.0, 98.0] and rec["stretch"]["low"] == list(got.scaling.low)
    assert rec["scale"] == 1e-4 and json.dumps(rec)


def test_stretch_is_computed_once_per_scene_not_per_tile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p, data = _stretch_scene(tmp_path)
    calls = []
    real = raster_io.read_decimated
    monkeypatch.setattr(raster_io, "read_decimated", lambda *a, **k: calls.append(a) or real(*a, **k))
    sources = prepare_sources(str(p), None, InputOptions(optical_spec=OPTICAL_SPEC, stretch=(2.0, 98.0)))
    assert len(calls) == 1
    sc = sources.optical.scaling  # type: ignore[union-attr]
    assert sc is not None and sc.low is not None and sc.high is not None
    model = Recorder()
    calls.clear()
    run_scene(model, str(p), None, tmp_path / "out", **{**SCENE, "batch": 64}, stretch=(2.0, 98.0))
    assert len(calls) == 1 and len(model.batches) == 1  # one decimated read for all 16 tiles
    low = np.asarray(sc.low, np.float32).reshape(3, 1, 1)
    span = np.asarray(sc.high, np.float32).reshape(3, 1, 1) - low
    full = (np.clip((data.astype(np.float32) - low) / span, 0, 1) - MEAN) / STD
    x = model.batches[0]
    tiles = list(TileGrid(200, 180, 64, 0.25).tiles())
    assert len(tiles) == x.shape[0] == 16
    for i, t in enumerate(tiles):  # every tile, near and far: the same scene-wide limits
        win = (slice(None), slice(t.y, t.y + t.height), slice(t.x, t.x + t.width))
        valid = (data[win] != 0).any(axis=0)
        np.testing.assert_allclose(x[i][:, :t.height, :t.width][:, valid], full[win][:, valid],
                                   rtol=1e-5, atol=1e-5, err_msg=f"tile {i}")
    i, t = next((i, t) for i, t in enumerate(tiles) if t.y <= 50 < t.y + t.height and t.x <= 50 < t.x + t.width)
    top = (1.0 - MEAN[0, 0, 0]) / STD[0, 0, 0]
    assert np.isclose(x[i][0, 50 - t.y, 50 - t.x], top)  # the outlier is clipped to 1


def test_array_scaling_for_the_python_api() -> None:
    arr = np.stack([np.arange(100, dtype=np.float32).reshape(10, 10)] * 3) * 100
    arr[:, 0, 0] = -1  # nodata
    scaling = scaling_of(InputOptions(scale=1e-4, stretch=(0.0, 100.0)))
    opt = check_array(arr, "optical", OPTICAL_SPEC, scaling=scaling)
    sc = with_array_limits(scaling, opt, nodata=-1)
    assert sc is not None and np.allclose(sc.low, 0.01) and np.allclose(sc.high, 0.99)
    x = normalize_optical(opt, OPTICAL_SPEC, sc)
    np.testing.assert_allclose(x[:, 9, 9], (1.0 - MEAN[:, 0, 0]) / STD[:, 0, 0], rtol=1e-6)
    assert with_array_limits(None, opt) is None
    with pytest.raises(RasterInputError, match="optical array is uint16 but the bundle expects uint8"):
        check_array(arr.astype(np.uint16), "optical", OPTICAL_SPEC)


# ----------------------------------------------------------------------------- bundle-declared scaling
def test_bundle_declared_uint16_scale_and_offset(tmp_path: Path) -> None:
    spec = ModalitySpec.from_dict({**OPTICAL_SPEC, "dtype": "uint16", "scale": 10000.0, "offset": -0.1})
    assert spec.optical_offset == -0.1 and spec.to_dict()["offset"] == -0.1
    assert "offset" not in ModalitySpec.from_dict(OPTICAL_SPEC).to_dict()
    dn = np.array([[[1000]], [[2000]], [[3000]]], np.uint16)
    np.testing.assert_allclose(normalize_optical(dn, spec), (dn / 10000 - 0.1 - MEAN) / STD, rtol=1e-5)
    u16, data = _stack(tmp_path / "u16.tif", 3)
    model = Recorder()
    run_scene(model, str(u16), None, tmp_path / "out", **{**SCENE, "optical_spec": spec.to_dict()})
    np.testing.assert_allclose(model.batches[0][0, :, :40, :40],
                               (data.astype(np.float32) / 10000 - 0.1 - MEAN) / STD, rtol=1e-5, atol=1e-5)
    assert sorted(PRESETS) == ["landsat-c2-l2", "sentinel2-l2a", "sentinel2-l2a-pb04"]


def test_normalisation_without_temporaries_keeps_the_bits_and_the_callers_array() -> None:
    """normalize_optical / normalize_sar into ``out`` (a strided view, as the strip reader passes)
    or in place of their own temporaries give the bits of the plain float32 expression, and a
    caller's float32 SAR array is never changed."""
    from rsvl_runtime.normalization import _Spec, band_stats, normalize_sar

    rng = np.random.default_rng(0)
    spec = {"bands": ["red", "green", "blue"], "dtype": "uint8", "scale": 255.0,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    dn = rng.integers(0, 256, (3, 64, 80), dtype=np.uint8)
    mean, std = band_stats(_Spec.coerce(spec), 3)
    ref = ((dn.astype(np.float32) / np.float32(255.0) - mean) / std).astype(np.float32)
    assert np.array_equal(normalize_optical(dn, spec).view(np.uint32), ref.view(np.uint32))
    buf = np.full((3, 100, 90), 7.0, np.float32)
    normalize_optical(dn, spec, out=buf[:, 10:74, 5:85])
    assert np.array_equal(buf[:, 10:74, 5:85].view(np.uint32), ref.view(np.uint32))
    assert (buf[:, :10] == 7.0).all() and (buf[:, :, :5] == 7.0).all()  # nothing outside the view

    sar_spec = {"bands": ["vv"], "mean": [-12.0], "std": [5.0]}
    m, s = band_stats(_Spec.coerce(sar_spec), 1)
    for dtype in (np.float32, np.float64):
        sar = rng.normal(-12, 5, (1, 64, 80)).astype(dtype)
        before = sar.copy()
        got = normalize_sar(sar, sar_spec)
        want = ((sar.astype(np.float32) - m) / s).astype(np.float32)
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))
        assert np.array_equal(sar, before) and got is not sar  # the caller's array is untouched
