"""Batch runs in-process (rsvl_runtime.batch): records, summaries, errors, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rsvl_runtime import outputs
from rsvl_runtime.batch import (
    SceneRecord,
    discover_records,
    read_summary,
    records_from_folders,
    records_from_manifest,
    records_from_pattern,
    run_local,
)

from ._batch_fixtures import write_scenes

GOOD = ["scene0", "scene1", "scene2"]


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> Path:
    return tiny_bundle


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_scenes(tmp_path_factory.mktemp("batch_scenes"))


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


# ------------------------------------------------------------------ records (no model needed)
def test_manifest_csv_and_json_resolve_relative_paths(tmp_path: Path) -> None:
    _touch(tmp_path / "a" / "o.tif"), _touch(tmp_path / "a" / "s.tif")
    (tmp_path / "m.csv").write_text("id,optical,sar\nA,a/o.tif,a/s.tif\nB,a/missing.tif,a/s.tif\n,a/o.tif,\n")
    recs = records_from_manifest(tmp_path / "m.csv")
    assert [r.id for r in recs] == ["A", "B", "o"]
    assert recs[0].optical == str(tmp_path / "a" / "o.tif") and recs[0].error is None
    assert "optical file not found" in recs[1].error
    assert "unpaired" in recs[2].error  # optical only, and the default mode is optical+sar
    assert records_from_manifest(tmp_path / "m.csv", modes=["optical+sar", "optical"])[2].error is None
    (tmp_path / "m.json").write_text(json.dumps({"scenes": [{"id": "A", "optical": "a/o.tif", "sar": "a/s.tif"},
                                                            {"id": "A", "optical": "a/o.tif", "sar": "a/s.tif"}]}))
    recs = records_from_manifest(tmp_path / "m.json")
    assert recs[0].error is None and "duplicate scene id" in recs[1].error


def test_folders_pair_by_name_and_report_unpaired(tmp_path: Path) -> None:
    for n in ("x1", "x2_optical"):
        _touch(tmp_path / "optical" / f"{n}.tif")
    for n in ("x2_sar", "x3"):
        _touch(tmp_path / "sar" / f"{n}.tif")
    recs = {r.id: r for r in discover_records(tmp_path)}
    assert set(recs) == {"x1", "x2", "x3"}
    assert recs["x2"].error is None and recs["x2"].sar.endswith("x2_sar.tif")
    assert "no matching sar file" in recs["x1"].error
    assert "no matching optical file" in recs["x3"].error
    assert records_from_folders(tmp_path / "optical", tmp_path / "sar", modes=["optical+sar", "optical"])[0].error is None


def test_pattern(tmp_path: Path) -> None:
    for sid in ("p1", "p2"):
        for m in ("optical", "sar"):
            _touch(tmp_path / f"{sid}_{m}.tif")
    recs = records_from_pattern(str(tmp_path / "{id}_{modality}.tif"))
    assert [(r.id, r.error) for r in recs] == [("p1", None), ("p2", None)]
    assert recs[0].sar == str(tmp_path / "p1_sar.tif")
    assert [r.id for r in discover_records(str(tmp_path / "*_{modality}.tif"))] == ["p1", "p2"]


# ------------------------------------------------------------------ runs
def _rows(out: Path) -> dict[str, dict[str, str]]:
    return {r["scene"]: r for r in read_summary(out)}


def test_run_summary_errors_and_rerun_skips(bundle: Path, scenes: Path, tmp_path: Path) -> None:
    recs = records_from_manifest(scenes)
    out = tmp_path / "out"
    res = run_local(recs, bundle, out, threads=1)
    assert [r["scene"] for r in res.rows] == ["scene0", "bad", "scene1", "scene2"]
    rows = _rows(out)
    for sid in GOOD:
        r = rows[sid]
        assert r["status"] == "ok" and r["error"] == "" and int(r["tiles"]) == 6 and float(r["seconds"]) > 0
        assert outputs.is_complete(out / sid)
        areas = {k: float(v) for k, v in r.items() if k.startswith("area_m2:")}
        assert len(areas) == 7 and abs(sum(areas.values()) - 96 * 128 * 100.0) < 1e-3  # 10 m pixels
        # the folder is what the single-scene runtime writes
        assert {p.name for p in (out / sid).iterdir()} >= {"labels.tif", "scores.tif", "classes.json",
                                                           "preview.png", "report.html", "done.json"}
    assert rows["bad"]["status"] == "error"
    assert "not co-registered" in rows["bad"]["error"] and "RasterInputError" in rows["bad"]["error"]
    assert not outputs.is_complete(out / "bad")
    assert not res.ok and res.count("ok") == 3
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(out / "summary.parquet").to_pylist()
    assert [t["status"] for t in table] == ["ok", "error", "ok", "ok"] and table[0]["tiles"] == 6

    before = {sid: (out / sid / "labels.tif").stat().st_mtime_ns for sid in GOOD}
    res2 = run_local(recs, bundle, out, threads=1)
    rows2 = _rows(out)
    assert [rows2[s]["status"] for s in GOOD] == ["skipped"] * 3 and rows2["bad"]["status"] == "error"
    assert all((out / s / "labels.tif").stat().st_mtime_ns == before[s] for s in GOOD)
    assert rows2["scene1"]["tiles"] == "6" and rows2["scene1"]["area_m2:water"] == rows["scene1"]["area_m2:water"]
    assert res2.count("skipped") == 3


def test_interrupted_job_resumes(bundle: Path, scenes: Path, tmp_path: Path) -> None:
    recs = [r for r in records_from_manifest(scenes) if r.id != "bad"]
    out = tmp_path / "out"
    seen: list[str] = []

    def interrupt_after_first(row: dict) -> None:
        seen.append(row["scene"])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_local(recs, bundle, out, threads=1, on_row=interrupt_after_first)
    assert seen == ["scene0"] and outputs.is_complete(out / "scene0")
    assert [r["scene"] for r in read_summary(out)] == ["scene0"]  # the summary of what was done
    # a scene killed half-way: stale outputs, no done.json
    (out / "scene1").mkdir()
    (out / "scene1" / "labels.tif").write_bytes(b"half written")
    assert not outputs.is_complete(out / "scene1")

    res = run_local(recs, bundle, out, threads=1)
    assert [(r["scene"], r["status"]) for r in res.rows] == [("scene0", "skipped"), ("scene1", "ok"), ("scene2", "ok")]
    assert all(outputs.is_complete(out / s) for s in GOOD)
    with rasterio.open(out / "scene1" / "labels.tif") as ds:
        labels = ds.read(1)
    assert labels.shape == (96, 128) and labels.max() < 7


def test_vocabulary_change_reruns_and_errors_stay_per_scene(bundle: Path, scenes: Path, tmp_path: Path) -> None:
    recs = [r for r in records_from_manifest(scenes) if r.id == "scene0"]
    recs.append(SceneRecord("broken", optical=str(_touch(tmp_path / "broken.tif")), sar=recs[0].sar))
    out = tmp_path / "out"
    res = run_local(recs, bundle, out, vocab="water|lake,building,vegetation", threads=1)
    assert [r["status"] for r in res.rows] == ["ok", "error"]
    assert res.rows[1]["error"]  # an unreadable raster is reported, not raised
    assert json.loads((out / "scene0" / "classes.json").read_text())["classes"][2]["name"] == "vegetation"
    # same vocabulary: skipped; another vocabulary: rerun
    assert run_local(recs[:1], bundle, out, vocab="water|lake,building,vegetation", threads=1).rows[0]["status"] == "skipped"
    res = run_local(recs[:1], bundle, out, vocab="water,road", threads=1)
    assert res.rows[0]["status"] == "ok"
    with (out / "summary.csv").open() as f:
        header = next(csv.reader(f))
    assert header[:3] == ["scene", "status", "error"] and "area_m2:road" in header
    with rasterio.open(out / "scene0" / "labels.tif") as ds:
        assert set(np.unique(ds.read(1))) <= {0, 1}
