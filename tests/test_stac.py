"""The STAC item of a scene run (rsvl_runtime.stac): offline validation, assets, classes,
projection, datetime from the inputs' tags, bundle properties."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pystac
import pytest
import rasterio

from rsvl_runtime import outputs as out
from rsvl_runtime import stac
from rsvl_runtime.raster_io import footprint
from rsvl_runtime.scene import run_scene

from ._runtime_rasters import OPTICAL_SPEC, LinearModel, optical_array, write_tif

NAMES = ["open water", "forest", "urban", "crop"]
BUNDLE = {"bundle": "/somewhere/tsmnet-tiny", "model": "tsmnet-tiny", "task": "semantic",
          "backend": "onnxruntime", "precision": "fp32", "bundle_sha256": "0123456789abcdef"}
CLASSIFICATION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt of pystac to read a schema from the network fails the test."""
    def refuse(self: Any, source: Any, *args: Any, **kwargs: Any) -> str:
        raise AssertionError(f"network access to {source}")
    monkeypatch.setattr(pystac.StacIO, "read_text", refuse)
    monkeypatch.setattr(pystac.stac_io.DefaultStacIO, "read_text", refuse)


def _optical(tmp_path: Path, tags: dict[str, str] | None = None, ns: str | None = None, **kw: Any) -> Path:
    path = write_tif(tmp_path / "opt.tif", optical_array(40, 30), **kw)
    if tags:
        with rasterio.open(path, "r+") as ds:
            ds.update_tags(ns=ns, **tags) if ns else ds.update_tags(**tags)
    return path


def _run(tmp_path: Path, optical: Path, **kw: Any) -> tuple[Path, dict[str, Any]]:
    args: dict[str, Any] = {"class_names": NAMES, "optical_spec": OPTICAL_SPEC, "tile": 32, "overlap": 0.25,
                            "batch": 4, "progress": False, "cog": False, "bundle_info": BUNDLE}
    args.update(kw)
    out_dir = tmp_path / "scene-a"
    run_scene(LinearModel(4), str(optical), None, out_dir, **args)
    return out_dir, json.loads((out_dir / stac.ITEM).read_text())


def test_item_validates_offline_with_assets_classes_and_projection(tmp_path: Path) -> None:
    opt = _optical(tmp_path, {"TIFFTAG_DATETIME": "2021:06:15 10:30:00"})
    out_dir, doc = _run(tmp_path, opt, vector="gpkg")
    used = stac.validate_item(out_dir / stac.ITEM)
    assert CLASSIFICATION in used and PROJECTION in used and any("item-spec" in u for u in used)
    assert doc["id"] == "scene-a" and doc["stac_version"] == "1.1.0"
    assert set(doc["assets"]) == {"labels", "scores", "vector", "preview", "report", "classes"}
    for key, asset in doc["assets"].items():
        assert asset["href"].startswith("./") and (out_dir / asset["href"]).is_file(), key
    a = doc["assets"]
    assert a["vector"]["type"] == pystac.MediaType.GEOPACKAGE and a["vector"]["href"] == "./vectors.gpkg"
    assert a["preview"]["roles"] == ["overview"] and a["labels"]["roles"] == ["data"]
    assert a["classes"]["roles"] == ["metadata"] and a["report"]["type"] == "text/html"
    # the classification extension lists classes.json's rows and the nodata value
    table = json.loads((out_dir / out.CLASSES).read_text())["classes"]
    classes = a["labels"]["classification:classes"]
    assert [c["value"] for c in classes] == [r["id"] for r in table] + [255]
    assert [c.get("title") for c in classes[:-1]] == NAMES
    assert classes[0]["name"] == "open_water" and classes[-1]["nodata"] is True
    assert [c["color_hint"] for c in classes[:-1]] == ["{:02x}{:02x}{:02x}".format(*r["color"]) for r in table]
    assert [c["count"] for c in classes[:-1]] == [r["pixels"] for r in table]
    assert sum(c["percentage"] for c in classes[:-1]) == pytest.approx(100.0, abs=1e-3)
    # footprint and projection
    p = doc["properties"]
    with rasterio.open(out_dir / out.LABELS) as ds:
        assert doc["bbox"] == pytest.approx(list(footprint(ds, "EPSG:4326")))
        assert p["proj:bbox"] == pytest.approx(list(ds.bounds))
        assert p["proj:transform"] == pytest.approx(list(ds.transform)[:6])
    assert p["proj:code"] == "EPSG:32633" and p["proj:shape"] == [40, 30]
    assert p["proj:wkt2"].startswith("PROJCRS[")
    assert doc["geometry"]["type"] == "Polygon" and len(doc["geometry"]["coordinates"][0]) == 5
    # datetime from the TIFF tag; the bundle in rsvl: properties, without its local path
    assert p["datetime"] == "2021-06-15T10:30:00Z"
    assert p["rsvl:datetime_source"] == "tag TIFFTAG_DATETIME of opt.tif"
    assert p["rsvl:model"] == "tsmnet-tiny" and p["rsvl:bundle_sha256"] == "0123456789abcdef"
    assert p["rsvl:backend"] == "onnxruntime" and "rsvl:bundle" not in p
    assert p["rsvl:inputs"]["optical"]["file"] == "opt.tif" and len(p["rsvl:inputs"]["optical"]["sha256"]) == 64
    assert p["rsvl:polygons"] == json.loads((out_dir / out.DONE).read_text())["timings"]["vector_polygons"]
    assert stac.ITEM in json.loads((out_dir / out.DONE).read_text())["outputs"]


