"""Class polygons of a finished run (``--vector gpkg|geojson``): ``vectors.gpkg`` / ``vectors.geojson``.

One polygon layer (:data:`LAYER`) with one feature per connected region (4-connectivity) of a
class in ``labels.tif`` (or ``mask.tif``). Fields:

===============  ==========================================================================
``class_id``     the label value (a row of ``classes.json``; an "unclassified" row is a class)
``class_name``   its name in ``classes.json``
``area_m2``      ground area of the region's pixels, m² — the same per-row pixel areas as
                 ``classes.json`` (:func:`rsvl_runtime.raster_io.pixel_area_m2`: the CRS unit
                 converted to metres, or the per-row spherical approximation for a geographic
                 CRS), so the areas of a class sum to its ``area_m2`` there (``min_area_m2`` 0).
                 The area of the pixels, not of the simplified outline.
``mean_score``   mean of the class's ``scores.tif`` band over the region, 0..1; null when
                 ``scores.tif`` is not written or has no band for the class (unclassified).
===============  ==========================================================================

Nodata (255) gives no polygon. Memory is bounded by one strip and the regions still open:
the labels are polygonized :data:`STRIP_ROWS` rows at a time (``rasterio.features.shapes`` in
pixel coordinates, so seams are exact), each strip's pieces are rasterized back to count their
pixels, ground area and score sum, and the pieces of a class that share an edge across a strip
seam are joined (union-find on the seam's pixel pairs). A region none of whose pieces touch the
last strip's bottom row is complete: its pieces are unioned (``shapely.union_all``), moved to
the CRS by the raster's transform, dropped when smaller than ``min_area_m2``, simplified when
``simplify`` is set (tolerance in CRS units, topology-preserving per polygon: neighbouring
polygons are simplified independently, so slivers may open between them), and written in
chunks of :data:`FLUSH_FEATURES` features (``pyogrio.raw.write``, appending).

CRS: ``vectors.gpkg`` keeps the input's CRS (WKT). ``vectors.geojson`` follows RFC 7946: its
coordinates are reprojected to EPSG:4326 (longitude, latitude) with
``rasterio.warp.transform_geom`` (vertices only, no densification), exterior rings
counter-clockwise, full precision (15 decimals) — an input without a CRS keeps its map
coordinates there. For large scenes prefer ``gpkg`` (indexed, and GeoJSON readers load the whole
file). GPKG side files (``-wal``/``-journal``) live only while the
file is written, under a hidden temporary name in the stage, which is then renamed onto the
staged ``vectors.gpkg``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import shapely
from rasterio.windows import Window
from shapely.geometry.polygon import orient

from .finished import FinishedRun
from .outputs import LABEL_NODATA, SCORES, VECTORS_GEOJSON, VECTORS_GPKG
from .raster_io import pixel_area_m2

log = logging.getLogger(__name__)

VECTOR_FORMATS = {"gpkg": (VECTORS_GPKG, "GPKG"), "geojson": (VECTORS_GEOJSON, "GeoJSON")}
LAYER = "classes"
FIELDS = ("class_id", "class_name", "area_m2", "mean_score")
#: Rows polygonized at a time (tests lower it to make regions cross seams).
STRIP_ROWS = 512
#: Finished features buffered before they are appended to the file.
FLUSH_FEATURES = 10_000
_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
#: GeoJSON layer creation: RFC 7946, full coordinate precision (the appended chunks get that too).
_GEOJSON_OPTIONS = {"RFC7946": "YES", "COORDINATE_PRECISION": "15"}


@dataclass
class Region:
    """A connected region of one class, possibly still open at the last seam: its pieces
    (polygons in pixel coordinates), pixel count, ground area and score sum."""

    class_id: int
    pieces: list[Any]
    pixels: int
    area_m2: float
    score_sum: float

    def geometry(self) -> Any:
        """The region's polygon in pixel coordinates (its pieces unioned)."""
        return self.pieces[0] if len(self.pieces) == 1 else shapely.union_all(self.pieces)

    def absorb(self, other: Region) -> None:
        self.pieces.extend(other.pieces)
        self.pixels += other.pixels
        self.area_m2 += other.area_m2
        self.score_sum += other.score_sum


