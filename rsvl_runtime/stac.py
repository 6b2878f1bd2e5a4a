"""The STAC item ``item.json`` of a finished run (pystac), and its offline validation.

:func:`write_stac_item` writes one STAC 1.1 Item into the run's stage, after the report:

- ``geometry``/``bbox``: the raster's footprint in EPSG:4326 (:func:`rsvl_runtime.raster_io.footprint`,
  densified edges); null for a raster without a CRS.
- ``datetime``: the acquisition time from the inputs' tags (default and ``IMAGERY`` metadata
  domains, optical first), the first of :data:`DATETIME_TAGS` that parses. ``TIFFTAG_DATETIME``
  is the file's own date, so it comes last. Times without a zone are taken as UTC. Without such a
  tag the run time is used. ``rsvl:datetime_source`` always says where the datetime came from
  (``"tag ACQUISITIONDATETIME of optical.tif"`` or ``"run time ..."``).
- assets, only those written, hrefs relative to the item (``./labels.tif``: the folder is
  moved after writing): ``labels`` (or ``mask``), ``scores``, ``vector``, ``preview``,
  ``report``, ``classes``, with media types and roles (data / overview / metadata).
- the classification extension (v2.0.0) on the labels asset: one class per row of
  ``classes.json`` (``value``, machine-readable ``name``, ``title`` = the class name,
  ``color_hint``, ``count`` pixels, ``percentage`` of the valid area) plus value 255 with
  ``nodata: true``.
- the projection extension (v2.0.0): ``proj:code`` (when the CRS has an authority code),
  ``proj:wkt2``, ``proj:shape``, ``proj:transform``, ``proj:bbox`` (in the raster's CRS).
- properties ``rsvl:*``: the bundle (model, ``bundle_sha256``, backend, precision ... from
  ``bundle_info``, less its local path), task, tiling, the inputs (file name, sha256), and the
  polygon count when polygons were written; ``created`` is the run time.

The run does not validate the item (that needs ``jsonschema``, a ``pystac[validation]`` extra);
:func:`validate_item` does, offline: the core schemas pystac ships, the extension schemas
vendored in ``rsvl_runtime/schemas/`` (sources and licence in its README), never the network.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pystac
import rasterio
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension

from .files import atomic_write_text
from .finished import FinishedRun
from .outputs import CLASSES, LABEL_NODATA, MASK, PREVIEW, REPORT, SCORES, VECTORS_GEOJSON, VECTORS_GPKG
from .raster_io import footprint

ITEM = "item.json"

#: Tags read for the acquisition datetime, in order of preference (see the module docstring).
DATETIME_TAGS: tuple[str, ...] = (
    "ACQUISITIONDATETIME",               # GDAL IMAGERY domain (DigitalGlobe, Pleiades, SPOT ...)
    "ACQUISITION_DATETIME",
    "DATATAKE_1_DATATAKE_SENSING_START",  # Sentinel-2 SAFE (GDAL SENTINEL2 driver)
    "SENSING_TIME",
    "PRODUCT_START_TIME",
    "DATE_ACQUIRED",                      # Landsat MTL (with SCENE_CENTER_TIME)
    "ACQUISITION_DATE",
    "DATETIME",
    "TIFFTAG_DATETIME",                   # the file's date: a last resort
)
_TAG_DOMAINS: tuple[str | None, ...] = (None, "IMAGERY")

#: Vendored extension schemas: schema URI -> file in rsvl_runtime/schemas/.
VENDORED_SCHEMAS: dict[str, str] = {
    "https://stac-extensions.github.io/classification/v2.0.0/schema.json": "classification-v2.0.0.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json": "projection-v2.0.0.json",
}

_ROLES = {"labels": ["data"], "mask": ["data"], "scores": ["data"], "vector": ["data"],
          "preview": ["overview"], "report": ["metadata"], "classes": ["metadata"]}


# ----------------------------------------------------------------------------- datetime
def parse_datetime(text: str, time_of_day: str | None = None) -> _dt.datetime | None:
    """A tag value as an aware UTC datetime, or None when it does not parse.

    Accepts ISO 8601 (``Z``/offsets, any number of fraction digits), the TIFF form
    ``YYYY:MM:DD HH:MM:SS`` and a bare date (with ``time_of_day``, e.g. Landsat's
    ``SCENE_CENTER_TIME``, when given)."""
    s = text.strip().strip('"').strip()
    m = re.fullmatch(r"(\d{4}):(\d{2}):(\d{2})([ T].*)?", s)
    if m:
        s = f"{m[1]}-{m[2]}-{m[3]}{m[4] or ''}"
    if time_of_day and re.fullmatch(r"\d{4}-\d{2}-\d{2}", s):
        clock = time_of_day.strip().strip('"').strip()
        s = f"{s}T{clock}"
    s = re.sub(r"(\.\d{6})\d+", r"\1", s)  # fromisoformat takes at most microseconds
    s = re.sub(r"Z$", "+00:00", s)
    try:
        value = _dt.datetime.fromisoformat(s)
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    return value.astimezone(_dt.UTC)


def _tags(path: Path) -> Iterator[dict[str, str]]:
    with rasterio.open(path) as ds:
        for domain in _TAG_DOMAINS:
            try:
                yield {k.upper(): v for k, v in ds.tags(ns=domain).items()} if domain else \
                    {k.upper(): v for k, v in ds.tags().items()}
            except rasterio.errors.RasterioError:
                continue


def acquisition_datetime(paths: Sequence[Path]) -> tuple[_dt.datetime, str] | None:
    """The first tag of :data:`DATETIME_TAGS` that parses, over ``paths`` in order, and where it was."""
    for path in paths:
        tags: dict[str, str] = {}
        for domain_tags in _tags(path):
            for k, v in domain_tags.items():
                tags.setdefault(k, v)
        for name in DATETIME_TAGS:
            if name in tags:
                value = parse_datetime(tags[name], tags.get("SCENE_CENTER_TIME") if name == "DATE_ACQUIRED" else None)
                if value is not None:
                    return value, f"tag {name} of {path.name}"
    return None


# ----------------------------------------------------------------------------- item parts
def class_slug(name: str) -> str:
    """A machine-readable class name (``^[0-9A-Za-z-_]+$``, what the extension wants)."""
    slug = re.sub(r"[^0-9A-Za-z_-]+", "_", name.strip()).strip("_")
    return slug or "class"


def _hex(color: Sequence[int]) -> str:
    return "".join(f"{int(c):02x}" for c in list(color)[:3])


def classifications(table: Sequence[Mapping[str, Any]]) -> list[Classification]:
    """The ``classification:classes`` of the labels: the rows of classes.json, then nodata (255)."""
    out = [Classification.create(value=int(c["id"]), name=class_slug(str(c["name"])), title=str(c["name"]),
                                 color_hint=_hex(c["color"]), count=int(c["pixels"]),
                                 percentage=round(100.0 * float(c["fraction"]), 6))
           for c in table]
    out.append(Classification.create(value=LABEL_NODATA, name="nodata", title="no data", nodata=True))
    return out


def _assets(run: FinishedRun) -> dict[str, pystac.Asset]:
    tif = pystac.MediaType.COG if run.options.cog is not False else pystac.MediaType.GEOTIFF
    label_key = "mask" if run.raster_name == MASK else "labels"
    names = {label_key: (run.raster_name, tif, "class ids (uint8), nodata 255" if label_key == "labels"
                         else "referred object mask (uint8 0/1), nodata 255"),
             "scores": (SCORES, tif, "one band per class: probability x 255 (uint8), nodata 0"),
             "vector": (VECTORS_GPKG, pystac.MediaType.GEOPACKAGE, "class polygons (layer 'classes')"),
             "preview": (PREVIEW, pystac.MediaType.PNG, "colour-mapped labels with a legend"),
             "report": (REPORT, pystac.MediaType.HTML, "run report"),
             "classes": (CLASSES, pystac.MediaType.JSON, "per-class pixels, area (m²) and fraction")}
    if run.staged(VECTORS_GEOJSON) is not None:
        names["vector"] = (VECTORS_GEOJSON, pystac.MediaType.GEOJSON, "class polygons (EPSG:4326, RFC 7946)")
    return {key: pystac.Asset(href=f"./{name}", media_type=media, title=name, description=desc,
                              roles=list(_ROLES[key]))
            for key, (name, media, desc) in names.items() if run.staged(name) is not None}


def _properties(run: FinishedRun, source: str, created: _dt.datetime) -> dict[str, Any]:
    props: dict[str, Any] = {"created": pystac.utils.datetime_to_str(created), "rsvl:datetime_source": source,
                             "rsvl:task": run.task, "rsvl:tiling": dict(run.options.tiling)}
    for k, v in (run.bundle_info or {}).items():
        if k != "bundle" and (v is None or isinstance(v, (str, int, float, bool))):
            props[f"rsvl:{k}"] = v
    props["rsvl:inputs"] = {m: {"file": Path(str(r.get("path", ""))).name,
                                "sha256": None if r.get("remote") else r.get("sha256")}
                            for m, r in run.inputs.items()}
    if "vector_polygons" in run.timings:
        props["rsvl:polygons"] = int(run.timings["vector_polygons"])
    return props


def _apply_projection(item: pystac.Item, ds: Any) -> None:
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    crs = ds.crs
    auth = crs.to_authority() if crs is not None else None
    proj.apply(code=f"{auth[0]}:{auth[1]}" if auth else None, wkt2=crs.to_wkt(version="WKT2_2019") if crs is not None else None,
               shape=[int(ds.height), int(ds.width)], transform=[float(v) for v in list(ds.transform)[:6]],
               bbox=list(footprint(ds)) if crs is not None else None)


def build_item(run: FinishedRun, now: _dt.datetime | None = None) -> pystac.Item:
    """The STAC item of ``run`` (assets relative to the output folder)."""
    now = now or _dt.datetime.now(_dt.UTC)
    found = acquisition_datetime([m.path for m in run.sources.modalities])
    when, source = found if found else (now, "run time (no acquisition date in the inputs' tags)")
    with rasterio.open(run.labels_path) as ds:
        if ds.crs is not None:
            w, s, e, n = footprint(ds, "EPSG:4326")
            bbox: list[float] | None = [w, s, e, n]
            geometry: dict[str, Any] | None = {"type": "Polygon", "coordinates": [[
                [w, s], [e, s], [e, n], [w, n], [w, s]]]}
        else:
            bbox = geometry = None
        item = pystac.Item(id=run.out_dir.name or Path(run.sources.reference.path).stem, geometry=geometry,
                           bbox=bbox, datetime=when, properties=_properties(run, source, now))
        item.properties["title"] = run.title
        _apply_projection(item, ds)
    for key, asset in _assets(run).items():
        item.add_asset(key, asset)
    label_key = "mask" if run.raster_name == MASK else "labels"
    ClassificationExtension.ext(item.assets[label_key], add_if_missing=True).apply(
        classes=classifications(run.class_table))
    return item


def write_stac_item(run: FinishedRun) -> Path:
    """Write ``item.json`` into the run's stage (not validated: see :func:`validate_item`)."""
    item = build_item(run)
    path = run.stage.temp(ITEM)
    doc = item.to_dict(include_self_link=False, transform_hrefs=False)
    atomic_write_text(path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return path


# ----------------------------------------------------------------------------- offline validation
def _vendored(name: str) -> dict[str, Any]:
    with resources.files("rsvl_runtime").joinpath("schemas", name).open("r", encoding="utf-8") as f:
        return json.load(f)  # type: ignore[no-any-return]


def offline_validator() -> Any:
    """A pystac ``JsonSchemaSTACValidator`` that reads schemas from pystac's copies and
    ``rsvl_runtime/schemas/`` only; any other schema is a ``GetSchemaError`` (no download)."""
    from pystac.validation.stac_validator import GetSchemaError, JsonSchemaSTACValidator

    class OfflineValidator(JsonSchemaSTACValidator):
        def __init__(self) -> None:
            super().__init__()
            self.schema_cache.update({uri: _vendored(f) for uri, f in VENDORED_SCHEMAS.items()})

        def _get_schema(self, schema_uri: str) -> dict[str, Any]:
            key = schema_uri.rstrip("#")
            if key not in self.schema_cache:
                raise GetSchemaError(schema_uri, LookupError(
                    f"{schema_uri} is not vendored in rsvl_runtime/schemas/ (validation is offline)"))
            return self.schema_cache[key]

    return OfflineValidator()


def validate_item(path_or_item: str | Path | pystac.Item | Mapping[str, Any]) -> list[str]:
    """Validate a STAC item (file, ``pystac.Item`` or dict) offline; returns the schema URIs used.
    Raises ``pystac.errors.STACValidationError`` when it is invalid, ``GetSchemaError`` when it
    declares an extension whose schema is not vendored."""
    if isinstance(path_or_item, (str, Path)):
        doc = json.loads(Path(path_or_item).read_text(encoding="utf-8"))
    elif isinstance(path_or_item, pystac.Item):
        doc = path_or_item.to_dict(include_self_link=False, transform_hrefs=False)
    else:
        doc = dict(path_or_item)
    from pystac.validation import validate_dict

    return list(validate_dict(doc, validator=offline_validator()))
