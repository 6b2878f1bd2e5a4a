"""Fault injection on the input side (issue 11): what used to be silently wrong or a raw traceback
is refused with one line (file, wrong value, fix) or logged as a warning.

Most cases call the checks directly on small synthetic rasters (no model); the CLI cases run
``rsvl_runtime.cli.main`` in-process on the session's tiny bundle (``tiny_bundle``).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.errors import NotGeoreferencedWarning

from rsvl_runtime import checks
from rsvl_runtime.batch import (
    BatchInputError,
    discover_records,
    read_summary,
    records_from_manifest,
    run_local,
)
from rsvl_runtime.checks import check_array, check_overlap, preflight, sar_array_valid
from rsvl_runtime.cli import build_parser, main, os_error_line
from rsvl_runtime.cli_common import parse_bands, scene_options
from rsvl_runtime.raster_io import (
    GEOREF_OK,
    RasterInputError,
    align_to,
    check_input_dtype,
    georeferencing,
    prepare_input,
    warp_gcps,
)
from rsvl_runtime.segmenter import label_array, open_bundle

from ._runtime_rasters import (
    CRS,
    OPTICAL_SPEC,
    ORIGIN,
    RES,
    SAR_SPEC,
    optical_array,
    sar_array,
    write_tif,
)

H, W = 40, 48
SPECS = {"optical_spec": OPTICAL_SPEC, "sar_spec": SAR_SPEC}


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A co-registered optical (uint8) / SAR (dB) pair."""
    return (write_tif(tmp_path / "optical.tif", optical_array(H, W)),
            write_tif(tmp_path / "sar.tif", sar_array(H, W)))


def _linear(path: Path) -> Path:
    return write_tif(path, (10 ** (sar_array(H, W) / 10)).astype(np.float32))


def _gcp_only(path: Path, data: np.ndarray, origin: tuple[float, float] = ORIGIN) -> Path:
    """``data`` with four corner GCPs (EPSG:32633, 10 m) and no geotransform."""
    _, h, w = data.shape
    x0, y0 = origin
    gcps = [GroundControlPoint(r, c, x0 + c * RES, y0 - r * RES) for r in (0, h) for c in (0, w)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        ds = rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=data.shape[0], dtype=data.dtype.name)
    with ds:
        ds.gcps = (gcps, CRS)
        ds.write(data)
    return path