@dataclass
class VectorInfo:
    """What :func:`write_vectors` wrote: the output name, polygons kept and dropped (min area)."""

    name: str
    polygons: int
    dropped: int
    seconds: float = 0.0
    per_class: dict[int, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------- polygonize
def _polygons(geojson: list[dict[str, Any]]) -> np.ndarray:
    """GeoJSON polygons (``rasterio.features.shapes`` output) as a shapely array, built in one
    vectorised call (``shapely.geometry.shape`` one by one is ~5x slower on speckled labels)."""
    rings = [r for g in geojson for r in g["coordinates"]]
    ring_end = np.cumsum(np.fromiter((len(r) for r in rings), np.int64, len(rings)))
    geom_end = np.cumsum(np.fromiter((len(g["coordinates"]) for g in geojson), np.int64, len(geojson)))
    coords = np.array([xy for r in rings for xy in r], np.float64)
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, coords,
                                     (np.concatenate([[0], ring_end]), np.concatenate([[0], geom_end])))


def _strip_pieces(labels: np.ndarray, y0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Polygons of the 4-connected regions of ``labels [h, W]`` (rows ``y0..``) in pixel
    coordinates, their class ids, and the strip rasterized back to piece ids 1..n (0: nodata)."""
    tr = rasterio.Affine.translation(0, y0)
    shp = list(rasterio.features.shapes(labels, mask=labels != LABEL_NODATA, connectivity=4, transform=tr))
    if not shp:
        return np.zeros(0, object), np.zeros(0, np.int64), np.zeros(labels.shape, np.int32)
    ids = rasterio.features.rasterize(((g, i) for i, (g, _) in enumerate(shp, start=1)), out_shape=labels.shape,
                                      transform=tr, fill=0, dtype="int32")
    return _polygons([g for g, _ in shp]), np.array([int(v) for _, v in shp], np.int64), ids


def _piece_scores(scores: Any, labels: np.ndarray, ids: np.ndarray, n: int, window: Window) -> np.ndarray:
    """Sum of each piece's class score (uint8, 1..255) over its pixels, ``[n + 1]``; NaN for a
    class without a band in ``scores``. ``scores`` is the open scores.tif or None (all NaN)."""
    sums = np.full(n + 1, np.nan)
    if scores is None:
        return sums
    for c in np.unique(labels):
        if c == LABEL_NODATA or int(c) + 1 > scores.count:
            continue
        sel = labels == c
        band = scores.read(int(c) + 1, window=window)
        sums_c = np.bincount(ids[sel], weights=band[sel].astype(np.float64), minlength=n + 1)
        hit = np.bincount(ids[sel], minlength=n + 1) > 0
        sums[hit] = sums_c[hit]
    return sums


def _find(parent: dict[int, int], a: int) -> int:
    while parent.get(a, a) != a:
        parent[a] = parent.get(parent[a], parent[a])
        a = parent[a]
    return a


class SeamMerger:
    """Joins the pieces of consecutive strips into regions; holds only the regions that touch
    the last strip's bottom row (the open seam)."""

    def __init__(self, width: int) -> None:
        self.open: dict[int, Region] = {}
        self._bottom_keys = np.zeros(width, np.int64)  # region key of each bottom-row pixel (0: none)
        self._bottom_labels = np.full(width, LABEL_NODATA, np.uint8)
        self._next_key = 1

    def add(self, labels: np.ndarray, ids: np.ndarray, regions: list[Region], last: bool) -> list[Region]:
        """Add a strip (its labels, piece ids 1..n and the n pieces as regions); returns the
        regions completed by it (all of them when ``last``)."""
        n = len(regions)
        keys = np.arange(self._next_key - 1, self._next_key + n)  # keys[i]: key of piece i (1..n)
        self._next_key += n
        self.open.update({int(keys[i]): r for i, r in enumerate(regions, start=1)})
        parent: dict[int, int] = {}
        same = (ids[0] > 0) & (self._bottom_keys > 0) & (labels[0] == self._bottom_labels)
        for a, b in set(zip(self._bottom_keys[same].tolist(), keys[ids[0][same]].tolist())):
            ra, rb = _find(parent, a), _find(parent, b)
            if ra != rb:
                big, small = (ra, rb) if len(self.open[ra].pieces) >= len(self.open[rb].pieces) else (rb, ra)
                self.open[big].absorb(self.open.pop(small))
                parent[small] = big
        root = np.array([0] + [_find(parent, int(k)) for k in keys[1:]], np.int64)
        self._bottom_keys, self._bottom_labels = root[ids[-1]], labels[-1].copy()
        still_open = set() if last else set(np.unique(self._bottom_keys[self._bottom_keys > 0]).tolist())
        return [self.open.pop(k) for k in [k for k in self.open if k not in still_open]]


def iter_regions(labels_path: Path, scores_path: Path | None, strip_rows: int | None = None,
                 progress: bool = False) -> Iterator[Region]:
    """Every complete region of ``labels_path`` (pieces in pixel coordinates), strip by strip."""
    from tqdm.auto import tqdm

    rows = int(strip_rows or STRIP_ROWS)
    with rasterio.open(labels_path) as lab, \
            (rasterio.open(scores_path) if scores_path is not None else nullcontext()) as sc:
        row_area = pixel_area_m2(lab)
        width, height = lab.width, lab.height
        merger = SeamMerger(width)
        for y0 in tqdm(range(0, height, rows), desc="polygons", unit="strip", disable=not progress, leave=False):
            h = min(rows, height - y0)
            win = Window(0, y0, width, h)
            labels = lab.read(1, window=win)
            pieces, classes, ids = _strip_pieces(labels, y0)
            n = len(pieces)
            counts = np.bincount(ids.ravel(), minlength=n + 1)
            areas = np.bincount(ids.ravel(), weights=np.repeat(row_area[y0:y0 + h], width), minlength=n + 1)
            ssum = _piece_scores(sc, labels, ids, n, win)
            regions = [Region(int(classes[i - 1]), [pieces[i - 1]], int(counts[i]), float(areas[i]), float(ssum[i]))
                       for i in range(1, n + 1)]
            yield from merger.add(labels, ids, regions, last=y0 + h >= height)


# ----------------------------------------------------------------------------- features
def _affine(transform: Any) -> Any:
    """Pixel coordinates -> CRS coordinates, for ``shapely.transform``."""
    t = transform

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f])
    return apply


