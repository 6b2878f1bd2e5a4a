"""Class polygons of a scene run (rsvl_runtime.vectors): strip-wise polygonization merged across
seams, areas consistent with classes.json, scores, CRS, min area, simplification, GeoJSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import rasterio.features
import shapely

from rsvl_runtime import outputs as out
from rsvl_runtime import vectors
from rsvl_runtime.normalization import normalize_optical
from rsvl_runtime.scene import run_scene

from ._runtime_rasters import OPTICAL_SPEC, LinearModel, optical_array, write_tif

NAMES = ["background", "field", "speckle", "dots"]
DNS = [20, 100, 180, 250]  # band-1 DN of each class in the designed scene
STRIP = 16


class ClassMapModel:
    """``predict_fn`` whose argmax is the class whose DN is nearest band 1 (per pixel)."""

    def __init__(self) -> None:
        dn = np.array(DNS, np.float32)
        self.levels = normalize_optical(np.stack([dn, dn, dn])[:, None, :], OPTICAL_SPEC)[0, 0]

    def __call__(self, optical: np.ndarray | None, sar: np.ndarray | None) -> np.ndarray:
        assert optical is not None
        x = optical[:, :1]  # [B, 1, t, t]
        return (-4.0 * np.abs(x - self.levels[None, :, None, None])).astype(np.float32)


def designed_classes(h: int = 64, w: int = 48) -> np.ndarray:
    """Class map: a U that spans four strips (two arms merge only in the last one), speckle,
    a square across the first seam, two pixels touching diagonally across a seam, nodata."""
    c = np.zeros((h, w), np.uint8)
    c[3:50, 4:9] = 1       # left arm, rows 3..49 (strips 0..3)
    c[3:50, 20:25] = 1     # right arm
    c[44:50, 4:25] = 1     # the bottom of the U joins them in strip 2/3
    c[13:19, 30:36] = 2    # 6x6 square across the seam at row 16
    c[40, 40] = 2          # single-pixel speckle
    c[58:60, 10:12] = 2    # 2x2 speckle
    c[15, 44] = 3          # diagonal neighbours across the seam 15|16: two polygons
    c[16, 45] = 3
    c[55:64, 30:48] = 255  # nodata corner
    return c


def write_designed(path: Path, classes: np.ndarray, **kw: Any) -> Path:
    dn = np.where(classes == 255, 0, np.array(DNS + [0] * 252, np.uint8)[np.minimum(classes, 255)])
    return write_tif(path, np.stack([dn, dn, dn]).astype(np.uint8), nodata=0, **kw)


@pytest.fixture(autouse=True)
def _small_strips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vectors, "STRIP_ROWS", STRIP)


def _run(tmp_path: Path, optical: Path, model: Any, names: list[str], **kw: Any) -> Path:
    args: dict[str, Any] = {"class_names": names, "optical_spec": OPTICAL_SPEC, "tile": 32, "overlap": 0.25,
                            "batch": 4, "progress": False, "cog": False, "vector": "gpkg", "stac": False}
    args.update(kw)
    out_dir = tmp_path / "out"
    run_scene(model, str(optical), None, out_dir, **args)
    return out_dir


def _read(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    _, _, geom, data = pyogrio.raw.read(path, layer=vectors.LAYER)
    return shapely.from_wkb(geom), dict(zip(vectors.FIELDS, data))


def _reference_regions(labels: np.ndarray) -> list[tuple[int, int]]:
    """(class, pixel count) of every 4-connected region, from the whole raster at once."""
    regions = []
    for g, v in rasterio.features.shapes(labels, mask=labels != 255, connectivity=4):
        regions.append((int(v), round(shapely.geometry.shape(g).area)))
    return sorted(regions)


def test_designed_scene_polygons_merge_across_seams(tmp_path: Path) -> None:
    classes = designed_classes()
    out_dir = _run(tmp_path, write_designed(tmp_path / "opt.tif", classes), ClassMapModel(), NAMES)
    with rasterio.open(out_dir / out.LABELS) as ds:
        labels = ds.read(1)
    np.testing.assert_array_equal(labels, classes)  # the fake model reproduces the design
    geoms, f = _read(out_dir / vectors.VECTORS_GPKG)
    assert shapely.is_valid(geoms).all() and set(shapely.get_type_id(geoms)) == {3}  # Polygon
    # the same regions as polygonizing the whole raster at once: nothing split at a seam
    ours = sorted(zip(f["class_id"].tolist(), np.rint(f["area_m2"] / 100.0).astype(int).tolist()))
    assert ours == _reference_regions(labels)
    u = np.flatnonzero(f["class_id"] == 1)
    assert len(u) == 1  # the U spans 4 strips and its arms join only at the bottom: one polygon
    assert f["area_m2"][u[0]] == pytest.approx((classes == 1).sum() * 100.0)
    assert shapely.area(geoms[u[0]]) == pytest.approx((classes == 1).sum() * 100.0)
    assert shapely.get_num_interior_rings(geoms[u[0]]) == 0
    sq = [i for i in np.flatnonzero(f["class_id"] == 2) if f["area_m2"][i] == 3600.0]
    assert len(sq) == 1  # the 6x6 square across the seam at row 16 is one polygon
    assert (f["class_id"] == 3).sum() == 2  # diagonal neighbours are two regions (4-connectivity)
    with rasterio.open(out_dir / out.LABELS) as ds:
        ref = list(rasterio.features.shapes(labels, mask=labels != 255, connectivity=4, transform=ds.transform))
    for k in range(len(NAMES)):  # per class, the same area covered as the whole-raster polygons
        theirs = shapely.union_all([shapely.geometry.shape(g) for g, v in ref if v == k])
        assert shapely.symmetric_difference(shapely.union_all(geoms[f["class_id"] == k]), theirs).area < 1e-6
    bg = np.flatnonzero(f["class_id"] == 0)
    assert len(bg) == 1 and shapely.get_num_interior_rings(geoms[bg[0]]) >= 4  # U, square, 2 speckles
    assert set(f["class_name"][f["class_id"] == 2]) == {"speckle"}
    # nodata gives no polygon: nothing covers the nodata corner's centre
    with rasterio.open(out_dir / out.LABELS) as ds:
        x, y = ds.xy(60, 40)
    assert not shapely.intersects(geoms, shapely.Point(x, y)).any()
    assert pyogrio.read_info(out_dir / vectors.VECTORS_GPKG)["crs"] == "EPSG:32633"
    done = json.loads((out_dir / out.DONE).read_text())
    assert done["timings"]["vector_polygons"] == len(geoms)
    assert vectors.VECTORS_GPKG in done["outputs"]
    # no GPKG side files (-wal/-shm/-journal) and no temporaries left in the folder
    names = {p.name for p in out_dir.iterdir()}
    assert vectors.VECTORS_GPKG in names
    assert not [n for n in names if n.startswith(".") or n.endswith((".tmp", "-wal", "-shm", "-journal"))
                or (n.startswith("vectors") and n != vectors.VECTORS_GPKG)]


def test_mean_score_is_the_class_band_mean(tmp_path: Path) -> None:
    classes = designed_classes()
    out_dir = _run(tmp_path, write_designed(tmp_path / "opt.tif", classes), ClassMapModel(), NAMES)
    _, f = _read(out_dir / vectors.VECTORS_GPKG)
    with rasterio.open(out_dir / out.SCORES) as ds:
        band1 = ds.read(2).astype(np.float64)
    u = int(np.flatnonzero(f["class_id"] == 1)[0])
    assert f["mean_score"][u] == pytest.approx(band1[classes == 1].mean() / 255.0, rel=1e-9)
    assert 0.0 < f["mean_score"].min() and f["mean_score"].max() <= 1.0
    no_scores = _run(tmp_path / "b", write_designed(tmp_path / "opt.tif", classes), ClassMapModel(), NAMES,
                     write_scores=False)
    _, g = _read(no_scores / vectors.VECTORS_GPKG)
    assert np.isnan(g["mean_score"]).all() and len(g["mean_score"]) == len(f["mean_score"])


@pytest.mark.parametrize("crs", ["EPSG:32633", "EPSG:4326"])
def test_areas_sum_to_classes_json(tmp_path: Path, crs: str) -> None:
    """Polygon areas per class equal classes.json within 0.5 % (projected and geographic CRS)."""
    geo = {"crs": "EPSG:4326", "origin": (10.0, 60.0), "res": 0.0002} if crs == "EPSG:4326" else {}
    opt = write_tif(tmp_path / "opt.tif", optical_array(90, 70), **geo)
    out_dir = _run(tmp_path, opt, LinearModel(4), NAMES)
    table = json.loads((out_dir / out.CLASSES).read_text())["classes"]
    geoms, f = _read(out_dir / vectors.VECTORS_GPKG)
    assert shapely.is_valid(geoms).all()
    for row in table:
        got = f["area_m2"][f["class_id"] == row["id"]].sum()
        assert got == pytest.approx(row["area_m2"], rel=5e-3, abs=1e-6), row["name"]
    assert pyogrio.read_info(out_dir / vectors.VECTORS_GPKG)["crs"] == crs
    with rasterio.open(out_dir / out.LABELS) as ds:
        labels = ds.read(1)
        xmin, ymin, xmax, ymax = ds.bounds
    assert len(geoms) == len(_reference_regions(labels))
    bx = shapely.total_bounds(geoms)
    assert bx == pytest.approx([xmin, ymin, xmax, ymax])


def test_strip_height_does_not_change_the_regions(tmp_path: Path) -> None:
    """One-row strips (every row a seam) give the regions of one strip covering the scene."""
    opt = write_tif(tmp_path / "opt.tif", optical_array(40, 50))
    out_dir = _run(tmp_path, opt, LinearModel(4), NAMES, vector=None)
    def regions(rows: int) -> list[tuple[int, int, float]]:
        rs = vectors.iter_regions(out_dir / out.LABELS, out_dir / out.SCORES, strip_rows=rows)
        return sorted((r.class_id, r.pixels, round(r.score_sum)) for r in rs)
    whole = regions(1000)
    assert regions(1) == whole and regions(7) == whole
    assert sum(p for _, p, _ in whole) == 40 * 50


def test_min_area_and_simplify(tmp_path: Path) -> None:
    classes = designed_classes()
    opt = write_designed(tmp_path / "opt.tif", classes)
    full = _run(tmp_path / "a", opt, ClassMapModel(), NAMES)
    g_all, f_all = _read(full / vectors.VECTORS_GPKG)
    out_dir = _run(tmp_path / "b", opt, ClassMapModel(), NAMES, min_area_m2=450.0, simplify=12.0)
    geoms, f = _read(out_dir / vectors.VECTORS_GPKG)
    assert f["area_m2"].min() >= 450.0
    assert len(geoms) == int((f_all["area_m2"] >= 450.0).sum()) and len(geoms) < len(g_all)
    done = json.loads((out_dir / out.DONE).read_text())
    assert done["timings"]["vector_dropped"] == len(g_all) - len(geoms)
    assert shapely.is_valid(geoms).all()
    kept = f_all["area_m2"] >= 450.0
    assert shapely.get_num_coordinates(geoms).sum() < shapely.get_num_coordinates(g_all[kept]).sum()


def test_geojson_is_rfc7946_wgs84(tmp_path: Path) -> None:
    classes = designed_classes()
    out_dir = _run(tmp_path, write_designed(tmp_path / "opt.tif", classes), ClassMapModel(), NAMES,
                   vector="geojson")
    path = out_dir / vectors.VECTORS_GEOJSON
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection" and "crs" not in doc
    assert pyogrio.read_info(path)["crs"] == "EPSG:4326"
    geoms, f = _read(path)
    assert shapely.is_valid(geoms).all()
    assert shapely.is_ccw(shapely.get_exterior_ring(geoms)).all()  # RFC 7946 right-hand rule
    ours = sorted(zip(f["class_id"].tolist(), np.rint(f["area_m2"] / 100.0).astype(int).tolist()))
    assert ours == _reference_regions(classes)
    from rasterio.warp import transform_bounds

    with rasterio.open(out_dir / out.LABELS) as ds:
        w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    x0, y0, x1, y1 = shapely.total_bounds(geoms)
    assert w - 1e-6 <= x0 < x1 <= e + 1e-6 and s - 1e-6 <= y0 < y1 <= n + 1e-6
    assert 14.9 < x0 < 15.1 and 37.0 < y0 < 37.1  # lon/lat order (UTM 33N at 500 km E, 4100 km N)
    props = doc["features"][0]["properties"]
    assert set(props) == set(vectors.FIELDS)


def test_bad_vector_format_is_refused(tmp_path: Path) -> None:
    opt = write_tif(tmp_path / "opt.tif", optical_array(20, 20))
    with pytest.raises(ValueError, match="--vector"):
        _run(tmp_path, opt, LinearModel(4), NAMES, vector="shp")


@pytest.mark.parametrize("fmt", ["gpkg", "geojson"])
def test_chunked_appends_write_the_same_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """Features appended in chunks of 3 equal one write of all of them (reprojected once each)."""
    opt = write_designed(tmp_path / "opt.tif", designed_classes())
    name = vectors.VECTOR_FORMATS[fmt][0]
    one = _read(_run(tmp_path / "a", opt, ClassMapModel(), NAMES, vector=fmt) / name)
    monkeypatch.setattr(vectors, "FLUSH_FEATURES", 3)
    chunked = _read(_run(tmp_path / "b", opt, ClassMapModel(), NAMES, vector=fmt) / name)
    assert len(one[0]) == len(chunked[0]) > 3
    for k in vectors.FIELDS:
        np.testing.assert_array_equal(one[1][k], chunked[1][k])
    assert shapely.equals_exact(one[0], chunked[0], tolerance=1e-9).all()


def test_nodata_strip_and_class_change_separate_regions(tmp_path: Path) -> None:
    lab = np.full((48, 20), 1, np.uint8)
    lab[16:32] = 255       # a whole strip of nodata between two class-1 blocks
    lab[40:, 10:] = 2      # another class below the seam at row 40 (strip_rows 8)
    path = write_tif(tmp_path / "labels.tif", lab[None], nodata=255)
    regions = sorted((r.class_id, r.pixels) for r in vectors.iter_regions(path, None, strip_rows=8))
    assert regions == [(1, 16 * 20 - 8 * 10), (1, 16 * 20), (2, 8 * 10)]
    assert all(np.isnan(r.score_sum) for r in vectors.iter_regions(path, None, strip_rows=8))