def _png(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        ds = rasterio.open(path, "w", driver="PNG", width=W, height=H, count=3, dtype="uint8")
    with ds:
        ds.write(optical_array(H, W))
    return path


# ============================================================================ SAR units
def test_linear_sar_given_as_db_is_refused_with_the_fix(pair, tmp_path: Path) -> None:
    opt, _ = pair
    lin = _linear(tmp_path / "linear_sar.tif")
    with pytest.raises(RasterInputError) as e:
        preflight(opt, lin, **SPECS)
    msg = str(e.value)
    assert "linear_sar.tif" in msg and "--sar-units linear" in msg  # the file and the fix
    assert "100 % of the values are >= 0" in msg and "median 0.05" in msg  # the observed values
    assert "-12 ± 5" in msg and "-27..3 dB" in msg  # the bundle's dB range
    preflight(opt, lin, sar_units="linear", **SPECS)  # the fix works


def test_forced_sar_check_only_warns(pair, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    opt, _ = pair
    lin = _linear(tmp_path / "linear_sar.tif")
    with caplog.at_level(logging.WARNING, logger="rsvl.checks"):
        preflight(opt, lin, sar_check=False, **SPECS)
    assert any("linear_sar.tif" in r.getMessage() and "linear intensity" in r.getMessage() for r in caplog.records)


def test_db_sar_given_as_linear_is_refused(pair) -> None:
    opt, sar = pair
    with pytest.raises(RasterInputError, match=r"sar\.tif.*100 % negative values.*--sar-units db"):
        preflight(opt, sar, sar_units="linear", **SPECS)


def test_sar_median_outside_the_bundle_range_warns(pair, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    opt, _ = pair
    far = write_tif(tmp_path / "far.tif", sar_array(H, W) - 50)  # ~ -62 dB
    with caplog.at_level(logging.WARNING, logger="rsvl.checks"):
        preflight(opt, far, **SPECS)
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert "far.tif" in msgs and "outside the bundle's dB range -27..3" in msgs and "median -6" in msgs


def test_plausible_sar_passes(pair) -> None:
    preflight(*pair, **SPECS)


# ============================================================================ nodata
def test_all_nan_and_all_inf_sar_are_refused(pair, tmp_path: Path) -> None:
    opt, _ = pair
    for name, value in (("nan_sar.tif", np.nan), ("inf_sar.tif", np.inf)):
        bad = write_tif(tmp_path / name, np.full((1, H, W), value, np.float32))
        with pytest.raises(RasterInputError, match=rf"SAR raster .*{name} has no valid pixel.*NaN/inf"):
            preflight(opt, bad, **SPECS)


def test_all_nodata_optical_is_refused(pair, tmp_path: Path) -> None:
    _, sar = pair
    empty = write_tif(tmp_path / "empty.tif", np.zeros((3, H, W), np.uint8), nodata=0)
    with pytest.raises(RasterInputError, match=r"optical raster .*empty\.tif has no valid pixel.*nodata 0"):
        preflight(empty, sar, **SPECS)


def test_pair_without_common_valid_pixels_is_refused(tmp_path: Path) -> None:
    a, s = optical_array(H, W), sar_array(H, W)
    a[:, :, W // 2:] = 0
    s[:, :, :W // 2] = np.nan
    opt = write_tif(tmp_path / "left.tif", a, nodata=0)
    sar = write_tif(tmp_path / "right.tif", s)
    with pytest.raises(RasterInputError, match=r"left\.tif and .*right\.tif have no valid pixel in common"):
        preflight(opt, sar, **SPECS)


def test_more_than_99_percent_nodata_warns(pair, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, sar = pair
    a = np.zeros((3, H, W), np.uint8)
    a[:, :2, :2] = 100  # 4 valid pixels of 1920
    opt = write_tif(tmp_path / "mostly_nodata.tif", a, nodata=0)
    with caplog.at_level(logging.WARNING, logger="rsvl.checks"):
        preflight(opt, sar, **SPECS)
    msgs = [r.getMessage() for r in caplog.records if r.name == "rsvl.checks"]
    assert any("mostly_nodata.tif" in m and "99.79 %" in m for m in msgs), msgs


def test_decimated_sample_is_confirmed_before_refusing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A valid pixel the decimated sample misses: a full pass finds it, so a warning, not an error."""
    monkeypatch.setattr(checks, "SAMPLE_MAX_SIDE", 16)  # 48 px -> every 3rd pixel
    a = np.zeros((3, H, W), np.uint8)
    a[:, 0, 0] = 50  # nearest-neighbour decimation samples pixel centres 1, 4, 7, ...
    opt = write_tif(tmp_path / "one_pixel.tif", a, nodata=0)
    src = prepare_input(opt, "optical", OPTICAL_SPEC)
    assert not checks.sample_input(src).valid.any()
    with caplog.at_level(logging.WARNING, logger="rsvl.checks"):
        preflight(opt, None, optical_spec=OPTICAL_SPEC, sar_spec=None)
    assert any("one_pixel.tif" in r.getMessage() and "estimated" in r.getMessage() for r in caplog.records)


# ============================================================================ georeferencing and overlap
def test_png_without_georeferencing_is_refused_with_the_fix(tmp_path: Path) -> None:
    png = _png(tmp_path / "photo.png")
    with pytest.raises(RasterInputError) as e:
        preflight(png, None, **SPECS)
    msg = str(e.value)
    assert "photo.png is not georeferenced" in msg and "1 m²" in msg and "gdal_translate -a_srs" in msg


def test_raster_without_crs_is_refused(tmp_path: Path) -> None:
    f = write_tif(tmp_path / "no_crs.tif", optical_array(H, W), crs=None)
    with pytest.raises(RasterInputError, match=r"no_crs\.tif is not georeferenced \(a geotransform but no CRS\)"):
        preflight(f, None, **SPECS)


def test_gcp_only_raster_is_refused_without_align_and_warped_with_it(tmp_path: Path) -> None:
    sar = _gcp_only(tmp_path / "gcp_sar.tif", sar_array(H, W))
    opt = write_tif(tmp_path / "optical.tif", optical_array(H, W))
    with pytest.raises(RasterInputError, match=r"gcp_sar\.tif has only ground control points \(4 GCPs in "
                                               r"EPSG:32633\).*--align"):
        preflight(opt, sar, **SPECS)
    warped = warp_gcps(sar, tmp_path / "warped.tif")
    with rasterio.open(warped) as w:
        assert georeferencing(w) == GEOREF_OK and w.crs == CRS
        assert w.transform.a == pytest.approx(RES, rel=1e-3) and w.transform.c == pytest.approx(ORIGIN[0])
    aligned = align_to(sar, opt, tmp_path / "aligned.tif")  # GCP-only source warped with its GCPs
    preflight(opt, aligned, **SPECS)
    with rasterio.open(aligned) as a:
        inner = a.read(1)[2:-2, 2:-2]
    np.testing.assert_allclose(inner, sar_array(H, W)[0, 2:-2, 2:-2], atol=0.5)


def test_align_without_overlap_names_both_files_and_bounds(tmp_path: Path) -> None:
    opt = write_tif(tmp_path / "optical.tif", optical_array(H, W))
    far = write_tif(tmp_path / "far_sar.tif", sar_array(H, W), origin=(600000.0, 4100000.0))
    with pytest.raises(RasterInputError) as e:
        check_overlap(opt, far)
    msg = str(e.value)
    assert "far_sar.tif does not overlap optical raster" in msg and "optical.tif" in msg
    assert "(600000, 4.0996e+06, 600480, 4.1e+06)" in msg and "(500000, 4.0996e+06, 500480, 4.1e+06)" in msg
    check_overlap(opt, write_tif(tmp_path / "near.tif", sar_array(H, W), origin=(500200.0, 4100100.0)))


# ============================================================================ the Python API's arrays
@pytest.mark.parametrize("arr", [
    optical_array(8, 8).astype(np.float32) / 255, optical_array(8, 8, dtype="uint16"),
    optical_array(8, 8).astype(np.int8), optical_array(8, 8) > 100,
    optical_array(8, 8).astype(np.complex64), optical_array(8, 8).astype(object),
], ids=["float01", "uint16", "int8", "bool", "complex", "object"])
def test_api_refuses_optical_dtypes_the_cli_refuses(arr: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(RasterInputError) as e:
        check_array(arr, "optical", OPTICAL_SPEC)
    msg = str(e.value)
    assert f"optical array is {arr.dtype.name}" in msg and "accepted: uint8" in msg
    if arr.dtype.name in ("float32", "uint16"):  # the raster path says the same, with the file name
        f = write_tif(tmp_path / "x.tif", arr)
        with pytest.raises(RasterInputError) as r:
            prepare_input(f, "optical", OPTICAL_SPEC)
        assert str(r.value) == msg.replace("optical array", f"optical raster {f}")


def test_api_accepts_declared_uint16_and_channels_last() -> None:
    spec16 = {**OPTICAL_SPEC, "dtype": "uint16", "scale": 10000.0}
    assert check_array(optical_array(8, 9, dtype="uint16"), "optical", spec16).shape == (3, 8, 9)
    assert check_array(np.moveaxis(optical_array(8, 9), 0, -1), "optical", OPTICAL_SPEC).shape == (3, 8, 9)
    assert check_input_dtype(np.dtype("float64"), SAR_SPEC, "sar", "SAR array") == "float64"
    with pytest.raises(RasterInputError, match="optical array is None"):
        check_array(None, "optical", OPTICAL_SPEC)


def test_api_nan_sar_is_nodata_and_all_nan_is_refused() -> None:
    s = sar_array(H, W)
    s[0, :5] = np.nan
    valid = sar_array_valid(s, SAR_SPEC, None)
    assert not valid[:5].any() and valid[5:].all()
    with pytest.raises(RasterInputError, match="SAR array has no valid pixel"):
        sar_array_valid(np.full((1, 4, 4), np.nan, np.float32), SAR_SPEC, None)
    with pytest.raises(RasterInputError, match="SAR array .*linear intensity"):
        sar_array_valid(10 ** (s / 10), SAR_SPEC, None)


def test_labels_never_wrap_and_nodata_has_zero_probability() -> None:
    probs = np.zeros((300, 2, 2), np.float32)
    probs[280, 0, 0] = 1
    probs[1, 1, 1] = 1
    valid = np.array([[True, True], [True, False]])
    labels = label_array(probs, valid)
    assert labels.dtype == np.uint16 and labels[0, 0] == 280 and labels[1, 1] == 65535
    assert (probs[:, 1, 1] == 0).all()
    small = label_array(np.ones((3, 2, 2), np.float32), valid)
    assert small.dtype == np.uint8 and small[1, 1] == 255


# ============================================================================ batch inputs
def test_csv_row_with_extra_fields_is_one_clear_error(tmp_path: Path) -> None:
    m = tmp_path / "scenes.csv"
    m.write_text("id,optical,sar\na,o.tif,s.tif\nb,o,1.tif,s.tif\n")
    with pytest.raises(BatchInputError) as e:
        records_from_manifest(m)
    msg = str(e.value)
    assert "scenes.csv line 3: 4 fields but the header has 3" in msg and "['s.tif']" in msg
    assert "Quote paths that contain commas" in msg


def test_json_manifest_with_a_non_path_value_names_it(tmp_path: Path) -> None:
    m = tmp_path / "scenes.json"
    m.write_text(json.dumps([{"id": "a", "optical": ["o.tif"], "sar": "s.tif"}]))
    with pytest.raises(BatchInputError, match=r"scenes\.json scene 1: 'optical' is list \['o\.tif'\]; give a file path"):
        records_from_manifest(m)


def test_reserved_scene_id_is_refused_and_the_summary_still_written(tmp_path: Path) -> None:
    for n in ("o.tif", "s.tif"):
        (tmp_path / n).write_bytes(b"x")
    m = tmp_path / "scenes.csv"
    m.write_text("id,optical,sar\nsummary.csv,o.tif,s.tif\nSUMMARY.parquet,o.tif,s.tif\n")
    recs = records_from_manifest(m)
    assert all("is reserved" in r.error and "another id" in r.error for r in recs)
    res = run_local(recs, bundle=tmp_path / "no-bundle-needed", out_dir=tmp_path / "out")
    assert (tmp_path / "out" / "summary.csv").is_file() and not (tmp_path / "out" / "summary.csv").is_dir()
    assert [r["status"] for r in read_summary(tmp_path / "out")] == ["error", "error"] and not res.ok


def test_unpaired_files_in_a_batch_folder_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for rel in ("optical/a.tif", "sar/a.tif", "optical/lonely.tif", "sar/b_sar.tif"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="rsvl.batch"):
        recs = discover_records(tmp_path, modes=["optical+sar", "optical", "sar"])
    assert {r.id: r.error for r in recs} == {"a": None, "b": None, "lonely": None}
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "2 unpaired file(s)" in msg and "lonely.tif (no sar partner)" in msg
    assert "b_sar.tif (no optical partner)" in msg and "paired by file name" in msg


def test_scene_options_share_one_band_parser() -> None:
    args = build_parser().parse_args(["--bundle", "b", "--out", "o", "--bands", "3,2,1", "--sar-bands", "1",
                                      "--no-sar-check", "--no-cog", "--sar-nodata", "-9999"])
    opts = scene_options(args)
    assert opts["bands"] == [3, 2, 1] and opts["sar_bands"] == [1] and opts["sar_check"] is False
    assert opts["cog"] is False and opts["nodata"] == {"optical": None, "sar": -9999.0}
    with pytest.raises(ValueError, match=r"--sar-bands 'x': give 1-based band indexes"):
        parse_bands("x", "--sar-bands")


# ============================================================================ CLI catch-all, digest pinning
def test_os_errors_become_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    out = tmp_path / "out"
    line = os_error_line(OSError(errno.EROFS, "Read-only file system", str(out / "labels.tif")), str(out))
    assert "labels.tif" in line and "read-only" in line and "writable --out" in line
    assert "free space" in os_error_line(OSError(errno.ENOSPC, "No space left on device", str(out / "x")), str(out))

    def read_only(args: argparse.Namespace) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", str(out))

    monkeypatch.setattr("rsvl_runtime.cli.run", read_only)
    assert main(["--bundle", "b", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("rsvl-infer: error: cannot access") and "permission denied" in err


def test_expect_digest_is_passed_to_bundle_load(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_load(path, expect_digest=None, **kw):  # type: ignore[no-untyped-def]
        seen["args"] = (str(path), expect_digest)
        return "bundle"

    monkeypatch.setattr("rsvl_runtime.bundle.Bundle.load", staticmethod(fake_load))
    assert open_bundle("some/bundle", "abc123") == "bundle" and seen["args"] == ("some/bundle", "abc123")


# ============================================================================ end to end (tiny bundle)
def _cli(bundle: Path, out: Path, *extra: str) -> int:
    return main(["--bundle", str(bundle), "--out", str(out), "--quiet", *extra])


@pytest.mark.slow
def test_cli_input_faults_exit_2_with_one_line(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    opt = write_tif(tmp_path / "optical.tif", optical_array(64, 64))
    lin = write_tif(tmp_path / "linear_sar.tif", (10 ** (sar_array(64, 64) / 10)).astype(np.float32))
    cases = [
        (["--optical", str(opt), "--sar", str(lin)], ["linear_sar.tif", "--sar-units linear"]),
        (["--optical", str(_png(tmp_path / "photo.png")), "--sar", str(lin)], ["photo.png", "not georeferenced"]),
        (["--optical", str(opt), "--sar", str(write_tif(tmp_path / "far.tif", sar_array(64, 64),
                                                        origin=(700000.0, 4100000.0))), "--align"],
         ["far.tif does not overlap", "optical.tif", "bounds"]),
        (["--optical", str(opt), "--sar", str(write_tif(tmp_path / "nan.tif", np.full((1, 64, 64), np.nan,
                                                                                    np.float32)))],
         ["nan.tif has no valid pixel"]),
        (["--optical", str(opt), "--sar", str(_gcp_only(tmp_path / "gcp.tif", sar_array(64, 64)))],
         ["gcp.tif has only ground control points", "--align"]),
        (["--optical", str(opt), "--sar", str(lin), "--expect-digest", "0" * 64], ["digest"]),
    ]
    for argv, needles in cases:
        assert _cli(tiny_bundle, tmp_path / "o", *argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("rsvl-infer: error:") and "\n" not in err and "Traceback" not in err, err
        assert all(n in err for n in needles), (needles, err)
    assert not (tmp_path / "o" / "done.json").exists()


@pytest.mark.slow
def test_cli_fixes_work(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    opt = write_tif(tmp_path / "optical.tif", optical_array(64, 64))
    lin = write_tif(tmp_path / "linear_sar.tif", (10 ** (sar_array(64, 64) / 10)).astype(np.float32))
    digest = open_bundle(tiny_bundle).digest
    assert _cli(tiny_bundle, tmp_path / "lin", "--optical", str(opt), "--sar", str(lin), "--sar-units", "linear",
                "--expect-digest", digest) == 0, capsys.readouterr().err
    gcp = _gcp_only(tmp_path / "gcp.tif", sar_array(64, 64))
    assert _cli(tiny_bundle, tmp_path / "gcp", "--optical", str(opt), "--sar", str(gcp), "--align") == 0, \
        capsys.readouterr().err
    with rasterio.open(tmp_path / "gcp" / "labels.tif") as lab:
        assert lab.crs == CRS and lab.transform.a == pytest.approx(RES)


@pytest.mark.slow
def test_batch_cli_faults(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    m = tmp_path / "scenes.csv"
    m.write_text("id,optical,sar\na,o.tif,s.tif,extra.tif\n")
    assert _cli(tiny_bundle, tmp_path / "o", "--inputs", str(m)) == 2
    assert "scenes.csv line 2: 4 fields" in capsys.readouterr().err
    opt = write_tif(tmp_path / "o.tif", optical_array(64, 64))
    sar = write_tif(tmp_path / "s.tif", sar_array(64, 64))
    m.write_text(f"id,optical,sar\nsummary.csv,{opt},{sar}\nok,{opt},{sar}\n")
    assert _cli(tiny_bundle, tmp_path / "b", "--inputs", str(m), "--expect-digest",
                open_bundle(tiny_bundle).digest) == 1
    assert "'summary.csv' is reserved" in capsys.readouterr().err
    rows = {r["scene"]: r["status"] for r in read_summary(tmp_path / "b")}
    assert rows == {"summary.csv": "error", "ok": "ok"}


@pytest.mark.slow
def test_api_on_the_tiny_bundle(tiny_bundle: Path) -> None:
    from rsvl_runtime import Segmenter

    seg = Segmenter.load(tiny_bundle, expect_digest=open_bundle(tiny_bundle).digest)
    with pytest.raises(ValueError, match="both optical and SAR are None"):
        seg.predict(None, None)
    with pytest.raises(RasterInputError, match="optical array is float32"):
        seg.predict(optical_array(64, 64).astype(np.float32) / 255, sar_array(64, 64))
    s = sar_array(64, 64)
    s[0, :8] = np.nan
    labels, probs = seg.predict(optical_array(64, 64), s)
    assert (labels[:8] == 255).all() and (labels[8:] < len(seg.classes)).all()
    assert np.isfinite(probs).all() and (probs[:, :8] == 0).all()
    # uint16 reflectance x 10000 with scale=0.0001 is the uint8 path (to the rounding of the uint16 values)
    o8 = optical_array(64, 64)
    o16 = np.rint(o8.astype(np.float64) / 255 * 10000).astype(np.uint16)
    with pytest.raises(RasterInputError, match="--scale"):
        seg.predict(o16, s)
    l16, p16 = seg.predict(o16, s, scale=0.0001)
    np.testing.assert_array_equal(l16, labels)
    np.testing.assert_allclose(p16, probs, atol=1e-3)
    with pytest.raises(Exception, match="digest"):
        Segmenter.load(tiny_bundle, expect_digest="f" * 64)