def _ccw(geoms: np.ndarray) -> np.ndarray:
    """Exterior rings counter-clockwise, holes clockwise (RFC 7946)."""
    if hasattr(shapely, "orient_polygons"):  # shapely >= 2.1
        return shapely.orient_polygons(geoms)
    return np.array([orient(g, 1.0) for g in geoms], dtype=object)


@dataclass
class FeatureStyle:
    """How pixel-coordinate polygons become features: the raster transform, simplification
    tolerance (CRS units), and for GeoJSON the CRS to reproject from (to EPSG:4326)."""

    transform: Any
    simplify: float | None = None
    geojson: bool = False
    reproject_from: Any = None

    def geometries(self, pixel_geoms: Sequence[Any]) -> np.ndarray:
        geoms = shapely.transform(np.asarray(pixel_geoms, dtype=object), _affine(self.transform))
        if self.simplify:
            geoms = shapely.simplify(geoms, float(self.simplify), preserve_topology=True)
        if not self.geojson:
            return geoms
        if self.reproject_from is not None:
            from rasterio.warp import transform as warp

            xy = shapely.get_coordinates(geoms)
            lon, lat = warp(self.reproject_from, "EPSG:4326", xy[:, 0], xy[:, 1])
            geoms = shapely.set_coordinates(geoms.copy(), np.column_stack([lon, lat]))
        return _ccw(geoms)  # GDAL applies RFC 7946 winding only to the first write


