"""The scene runner's stages (issue 14, item 3): the writer thread (blend, class decision, write
off the engine's thread), the COG encoded once, and the per-stage timings in done.json."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rasterio.shutil

from rsvl_runtime import outputs as out
from rsvl_runtime import sink
from rsvl_runtime.scene import run_scene

from ._runtime_rasters import OPTICAL_SPEC, SAR_SPEC, LinearModel, optical_array, sar_array, write_tif

NAMES = ["water", "forest", "urban", "crop", "bare"]
STAGES = ("read_s", "normalise_s", "predict_s", "blend_s", "postprocess_s", "write_s", "sink_wait_s",
          "inference_s", "rasters_finalize_s", "reports_s", "total_s")


def _scene(folder: Path, h: int = 200, w: int = 160) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return (write_tif(folder / "optical.tif", optical_array(h, w)),
            write_tif(folder / "sar.tif", sar_array(h, w)))


def _run(model: Any, opt: Path, sar: Path | None, out_dir: Path, **kw: Any):  # type: ignore[no-untyped-def]
    args: dict[str, Any] = {"class_names": NAMES, "colors": None, "optical_spec": OPTICAL_SPEC,
                            "sar_spec": SAR_SPEC, "tile": 64, "overlap": 0.25, "batch": 4,
                            "progress": False, "cog": True, "hash_inputs": False, "stac": False}
    args.update(kw)
    return run_scene(model, str(opt), None if sar is None else str(sar), out_dir, **args)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".out."))


def _sink_threads() -> list[str]:
    return [t.name for t in threading.enumerate()
            if t.name in ("rsvl-writer", "rsvl-cog", "rsvl-reader") or t.name.startswith("rsvl-work")]




# ----------------------------------------------------------------------------- writer thread
@pytest.mark.parametrize("pipeline", ["overlap", "serial"])
def test_error_in_the_writer_thread_is_the_runs_error_and_nothing_is_left(tmp_path: Path, pipeline: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    opt, sar = _scene(tmp_path / "in", 1000, 160)  # 20 rows of 3 tiles
    real_commit = out.GeoTiffRowWriter.commit  # every emitted strip's rows are committed
    seen: list[str] = []

    def failing(self: out.GeoTiffRowWriter, m: int) -> None:
        seen.append(threading.current_thread().name)
        if len(seen) > 2:
            raise RuntimeError("encoder broke")
        real_commit(self, m)

    monkeypatch.setattr(out.GeoTiffRowWriter, "commit", failing)
    model = LinearModel(5)
    with pytest.raises(RuntimeError, match="^encoder broke$"):
        _run(model, opt, sar, tmp_path / "out", pipeline=pipeline)
    if pipeline == "overlap":  # the rows are written off the engine's thread (the writer thread and its pool)
        assert seen and "MainThread" not in seen and all(n.startswith(("rsvl-work", "rsvl-writer")) for n in seen)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
    assert sum(model.calls) < 40  # the engine stopped soon after (strip 1 of 20), not at the end
    assert _sink_threads() == []


def test_error_in_the_engine_stops_the_writer_thread(tmp_path: Path) -> None:
    opt, sar = _scene(tmp_path / "in")
    with pytest.raises(ValueError, match="interrupted by the test"):
        _run(LinearModel(5, fail_after=2, error=ValueError), opt, sar, tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == [] and _sink_threads() == []


class _Recorder:
    """A stand-in for a Blender: records what reaches it; ``fail_at`` makes an add raise."""

    def __init__(self, fail_at: int | None = None, delay: float = 0.0) -> None:
        self.items: list[Any] = []
        self.fail_at, self.delay = fail_at, delay

    def strip(self, row: int, valid: np.ndarray) -> None:
        self.items.append(("strip", row))

    def add(self, tiles: Any, logits: np.ndarray) -> None:
        time.sleep(self.delay)
        if self.fail_at is not None and len(self.items) == self.fail_at:
            raise OSError("disk gone")
        self.items.append(("add", int(logits[0])))

    def finish(self) -> dict[str, float]:
        return {"blend_s": 1.0}


def test_sink_thread_keeps_order_hands_arrays_over_and_returns_timings() -> None:
    rec = _Recorder()
    st = sink.SinkThread(rec, maxsize=1)  # type: ignore[arg-type]
    arrays = [np.full(3, i) for i in range(5)]
    st.strip(0, np.ones((2, 2), bool))
    for a in arrays:
        st.add([], a)
    timings = st.finish()
    st.close()
    assert rec.items == [("strip", 0)] + [("add", i) for i in range(5)]
    assert timings["blend_s"] == 1.0 and timings["sink_wait_s"] >= 0.0


def test_sink_thread_error_surfaces_at_the_next_call() -> None:
    st = sink.SinkThread(_Recorder(fail_at=1), maxsize=1)  # type: ignore[arg-type]
    st.strip(0, np.ones((1, 1), bool))
    with pytest.raises(OSError, match="disk gone"):
        for i in range(50):  # the failure reaches the producer within a few hand-overs
            st.add([], np.full(1, i))
            time.sleep(0.01)
        st.finish()
    st.close()
    assert not any(t.name == "rsvl-writer" for t in threading.enumerate())


def test_sink_thread_close_stops_a_busy_writer() -> None:
    rec = _Recorder(delay=0.05)
    st = sink.SinkThread(rec, maxsize=2)  # type: ignore[arg-type]
    for i in range(3):
        st.add([], np.full(1, i))
    st.close()  # e.g. Ctrl-C in the engine's thread: stop after the current item, no finish
    assert 1 <= len(rec.items) <= 3 and not any(t.name == "rsvl-writer" for t in threading.enumerate())


# ----------------------------------------------------------------------------- the COG, written once
def test_cog_is_encoded_once_from_a_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rsvl_runtime.cog as cog

    opt, sar = _scene(tmp_path / "in", 300, 200)
    copies: list[tuple[str, str, str | None, int]] = []
    real_write = cog.write_cog

    def counting_write(spool: Any, levels: Any, dest: Any, **kw: Any) -> Any:
        with rasterio.open(spool) as ds:  # what the COG writer is handed: the raw spool + levels
            copies.append((Path(str(spool)).name.split(".")[1], "COG", ds.compression, len(levels)))
        return real_write(spool, levels, dest, **kw)

    built: list[Any] = []
    real_build = rasterio.io.DatasetWriter.build_overviews

    def recording_build(self: Any, *a: Any, **k: Any) -> None:
        built.append(self.compression)  # GDAL's overviews (the plain layout only)
        real_build(self, *a, **k)

    monkeypatch.setattr(cog, "write_cog", counting_write)
    monkeypatch.setattr(rasterio.io.DatasetWriter, "build_overviews", recording_build)
    res = _run(LinearModel(5), opt, sar, tmp_path / "out")
    cogs = sorted(c for c in copies if c[1] == "COG")
    # a small spool fits the page cache: uncompressed (a big one is ZSTD-1, see the next test)
    assert out.spool_creation(5 * 300 * 200 * 4 // 3) == {"interleave": "band"}
    assert cogs == [("labels", "COG", None, 1), ("scores", "COG", None, 1)]  # one encode per raster
    assert built == []  # the levels were reduced while the rows were written: no pass over the raster
    assert "cog_write_s" in res.timings and "overviews_s" in res.timings
    d = tmp_path / "out"
    with rasterio.open(d / out.LABELS) as lab, rasterio.open(d / out.SCORES) as sc:
        for ds in (lab, sc):
            assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert ds.compression.value.lower() == "deflate"
            assert ds.overviews(1) == out.overview_factors(200, 300) == [2]
        assert lab.colormap(1)[255] == (0, 0, 0, 0) and lab.nodata == 255
        assert sc.scales == (1 / 255,) * 5 and sc.offsets == (0.0,) * 5 and sc.descriptions == tuple(NAMES)
        labels = lab.read(1)
        assert labels.max() < 5 and labels.shape == (300, 200)
    with rasterio.open(d / out.SCORES) as sc:
        ov = sc.read(1, out_shape=(150, 100))  # the AVERAGE overview of band 1
        full = sc.read(1).astype(np.float64)
        assert abs(float(ov.mean()) - full.mean()) < 1.0


def test_the_zstd_probe_warns_nothing_on_a_users_run() -> None:
    """rasterio's ``NotGeoreferencedWarning`` from the 1 x 1 probe reached the stderr of every
    run (it read as if the outputs had no georeferencing)."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    out._gtiff_has_zstd.cache_clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        has = out._gtiff_has_zstd()
    assert not [w for w in seen if issubclass(w.category, NotGeoreferencedWarning)], [str(w.message) for w in seen]
    assert has is True  # the rasterio wheels' GDAL has ZSTD (the big-scene spool relies on it)


