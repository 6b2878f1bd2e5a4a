"""The tiled scene runner end to end on tiny synthetic GeoTIFFs (rsvl_runtime.scene)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from rsvl_runtime import outputs as out
from rsvl_runtime.raster_io import RasterInputError, align_to
from rsvl_runtime.scene import Prefetcher, run_scene

from ._runtime_rasters import (
    OPTICAL_SPEC,
    SAR_SPEC,
    LinearModel,
    optical_array,
    sar_array,
    softmax,
    whole_image_logits,
    write_tif,
)

NAMES5 = ["water", "forest", "urban", "crop", "bare"]
FINAL_NAMES = {out.LABELS, out.SCORES, out.MASK, out.CLASSES, out.PREVIEW, out.REPORT, out.DONE}


def _run(model: Any, optical: Path | None, sar: Path | None, out_dir: Path, **kw: Any):  # type: ignore[no-untyped-def]
    args: dict[str, Any] = {"class_names": NAMES5[:getattr(model, "k", 5)], "colors": None,
                            "optical_spec": OPTICAL_SPEC, "sar_spec": SAR_SPEC, "tile": 64,
                            "overlap": 0.25, "batch": 4, "progress": False, "cog": False}
    args.update(kw)
    return run_scene(model, None if optical is None else str(optical), None if sar is None else str(sar),
                     out_dir, **args)


def _scene(tmp_path: Path, h: int, w: int, *, opt_nodata: float | None = None, **kw: Any) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    o, s = optical_array(h, w), sar_array(h, w)
    return (write_tif(tmp_path / "optical.tif", o, nodata=opt_nodata, **kw),
            write_tif(tmp_path / "sar.tif", s, **kw), o, s)


def _check_against_whole_image(out_dir: Path, model: LinearModel, o: np.ndarray | None,
                               s: np.ndarray | None, valid: np.ndarray) -> None:
    probs = softmax(whole_image_logits(model, o, s, valid))
    with rasterio.open(out_dir / out.LABELS) as lab, rasterio.open(out_dir / out.SCORES) as sc:
        labels, scores = lab.read(1), sc.read()
    expected_scores = np.clip(np.rint(probs * 255), 1, 255).astype(np.int16)
    expected_scores[:, ~valid] = 0
    assert np.abs(scores.astype(np.int16) - expected_scores).max() <= 1  # everywhere: no seams
    top2 = np.sort(probs, axis=0)[-2:]
    clear = valid & (top2[1] - top2[0] > 1e-4)
    np.testing.assert_array_equal(labels[clear], probs.argmax(0)[clear])
    assert (labels[~valid] == 255).all()


@pytest.mark.parametrize("h,w,tile", [(100, 70, 64), (300, 257, 64), (40, 50, 64), (70, 200, 128)])
def test_tiled_equals_whole_image(tmp_path: Path, h: int, w: int, tile: int) -> None:
    """Ragged edges and scenes smaller than a tile (padded) reproduce the per-pixel model."""
    opt, sar, o, s = _scene(tmp_path, h, w)
    model = LinearModel(5)
    res = _run(model, opt, sar, tmp_path / "out", tile=tile)
    _check_against_whole_image(tmp_path / "out", model, o, s, np.ones((h, w), bool))
    assert out.is_complete(tmp_path / "out")
    assert res.tiles == sum(model.calls) and max(model.calls) <= 4
    assert res.width == w and res.height == h and res.megapixels_per_s > 0
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert names == {out.LABELS, out.SCORES, out.CLASSES, out.PREVIEW, out.REPORT, out.DONE, "labels.qml",
                     "labels.tif.aux.xml", "item.json"}


@pytest.mark.parametrize("mode", ["optical", "sar"])
def test_single_modality(tmp_path: Path, mode: str) -> None:
    opt, sar, o, s = _scene(tmp_path, 90, 100)
    seen: list[tuple[bool, bool]] = []
    model = LinearModel(5)

    def fn(a, b):  # type: ignore[no-untyped-def]
        seen.append((a is None, b is None))
        return model(a, b)

    _run(fn, opt if mode == "optical" else None, sar if mode == "sar" else None, tmp_path / "out")
    assert set(seen) == ({(False, True)} if mode == "optical" else {(True, False)})
    _check_against_whole_image(tmp_path / "out", model, o if mode == "optical" else None,
                               s if mode == "sar" else None, np.ones((90, 100), bool))


def test_nodata_preserved(tmp_path: Path) -> None:
    h, w = 120, 90
    o, s = optical_array(h, w), sar_array(h, w)
    o[:, 10:30, 5:25] = 0            # declared optical nodata
    s[0, 60:70, 40:80] = np.nan      # NaN in SAR
    opt = write_tif(tmp_path / "optical.tif", o, nodata=0)
    sar = write_tif(tmp_path / "sar.tif", s)
    model = LinearModel(5)
    _run(model, opt, sar, tmp_path / "out")
    valid = np.ones((h, w), bool)
    valid[10:30, 5:25] = False
    valid[60:70, 40:80] = False
    _check_against_whole_image(tmp_path / "out", model, o, s, valid)
    with rasterio.open(tmp_path / "out" / out.SCORES) as sc:
        scores = sc.read()
        assert sc.nodata == 0
    assert (scores[:, ~valid] == 0).all() and (scores[:, valid] >= 1).all()
    doc = json.loads((tmp_path / "out" / out.CLASSES).read_text())
    assert doc["nodata_pixels"] == (~valid).sum()


def test_nodata_override_for_rasters_declaring_none(tmp_path: Path) -> None:
    o = optical_array(80, 80)
    o[:, :8, :] = 0  # Landsat-style untagged fill
    opt = write_tif(tmp_path / "optical.tif", o)
    _run(LinearModel(5), opt, None, tmp_path / "a")
    _run(LinearModel(5), opt, None, tmp_path / "b", nodata=0)
    with rasterio.open(tmp_path / "a" / out.LABELS) as a, rasterio.open(tmp_path / "b" / out.LABELS) as b:
        la, lb = a.read(1), b.read(1)
    assert (la != 255).all()
    assert (lb[:8] == 255).all() and (lb[8:] != 255).all()


def test_outputs_georeferencing_and_overviews(tmp_path: Path) -> None:
    opt, sar, _, _ = _scene(tmp_path, 100, 130)
    _run(LinearModel(5), opt, sar, tmp_path / "out", cog=None)
    with rasterio.open(opt) as src:
        for name in (out.LABELS, out.SCORES):
            with rasterio.open(tmp_path / "out" / name) as ds:
                assert ds.crs == src.crs and ds.transform == src.transform
                assert (ds.width, ds.height) == (src.width, src.height)
                assert ds.overviews(1), name
                assert ds.dtypes[0] == "uint8"
                assert ds.nodata == (255 if name == out.LABELS else 0)
                if name == out.SCORES:
                    assert ds.descriptions == tuple(NAMES5)
    report = (tmp_path / "out" / out.REPORT).read_text()
    assert "data:image/png;base64," in report and "EPSG:32633" in report and str(opt.resolve()) in report


def test_classes_areas_sum_to_valid_area(tmp_path: Path) -> None:
    h, w = 70, 90
    o = optical_array(h, w)
    o[:, :7, :] = 0
    opt = write_tif(tmp_path / "optical.tif", o, nodata=0)
    _run(LinearModel(5), opt, None, tmp_path / "out")
    doc = json.loads((tmp_path / "out" / out.CLASSES).read_text())
    valid_px = (h - 7) * w
    assert sum(c["pixels"] for c in doc["classes"]) == valid_px
    assert math.isclose(sum(c["area_m2"] for c in doc["classes"]), valid_px * 100.0)
    assert math.isclose(doc["valid_area_m2"], valid_px * 100.0)
    assert math.isclose(sum(c["fraction"] for c in doc["classes"]), 1.0)
    assert [c["name"] for c in doc["classes"]] == NAMES5 and all(len(c["color"]) == 3 for c in doc["classes"])
    with rasterio.open(tmp_path / "out" / out.LABELS) as ds:
        labels = ds.read(1)
    assert [c["pixels"] for c in doc["classes"]] == [int((labels == i).sum()) for i in range(5)]


def test_geographic_scene_reports_square_metres(tmp_path: Path) -> None:
    o = optical_array(50, 60)
    opt = write_tif(tmp_path / "optical.tif", o, crs="EPSG:4326", origin=(10.0, 0.025), res=0.001)
    _run(LinearModel(5), opt, None, tmp_path / "out")
    doc = json.loads((tmp_path / "out" / out.CLASSES).read_text())
    per_px = doc["valid_area_m2"] / (50 * 60)
    assert 110.5 ** 2 < per_px < 111.8 ** 2


def test_misregistered_pair_refused_then_aligned(tmp_path: Path) -> None:
    opt = write_tif(tmp_path / "optical.tif", optical_array(80, 90))
    sar = write_tif(tmp_path / "sar.tif", sar_array(70, 70), origin=(499990.0, 4100012.0), res=12.0)
    with pytest.raises(RasterInputError) as e:
        _run(LinearModel(5), opt, sar, tmp_path / "out")
    assert str(opt) in str(e.value) and str(sar) in str(e.value) and "--align" in str(e.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    aligned = align_to(sar, opt, tmp_path / "sar_aligned.tif")
    _run(LinearModel(5), opt, aligned, tmp_path / "out")
    assert out.is_complete(tmp_path / "out")
    with rasterio.open(tmp_path / "out" / out.LABELS) as ds:
        labels = ds.read(1)
    # the aligned SAR covers the optical scene except a strip on the right/bottom: NaN -> nodata
    assert (labels != 255).mean() > 0.8 and (labels == 255).any()


def test_wrong_band_count_through_run_scene(tmp_path: Path) -> None:
    opt = write_tif(tmp_path / "four.tif", optical_array(40, 40, bands=4))
    with pytest.raises(RasterInputError, match="--bands"):
        _run(LinearModel(5), opt, None, tmp_path / "out")
    _run(LinearModel(5), opt, None, tmp_path / "out", bands=[3, 2, 1])
    assert out.is_complete(tmp_path / "out")


def test_corrupt_input_through_run_scene(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all" * 10)
    with pytest.raises(RasterInputError, match="bad.tif"):
        _run(LinearModel(5), bad, None, tmp_path / "out")


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_interruption_leaves_no_final_named_output(tmp_path: Path) -> None:
    opt, sar, _, _ = _scene(tmp_path, 300, 257)
    model = LinearModel(5, fail_after=5)  # KeyboardInterrupt mid-scene
    with pytest.raises(KeyboardInterrupt):
        _run(model, opt, sar, tmp_path / "out")
    assert _leftovers(tmp_path / "out") == []  # no final names, no temporaries
    assert not out.is_complete(tmp_path / "out")
    assert not [t for t in threading.enumerate() if t.name == "rsvl-reader"]  # reader stopped


def test_failed_rerun_keeps_previous_complete_output(tmp_path: Path) -> None:
    opt, sar, _, _ = _scene(tmp_path, 150, 150)
    _run(LinearModel(5), opt, sar, tmp_path / "out")
    assert out.is_complete(tmp_path / "out")
    before = _leftovers(tmp_path / "out")
    with pytest.raises(RuntimeError):
        _run(LinearModel(5, fail_after=2, error=RuntimeError), opt, sar, tmp_path / "out")
    assert out.is_complete(tmp_path / "out")  # the new result replaces the old only when complete
    assert _leftovers(tmp_path / "out") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optical.tif", "out", "sar.tif"]  # no temporaries


def test_referring_task_writes_mask(tmp_path: Path) -> None:
    o = optical_array(100, 80)
    o[:, :5] = 0
    opt = write_tif(tmp_path / "optical.tif", o, nodata=0)
    model = LinearModel(2)
    _run(model, opt, None, tmp_path / "out", task="referring", class_names=["background", "target"])
    names = set(_leftovers(tmp_path / "out"))
    assert out.MASK in names and out.LABELS not in names and out.SCORES not in names
    with rasterio.open(tmp_path / "out" / out.MASK) as ds:
        mask = ds.read(1)
        assert ds.nodata == 255
    assert set(np.unique(mask)) <= {0, 1, 255} and (mask[:5] == 255).all()
    valid = np.ones((100, 80), bool)
    valid[:5] = False
    ref = whole_image_logits(model, o, None, valid).argmax(0)
    logits = whole_image_logits(model, o, None, valid)
    clear = valid & (np.abs(logits[1] - logits[0]) > 1e-4)
    np.testing.assert_array_equal(mask[clear], ref[clear])
    assert out.is_complete(tmp_path / "out")

    single = LinearModel(1)  # a single target logit: mask = logit > 0
    _run(single, opt, None, tmp_path / "one", task="referring", class_names=["background", "target"])
    with rasterio.open(tmp_path / "one" / out.MASK) as ds:
        m1 = ds.read(1)
    l1 = whole_image_logits(single, o, None, valid)[0]
    clear = valid & (np.abs(l1) > 1e-4)
    np.testing.assert_array_equal(m1[clear], (l1 > 0)[clear])


def test_wrong_number_of_logit_channels(tmp_path: Path) -> None:
    opt, _, _, _ = _scene(tmp_path, 40, 40)
    with pytest.raises(ValueError, match=r"shape \(1, 3, 64, 64\).*expected \(1, 5, 64, 64\)"):
        _run(LinearModel(3), opt, None, tmp_path / "out", class_names=NAMES5)
    assert _leftovers(tmp_path / "out") == []


def test_prefetcher_propagates_errors_and_stops() -> None:
    def gen():  # type: ignore[no-untyped-def]
        yield 1
        yield 2
        raise OSError("disk gone")
    with pytest.raises(OSError, match="disk gone"):
        list(Prefetcher(gen(), 1))
    produced: list[int] = []

    def endless():  # type: ignore[no-untyped-def]
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1
    pf = Prefetcher(endless(), 2)
    it = iter(pf)
    assert next(it) == 0
    pf.close()
    assert len(produced) < 10  # bounded queue: the producer never ran ahead


def test_memory_does_not_grow_with_scene_height(tmp_path: Path) -> None:
    """numpy allocations (traced) of a 4096-row scene stay those of a 512-row scene: only the
    open strips are kept, never a whole-scene array."""
    peaks = []
    for h in (64, 512, 4096):  # the first run only warms up lazy imports
        d = tmp_path / str(h)
        d.mkdir()
        opt = write_tif(d / "optical.tif", optical_array(h, 96))
        tracemalloc.start()
        _run(LinearModel(5), opt, None, d / "out", hash_inputs=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    scene_bytes = 4096 * 96 * 5 * 4  # one whole-scene float32 [K, H, W] array
    assert peaks[2] < peaks[1] * 1.3 + 200_000, peaks
    assert peaks[2] < scene_bytes / 2, (peaks, scene_bytes)


def test_runtime_scene_does_not_import_torch() -> None:
    code = ("import sys, rsvl_runtime.scene, rsvl_runtime.outputs, rsvl_runtime.raster_io, "
            "rsvl_runtime.tiling; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