class _LayerWriter:
    """Buffers features (pixel-coordinate polygons) and appends them to the layer in chunks of
    :data:`FLUSH_FEATURES`, moved to the CRS (and simplified, reprojected) chunk by chunk."""

    def __init__(self, path: Path, driver: str, crs_wkt: str | None, style: FeatureStyle) -> None:
        self.path, self.driver, self.crs_wkt, self.style = path, driver, crs_wkt, style
        self.written = False
        self._buf: list[tuple[Any, int, str, float, float]] = []

    def add(self, pixel_geom: Any, class_id: int, name: str, area: float, score: float) -> None:
        self._buf.append((pixel_geom, class_id, name, area, score))
        if len(self._buf) >= FLUSH_FEATURES:
            self.flush()

    def flush(self) -> None:
        """Write the buffered features (an empty layer the first time when there are none)."""
        if self.written and not self._buf:
            return
        import pyogrio.raw

        b = self._buf
        wkb = np.array(shapely.to_wkb(self.style.geometries([f[0] for f in b])) if b else [], dtype=object)
        data = [np.array([f[1] for f in b], np.int32), np.array([f[2] for f in b], dtype=object),
                np.array([f[3] for f in b], np.float64), np.array([f[4] for f in b], np.float64)]
        options = _GEOJSON_OPTIONS if self.driver == "GeoJSON" and not self.written else None
        pyogrio.raw.write(str(self.path), wkb, data, list(FIELDS), layer=LAYER, driver=self.driver,
                          geometry_type="Polygon", crs=self.crs_wkt, promote_to_multi=False,
                          nan_as_null=True, append=self.written, layer_options=options)
        self.written = True
        self._buf = []


def _remove_with_side_files(path: Path) -> None:
    for p in (path, *(Path(f"{path}{s}") for s in _SIDE_SUFFIXES)):
        p.unlink(missing_ok=True)


def write_vectors(run: FinishedRun) -> VectorInfo:
    """Polygonize the run's labels into ``vectors.gpkg`` or ``vectors.geojson`` in its stage.

    Records ``vector_polygons`` / ``vector_dropped`` / ``vectors_s`` in ``run.timings``.
    """
    t0 = time.perf_counter()
    fmt = run.options.vector
    if fmt not in VECTOR_FORMATS:
        raise ValueError(f"--vector must be one of {', '.join(VECTOR_FORMATS)}, got {fmt!r}")
    name, driver = VECTOR_FORMATS[fmt]
    names = {int(c["id"]): str(c["name"]) for c in run.class_table}
    crs = rasterio.crs.CRS.from_user_input(run.crs) if run.crs else None
    wgs84 = rasterio.crs.CRS.from_epsg(4326)
    if driver == "GeoJSON":
        reproject = crs if crs is not None and crs != wgs84 else None
        crs_wkt = wgs84.to_wkt() if crs is not None else None
    else:
        reproject, crs_wkt = None, crs.to_wkt() if crs is not None else None
    staged = run.stage.temp(name)
    work = staged.with_name(f"{staged.name}.{os.getpid()}{Path(name).suffix}")
    style = FeatureStyle(run.transform, run.options.simplify, driver == "GeoJSON", reproject)
    writer = _LayerWriter(work, driver, crs_wkt, style)
    info = VectorInfo(name=name, polygons=0, dropped=0)
    min_area = float(run.options.min_area_m2 or 0.0)
    try:
        for region in iter_regions(run.labels_path, run.staged(SCORES), progress=run.options.progress):
            if region.area_m2 < min_area:
                info.dropped += 1
                continue
            score = region.score_sum / (255.0 * region.pixels) if region.pixels else float("nan")
            writer.add(region.geometry(), region.class_id,
                       names.get(region.class_id, str(region.class_id)), region.area_m2, score)
            info.polygons += 1
            info.per_class[region.class_id] = info.per_class.get(region.class_id, 0) + 1
        writer.flush()
        os.replace(work, staged)
    finally:
        _remove_with_side_files(work)
    info.seconds = time.perf_counter() - t0
    run.timings.update({"vector_polygons": float(info.polygons), "vector_dropped": float(info.dropped),
                        "vectors_s": info.seconds})
    log.info("%s: %d polygons (%d below %.1f m² dropped) in %.2f s", name, info.polygons, info.dropped,
             min_area, info.seconds)
    return info