def test_zstd_spool_gives_the_same_files_as_a_raw_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool bigger than RAW_SPOOL_MEMORY_FRACTION of the available memory is ZSTD-1 (forced
    here with a fraction of 0); the finished COGs are byte for byte those of a raw spool."""
    opt, sar = _scene(tmp_path / "in", 300, 200)
    if "compress" not in out.spool_creation():
        pytest.skip("GDAL has no ZSTD: the spool is always raw")
    raw = _run(LinearModel(5), opt, sar, tmp_path / "raw")
    seen: list[Any] = []
    real_open = rasterio.open

    def recording_open(path: Any, mode: str = "r", **kw: Any) -> Any:
        if mode == "w" and kw.get("driver") == "GTiff":
            seen.append(kw.get("compress"))
        return real_open(path, mode, **kw)

    monkeypatch.setattr(out, "RAW_SPOOL_MEMORY_FRACTION", 0.0)
    monkeypatch.setattr(out.rasterio, "open", recording_open)
    zstd = _run(LinearModel(5), opt, sar, tmp_path / "zstd")
    monkeypatch.undo()
    assert seen and all(c == "zstd" for c in seen)  # both spools (and their levels) compressed
    for name in (out.LABELS, out.SCORES):
        assert (raw.out_dir / name).read_bytes() == (zstd.out_dir / name).read_bytes()


def test_cog_and_plain_layouts_hold_the_same_pixels(tmp_path: Path) -> None:
    opt, sar = _scene(tmp_path / "in", 256, 192)
    a = _run(LinearModel(5), opt, sar, tmp_path / "cog")
    b = _run(LinearModel(5), opt, sar, tmp_path / "plain", cog=False)
    for name in (out.LABELS, out.SCORES):
        with rasterio.open(a.out_dir / name) as x, rasterio.open(b.out_dir / name) as y:
            np.testing.assert_array_equal(x.read(), y.read())
            assert x.overviews(1) == y.overviews(1) == [2]
            np.testing.assert_array_equal(x.read(out_shape=(x.count, 128, 96)), y.read(out_shape=(y.count, 128, 96)))
    assert "overviews_s" in b.timings and "cog_write_s" not in b.timings


# ----------------------------------------------------------------------------- stage timings
@pytest.mark.parametrize("cog", [True, False])
def test_stage_timings_in_done_json_and_report(tmp_path: Path, cog: bool) -> None:
    opt, sar = _scene(tmp_path / "in")
    res = _run(LinearModel(5), opt, sar, tmp_path / "out", cog=cog)
    t = json.loads((tmp_path / "out" / out.DONE).read_text())["timings"]
    finalize = ("overviews_s", "cog_write_s") if cog else ("overviews_s",)
    for key in (*STAGES, *finalize):
        assert isinstance(t[key], float) and t[key] >= 0.0, key
    assert ("cog_write_s" in t) == cog
    assert t == {k: pytest.approx(v) for k, v in res.timings.items()}
    assert t["predict_s"] <= t["inference_s"] <= t["total_s"]
    if cog:  # the levels are reduced while the rows are written (within write_s: the two rasters' at
        # once, summed) or, above the block size, when they close; one assembly per raster after
        assert t["overviews_s"] <= 2 * (t["write_s"] + t["rasters_finalize_s"])
        assert t["cog_write_s"] <= t["rasters_finalize_s"] * 2
    else:  # GDAL builds the overviews when the rasters close
        assert t["overviews_s"] <= t["rasters_finalize_s"] * 2
    html = (tmp_path / "out" / out.REPORT).read_text()
    assert "Normalising inputs" in html and "Inference waiting for the writer thread" in html
    assert "Building overviews" in html and ("Encoding the COGs" in html) == cog


# ----------------------------------------------------------------------------- the bench's scene tables
def test_bench_scene_tables_show_the_stage_breakdown() -> None:
    pytest.importorskip("rich")
    from benchmarks import report
    from benchmarks.big_scene import STAGES, stage_seconds

    timings = {k: float(i) + 0.25 for i, k in enumerate(STAGES)} | {"tiles_per_s": 9.0}
    stages = stage_seconds({"timings": timings})
    assert list(stages) == list(STAGES) and "tiles_per_s" not in stages and stages["predict_s"] == 3.25
    row = {"engine_runner": "ort-cpu-fp32", "backend": "onnxruntime[CPU]", "precision": "fp32", "batch": 8,
           "scene": "512x512", "status": "ok", "tiles": 9, "seconds": 1.5, "tiles_per_s": 6.0,
           "engine_tiles_per_s": 6.5, "end_to_end_over_engine": 0.923, "timings": timings, "stages_s": stages,
           "memory": {"peak_rss_mb": 812.4}}
    md = report.markdown({"scene": [row]})
    assert "| ort-cpu-fp32 | 512x512 | 8 | 9 | 1.50 | 6.00 | 6.50 | 0.923 | 812 |" in md
    header = ("| engine | scene | read | normalise | batch | infer | blend | postprocess | write | hash | wait "
              "| overviews | COG |")
    assert header in md
    # read 0.25, normalise 1.25, batch 2.25, infer 3.25, ... in the stage order of done.json
    assert ("| ort-cpu-fp32 | 512x512 | 0.25 | 1.25 | 2.25 | 3.25 | 4.25 | 5.25 | 6.25 | 7.25 | 8.25 | 9.25 "
            "| 10.25 |") in md


# ----------------------------------------------------------------------------- resume through the spool
def test_interrupted_cog_run_resumes_to_the_same_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    from rsvl_runtime import resume

    monkeypatch.setattr(resume, "CHECKPOINT_S", 0.0)  # a checkpoint after every strip
    opt, sar = _scene(tmp_path / "in", 630, 150)
    full = _run(LinearModel(5), opt, sar, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        _run(LinearModel(5, fail_after=7), opt, sar, tmp_path / "out")
    tmps = [p for p in tmp_path.iterdir() if p.name.startswith(".out.rsvl-tmp-")]
    assert len(tmps) == 1 and (tmps[0] / resume.PROGRESS).is_file()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmps[0].rename(tmp_path / f".out.rsvl-tmp-{dead.pid}")  # as if the run had been killed
    res = _run(LinearModel(5), opt, sar, tmp_path / "out")
    assert res.timings["resumed_at_row"] > 0 and "cog_write_s" in res.timings
    for name in (out.LABELS, out.SCORES):  # the same spool pixels make the same COG, byte for byte
        assert (res.out_dir / name).read_bytes() == (full.out_dir / name).read_bytes(), name
    assert _leftovers(tmp_path) == []