def test_only_written_assets_and_run_time_without_tags(tmp_path: Path) -> None:
    geo = {"crs": "EPSG:4326", "origin": (10.0, 60.0), "res": 0.0002}
    before = dt.datetime.now(dt.UTC)
    out_dir, doc = _run(tmp_path, _optical(tmp_path, **geo), write_scores=False, vector="geojson")
    stac.validate_item(out_dir / stac.ITEM)
    assert set(doc["assets"]) == {"labels", "vector", "preview", "report", "classes"}
    assert doc["assets"]["vector"]["type"] == pystac.MediaType.GEOJSON
    p = doc["properties"]
    assert p["rsvl:datetime_source"].startswith("run time")
    when = dt.datetime.fromisoformat(p["datetime"])
    assert before - dt.timedelta(seconds=1) <= when <= dt.datetime.now(dt.UTC)
    assert p["proj:code"] == "EPSG:4326"
    assert doc["bbox"] == pytest.approx([10.0, 60.0 - 40 * 0.0002, 10.0 + 30 * 0.0002, 60.0])


def test_acquisition_tag_wins_over_the_file_date(tmp_path: Path) -> None:
    opt = _optical(tmp_path, {"TIFFTAG_DATETIME": "2021:06:15 10:30:00",
                              "ACQUISITIONDATETIME": "2020-03-04T05:06:07.123456789Z"})
    _, doc = _run(tmp_path, opt)
    assert doc["properties"]["datetime"] == "2020-03-04T05:06:07.123456Z"
    assert doc["properties"]["rsvl:datetime_source"] == "tag ACQUISITIONDATETIME of opt.tif"


def test_imagery_domain_tag_and_no_stac(tmp_path: Path) -> None:
    opt = _optical(tmp_path, {"ACQUISITIONDATETIME": "2019-11-02T09:08:07Z"}, ns="IMAGERY")
    _, doc = _run(tmp_path, opt)
    assert doc["properties"]["datetime"] == "2019-11-02T09:08:07Z"
    run_scene(LinearModel(4), str(opt), None, tmp_path / "nostac", class_names=NAMES, optical_spec=OPTICAL_SPEC,
              tile=32, overlap=0.25, batch=4, progress=False, cog=False, stac=False)
    assert not (tmp_path / "nostac" / stac.ITEM).exists() and out.is_complete(tmp_path / "nostac")


@pytest.mark.parametrize("text,tod,expected", [
    ("2021:06:15 10:30:00", None, "2021-06-15T10:30:00+00:00"),
    ("2021-06-15T10:30:00.1234567Z", None, "2021-06-15T10:30:00.123456+00:00"),
    ("2021-06-15T12:30:00+02:00", None, "2021-06-15T10:30:00+00:00"),
    ('"2020-01-02"', '"10:11:12.5Z"', "2020-01-02T10:11:12.500000+00:00"),
    ("2020-01-02", None, "2020-01-02T00:00:00+00:00"),
])
def test_parse_datetime(text: str, tod: str | None, expected: str) -> None:
    value = stac.parse_datetime(text, tod)
    assert value is not None and value.isoformat() == expected


def test_parse_datetime_rejects_garbage() -> None:
    assert stac.parse_datetime("yesterday") is None
    assert stac.parse_datetime("2021:13:45 99:00:00") is None


def test_validator_checks_the_extension_schema(tmp_path: Path) -> None:
    """A class name that is not machine-readable fails the vendored classification schema; an
    extension without a vendored schema is an error, not a download."""
    from pystac.validation.stac_validator import GetSchemaError

    _, doc = _run(tmp_path, _optical(tmp_path))
    bad = json.loads(json.dumps(doc))
    bad["assets"]["labels"]["classification:classes"][0]["name"] = "open water"
    with pytest.raises(pystac.errors.STACValidationError, match="classification"):
        stac.validate_item(bad)
    doc["stac_extensions"].append("https://stac-extensions.github.io/eo/v1.1.0/schema.json")
    with pytest.raises(GetSchemaError, match="not vendored"):  # never downloaded
        stac.validate_item(doc)


def test_referring_run_describes_the_mask(tmp_path: Path) -> None:
    opt = _optical(tmp_path)
    run_scene(LinearModel(2), str(opt), None, tmp_path / "ref", class_names=["background", "target"],
              optical_spec=OPTICAL_SPEC, tile=32, overlap=0.25, batch=4, progress=False, cog=False,
              task="referring", vector="gpkg")
    doc = json.loads((tmp_path / "ref" / stac.ITEM).read_text())
    stac.validate_item(doc)
    assert doc["assets"]["mask"]["href"] == "./mask.tif" and "labels" not in doc["assets"]
    assert [c["value"] for c in doc["assets"]["mask"]["classification:classes"]] == [0, 1, 255]
    assert doc["properties"]["rsvl:task"] == "referring"
