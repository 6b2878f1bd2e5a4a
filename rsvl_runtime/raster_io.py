"""Opening and checking the input rasters: clear errors, band selection, nodata, co-registration.

Every refusal is a :class:`RasterInputError` (a ``ValueError``) whose message names the file,
what was expected, what was found and the fix (``--bands``, ``--sensor``, ``--scale``,
``--nodata``, ``--align``).

An input is a local file or anything GDAL opens itself (:func:`is_gdal_path`): a URL
(``http(s)://``, ``s3://``, ``gs://``, ``az://`` ...) or a ``/vsi*`` path. Those reach rasterio
as the very string given (never through ``Path``, which would collapse ``//``), so GDAL's own
configuration applies: the ``GDAL_*``, ``CPL_*``, ``AWS_*`` ... environment variables and any
``rasterio.Env`` options (GDAL keeps them process-wide). A local path stays a ``Path``.

:func:`align_to` reprojects a raster (typically SAR) onto the grid of a reference raster
(typically the optical scene) block by block through a ``WarpedVRT``, so memory stays bounded.
:func:`pixel_area_m2` gives the ground area of the pixels of each row, in m², for projected and
geographic CRS alike.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from . import sensors
from .logs import error_text
from .manifest import ModalitySpec
from .normalization import OPTICAL_DTYPES, SCALED_OPTICAL_DTYPES, OpticalScaling

PathLike = str | os.PathLike[str]
#: An input as the runtime keeps it: a local ``Path``, or the ``str`` GDAL resolves (a URL).
RasterPath = Path | str

#: Authalic (equal-area) radius of the WGS84 ellipsoid, metres: a sphere of the same area.
EARTH_AUTHALIC_RADIUS_M = 6371007.181

SAR_DTYPES = ("float32", "float64")

#: Longest side, in pixels, of the decimated read a ``--stretch`` is computed from.
STRETCH_MAX_SIDE = 1024

#: Origin/resolution tolerance of the co-registration check, as a fraction of a pixel.
GRID_TOLERANCE_PX = 1e-3


class RasterInputError(ValueError):
    """An input raster cannot be used. The message names the file, the problem and the fix."""


# ----------------------------------------------------------------------------- opening
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: URLs and the /vsi* file systems that read over the network (for the wording of errors).
_REMOTE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://|/vsi(curl|s3|gs|az|adls|oss|swift|hdfs|webhdfs)(_streaming)?/)")


def is_gdal_path(path: PathLike) -> bool:
    """True for a path GDAL resolves itself, not a local file: a URL (``scheme://``, e.g.
    ``https://``, ``s3://``, ``gs://``, ``az://``, ``zip+https://``) or a ``/vsi*`` path."""
    s = os.fspath(path)
    return isinstance(s, str) and (bool(_URL.match(s)) or s.startswith("/vsi"))


def as_raster_path(path: PathLike) -> RasterPath:
    """``path`` as the runtime keeps it: the string itself for :func:`is_gdal_path`, else a ``Path``."""
    return os.fspath(path) if is_gdal_path(path) else Path(path)  # type: ignore[return-value]


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _open_remote(url: str) -> rasterio.io.DatasetReader:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(url)
    except RasterioIOError as e:
        reason = _one_line(e)
        remote = bool(_REMOTE.match(url)) and not url.lower().startswith("file:")
        kind = "remote raster" if remote else "raster"
        if re.search(r"\b404\b|does not exist|No such file|not recognized as being in a supported", reason):
            what = f"{kind} not found: {url} ({reason})"
            fix = ("check the URL (the path, the file name and that the server or bucket serves it)" if remote
                   else "check the path (and the file's path inside the archive)")
        else:
            what = f"cannot read {kind} {url}: {reason}"
            fix = "check the URL, the network and the credentials" if remote else "check the path and the file"
        if remote:
            fix += (". GDAL reads it with HTTP range requests: the server must allow them, and credentials/"
                    "settings come from the environment (AWS_*, GDAL_HTTP_*, GS_*, AZURE_*; "
                    "AWS_NO_SIGN_REQUEST=YES for public buckets), or download the file and pass the local path")
        raise RasterInputError(f"{what}; {fix}") from e


def open_raster(path: PathLike) -> rasterio.io.DatasetReader:
    """Open a raster for reading; missing or unreadable files raise :class:`RasterInputError`.

    A URL or ``/vsi*`` path (:func:`is_gdal_path`) goes to rasterio unchanged; a missing or
    unreachable one is one line naming the URL and the fix. rasterio's
    ``NotGeoreferencedWarning`` is silenced: :mod:`rsvl_runtime.checks` reports a missing
    georeferencing itself, with the fix.
    """
    if is_gdal_path(path):
        return _open_remote(os.fspath(path))  # type: ignore[arg-type]
    p = Path(path)
    if not p.exists():
        raise RasterInputError(f"input raster not found: {p}")
    if p.is_dir():
        raise RasterInputError(f"input raster {p} is a directory, not a raster file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(p)
    except RasterioIOError as e:
        raise RasterInputError(f"cannot read raster {p}: {error_text(e)}. The file is corrupt, truncated or not "
                               "a raster GDAL can read (expected a GeoTIFF)") from e


def read_check(ds: rasterio.io.DatasetReader) -> None:
    """Read a small window at the start and at the end of every band, so that a corrupt or
    truncated body fails early and clearly (later read errors are reported by :func:`read_window`)."""
    w, h = min(ds.width, 16), min(ds.height, 16)
    try:
        ds.read(window=Window(0, 0, w, h))
        ds.read(window=Window(ds.width - w, ds.height - h, w, h))
    except RasterioError as e:
        raise RasterInputError(f"cannot read pixels of raster {ds.name}: {error_text(e)}. The file is corrupt or "
                               "truncated; re-create or re-download it") from e


# ----------------------------------------------------------------------------- bands / dtype / nodata
def read_window(ds: rasterio.io.DatasetReader, bands: Sequence[int], window: Window) -> np.ndarray:
    """``ds.read(bands, window)``; a read failure names the file and the rows."""
    try:
        return ds.read(indexes=list(bands), window=window)
    except RasterioError as e:
        rows = f"{int(window.row_off)}..{int(window.row_off + window.height) - 1}"
        raise RasterInputError(f"cannot read rows {rows} of raster {ds.name}: {error_text(e)}. The file is corrupt "
                               "or truncated; re-create or re-download it") from e


def select_bands(ds: rasterio.io.DatasetReader, bands: Sequence[int] | None,
                 spec: ModalitySpec | Mapping[str, Any], modality: str, sensor: str | None = None) -> list[int]:
    """1-based band indexes to read from ``ds`` for a modality whose spec lists its bands.

    ``bands=None`` takes the ``sensor`` preset's bands (:mod:`rsvl_runtime.sensors`), else bands
    ``1..n`` when the raster has exactly ``n`` bands; otherwise the caller must say which
    (``--bands``, in the bundle's band order). The hint names bands by their descriptions when
    the raster has them, and suggests a preset when the raster looks like one.
    """
    names = list(ModalitySpec.coerce(spec).bands)
    n = len(names)
    flag = "--bands" if modality == "optical" else "--sar-bands"
    preset = sensors.get_preset(sensor) if sensor and modality == "optical" else None
    if bands is None and preset is not None:
        return _preset_bands(ds, preset, names)
    if bands is None:
        if ds.count != n:
            raise RasterInputError(
                f"{modality} raster {ds.name} has {ds.count} band(s) but the bundle expects {n} "
                f"({', '.join(names)}); {_band_hint(ds, names, flag, modality)}")
        return list(range(1, n + 1))
    idx = [int(b) for b in bands]
    if len(idx) != n:
        raise RasterInputError(f"{flag} lists {len(idx)} band(s) {idx} but the bundle's {modality} input "
                               f"expects {n} ({', '.join(names)}); give one raster band per bundle band")
    bad = [b for b in idx if not 1 <= b <= ds.count]
    if bad:
        raise RasterInputError(f"{flag} {idx}: band(s) {bad} do not exist in {modality} raster {ds.name}, "
                               f"which has bands 1..{ds.count} (indexes are 1-based)")
    return idx


def _preset_bands(ds: rasterio.io.DatasetReader, preset: sensors.SensorPreset, names: Sequence[str]) -> list[int]:
    idx = list(preset.bands)
    if len(idx) != len(names):
        raise RasterInputError(f"--sensor {preset.name} picks {len(idx)} bands {preset.describe_bands()} but "
                               f"the bundle's optical input expects {len(names)} ({', '.join(names)}); "
                               "give --bands yourself")
    if max(idx) > ds.count:
        raise RasterInputError(
            f"--sensor {preset.name} reads bands {preset.describe_bands()} of a stacked "
            f"{'/'.join(map(str, preset.counts))}-band file ({' '.join(preset.stack)}), but optical raster "
            f"{ds.name} has {ds.count} band(s); give --bands for its order (e.g. --bands 1,2,3 for an "
            f"{'/'.join(preset.rgb)} file); --bands wins over the preset's bands")
    return idx


def _band_hint(ds: rasterio.io.DatasetReader, names: Sequence[str], flag: str, modality: str) -> str:
    """How to pick the bands of a raster whose band count is not the bundle's."""
    n = len(names)
    if ds.count < n:
        return f"the raster has too few bands for this bundle's {modality} input"
    named = _bands_by_description(ds, names)
    example = ",".join(map(str, named or range(n, 0, -1)))
    how = " (its band descriptions)" if named else ""
    hint = f"pick them with {flag} (1-based, in that order), e.g. {flag} {example}{how}"
    if modality == "optical":
        hint += sensors.suggestion(ds.count, ds.dtypes[0])
    return hint


def _bands_by_description(ds: rasterio.io.DatasetReader, names: Sequence[str]) -> list[int] | None:
    """The bands whose description is a bundle band name (case-insensitive), in the bundle's order."""
    desc = {str(d).strip().lower(): i + 1 for i, d in enumerate(ds.descriptions) if d}
    found = [desc.get(str(name).lower()) for name in names]
    return None if None in found else found  # type: ignore[return-value]


def check_dtype(ds: rasterio.io.DatasetReader, bands: Sequence[int], spec: ModalitySpec | Mapping[str, Any],
                modality: str, scaling: OpticalScaling | None = None) -> str:
    """Refuse a data type the bundle cannot scale; returns the raster's dtype name.

    The rule is :func:`check_input_dtype`'s, shared with the Python API's arrays.
    """
    dtypes = {ds.dtypes[b - 1] for b in bands}
    if len(dtypes) != 1:
        raise RasterInputError(f"{modality} raster {ds.name}: the selected bands {list(bands)} have mixed "
                               f"data types {sorted(dtypes)}; convert them to one type")
    label = "optical raster" if modality == "optical" else "SAR raster"
    return check_input_dtype(dtypes.pop(), spec, modality, f"{label} {ds.name}", scaling)


def accepted_dtypes(spec: ModalitySpec | Mapping[str, Any], modality: str,
                    scaling: OpticalScaling | None = None) -> tuple[str, ...]:
    """The data types an input of ``modality`` may have for this bundle (see :func:`check_input_dtype`)."""
    if modality == "optical":
        if scaling is not None:
            return SCALED_OPTICAL_DTYPES
        want = ModalitySpec.coerce(spec).optical_dtype
        return (want,) if want in OPTICAL_DTYPES else ()
    return SAR_DTYPES


def check_input_dtype(dtype: Any, spec: ModalitySpec | Mapping[str, Any], modality: str, source: str,
                      scaling: OpticalScaling | None = None) -> str:
    """The one data-type rule of the inputs, for rasters (CLI, batch) and arrays (Python API).

    Optical without a caller's ``scaling``: the integer digital numbers the bundle's ``scale``
    was made for: ``spec["dtype"]`` (``uint8``, or ``uint16`` when the bundle declares it);
    other types are refused with the scaling flags as the fix (``--scale``, ``--sensor``,
    ``--stretch``). With a ``scaling`` (which replaces the bundle's): integers and floats of
    :data:`~rsvl_runtime.normalization.SCALED_OPTICAL_DTYPES`; a ``--sensor`` preset also needs
    its product's type. Bool, complex and object data are always refused. SAR: float32/float64
    (dB, or linear intensity with ``--sar-units linear``). ``source`` names the input in the
    message (``"optical raster a.tif"``, ``"optical array"``). Returns the dtype name.
    """
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    accepted = accepted_dtypes(spec, modality, scaling)
    if modality == "optical" and scaling is not None and scaling.sensor and name in accepted:
        preset = sensors.get_preset(scaling.sensor)
        if name != preset.dtype and scaling.scale == preset.scale:
            raise RasterInputError(
                f"{source} is {name} but --sensor {preset.name} ({preset.title}) is {preset.dtype} digital "
                f"numbers (scale {preset.scale:g}, offset {preset.offset:g}); for data already in reflectance "
                f"0..1 give --scale 1 (it wins over the preset's scaling), or drop --sensor")
    if name in accepted:
        return name
    if modality == "optical":
        raise RasterInputError(_optical_dtype_error(name, spec, source, accepted))
    raise RasterInputError(
        f"{source} is {name} but the bundle expects floating-point backscatter (accepted: "
        f"{', '.join(SAR_DTYPES)}; dB, or linear intensity with --sar-units linear); "
        "calibrate/convert it to float32")


def _optical_dtype_error(name: str, spec: ModalitySpec | Mapping[str, Any], source: str,
                         accepted: Sequence[str]) -> str:
    s = ModalitySpec.coerce(spec)
    head = (f"{source} is {name} but the bundle expects {s.optical_dtype} digital numbers (scaled by "
            f"{s.optical_scale:g}; accepted: {', '.join(accepted) or 'none'})")
    if name not in SCALED_OPTICAL_DTYPES:
        return f"{head}; convert it to one of {', '.join(SCALED_OPTICAL_DTYPES)} and give its scaling (--scale)"
    return (f"{head}; say how its values become 0..1 reflectance: --scale S [--offset O] (values become "
            "value * S + O; scale=, offset= in Python), e.g. --scale 0.0001 for Sentinel-2 L2A (x 10000) or "
            "--scale 1 for float reflectance, a preset --sensor " + "|".join(sensors.SENSOR_NAMES)
            + " (bands and scaling), or --stretch p2,p98 (a per-scene percentile stretch)")


def resolve_nodata(ds: rasterio.io.DatasetReader, override: float | None) -> float | None:
    """Nodata value for ``ds``: the declared one, else ``override`` (for rasters that declare none)."""
    if ds.nodata is not None:
        return float(ds.nodata)
    return None if override is None else float(override)


def valid_mask(values: np.ndarray, nodata: float | None) -> np.ndarray:
    """``[C, H, W]`` values -> ``[H, W]`` bool, False where nodata.

    A pixel is nodata when all its bands equal ``nodata`` (GDAL's dataset-mask rule) or, for
    floating-point data, when any band is NaN/inf.
    """
    valid = np.ones(values.shape[-2:], dtype=bool)
    if np.issubdtype(values.dtype, np.floating):
        valid &= np.isfinite(values).all(axis=0)
    if nodata is not None and not math.isnan(nodata) and _representable(nodata, values.dtype):
        valid &= ~(values == values.dtype.type(nodata)).all(axis=0)
    return valid


def _representable(value: float, dtype: np.dtype) -> bool:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(value).is_integer() and info.min <= value <= info.max
    return True


@dataclass(frozen=True)
class ModalityInput:
    """A checked input raster: path (a ``Path``, or the URL string, :func:`as_raster_path`),
    1-based bands to read, nodata, dtype, size and, for optical, the caller's scaling (None:
    the bundle's; a stretch gets its limits in :func:`rsvl_runtime.reading.prepare_sources`)."""

    modality: str  # "optical" | "sar"
    path: RasterPath
    bands: tuple[int, ...]
    nodata: float | None
    dtype: str
    width: int
    height: int
    scaling: OpticalScaling | None = None

    @property
    def remote(self) -> bool:
        """A URL or ``/vsi*`` path (:func:`is_gdal_path`), not a local file."""
        return is_gdal_path(self.path)


def prepare_input(path: PathLike, modality: str, spec: ModalitySpec | Mapping[str, Any], *,
                  bands: Sequence[int] | None = None, nodata: float | None = None,
                  scaling: OpticalScaling | None = None) -> ModalityInput:
    """Open and check one input raster (readability, band count, dtype); returns its reading plan.

    ``scaling`` (optical only): the caller's :class:`~rsvl_runtime.normalization.OpticalScaling`
    (:func:`rsvl_runtime.sensors.scaling_of`); its sensor preset picks the bands when ``bands``
    is None, and it lets uint16/float rasters through (:func:`check_input_dtype`).
    """
    if modality not in ("optical", "sar"):
        raise ValueError(f"unknown modality {modality!r}; expected 'optical' or 'sar'")
    scaling = scaling if modality == "optical" else None
    with open_raster(path) as ds:
        idx = select_bands(ds, bands, spec, modality, scaling.sensor if scaling else None)
        dtype = check_dtype(ds, idx, spec, modality, scaling)
        read_check(ds)
        return ModalityInput(modality, as_raster_path(path), tuple(idx), resolve_nodata(ds, nodata), dtype,
                             ds.width, ds.height, scaling)


def decimated_shape(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The size of a read of ``height x width`` decimated by a whole step to <= ``max_side`` a side."""
    step = max(1, math.ceil(max(height, width) / max_side))
    return max(1, math.ceil(height / step)), max(1, math.ceil(width / step))


def scaled_shape(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The size of ``height x width`` scaled (by any factor >= 1) to <= ``max_side`` on the long
    side: the report's input thumbnail, read by GDAL or gathered while reading."""
    scale = max(1.0, max(height, width) / max_side)
    return max(1, round(height / scale)), max(1, round(width / scale))


def read_decimated(src: ModalityInput, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour read of the bands of ``src`` at ``shape`` (GDAL reads the raster's
    overviews when it has them, so a COG costs one overview level, not the full raster)."""
    with open_raster(src.path) as ds:
        try:
            return ds.read(indexes=list(src.bands), out_shape=(len(src.bands), *shape),
                           resampling=Resampling.nearest)
        except RasterioError as e:
            label = "optical" if src.modality == "optical" else "SAR"
            raise RasterInputError(f"cannot read {label} raster {src.path}: {error_text(e)}. The file is corrupt "
                                   "or truncated; re-create or re-download it") from e


def with_stretch_limits(src: ModalityInput, max_side: int = STRETCH_MAX_SIDE) -> ModalityInput:
    """``src`` with its ``--stretch`` limits computed once from a decimated read (<= ``max_side``
    px a side, nodata excluded); ``src`` itself when it needs none."""
    if src.scaling is None or not src.scaling.needs_limits:
        return src
    values = read_decimated(src, decimated_shape(src.height, src.width, max_side))
    try:
        scaling = src.scaling.with_limits(values, valid_mask(values, src.nodata))
    except ValueError as e:
        raise RasterInputError(f"optical raster {src.path}: {e}") from e
    return replace(src, scaling=scaling)


# ----------------------------------------------------------------------------- co-registration
def _grid(ds: rasterio.io.DatasetReader) -> dict[str, Any]:
    t = ds.transform
    return {"crs": ds.crs, "res": (t.a, t.e), "size": (ds.width, ds.height), "origin": (t.c, t.f)}


def check_coregistered(optical_ds: rasterio.io.DatasetReader, sar_ds: rasterio.io.DatasetReader) -> None:
    """Refuse an optical/SAR pair that is not on the same pixel grid.

    Compares CRS, pixel size, raster size and grid origin (to :data:`GRID_TOLERANCE_PX` of a pixel);
    the message names both files and both values and points at ``--align``.
    """
    a, b = _grid(optical_ds), _grid(sar_ds)
    fix = ("re-run with --align to reproject the SAR onto the optical grid (bilinear), or "
           "co-register the pair beforehand")
    problems = []
    if (a["crs"] is None) != (b["crs"] is None) or (a["crs"] is not None and a["crs"] != b["crs"]):
        problems.append(("CRS", _crs_str(a["crs"]), _crs_str(b["crs"])))
    px = max(abs(a["res"][0]), abs(a["res"][1]))
    tol = GRID_TOLERANCE_PX * px
    # a pixel-size difference is tolerated while it drifts less than the tolerance over the scene
    res_tol = tol / max(a["size"] + b["size"])
    if any(abs(x - y) > res_tol for x, y in zip(a["res"], b["res"])):
        problems.append(("resolution", _fmt_pair(a["res"]), _fmt_pair(b["res"])))
    if a["size"] != b["size"]:
        problems.append(("size", f"{a['size'][0]}x{a['size'][1]} px", f"{b['size'][0]}x{b['size'][1]} px"))
    if any(abs(x - y) > tol for x, y in zip(a["origin"], b["origin"])):
        problems.append(("grid origin", _fmt_pair(a["origin"]), _fmt_pair(b["origin"])))
    if problems:
        details = "; ".join(f"{what}: optical {va} vs SAR {vb}" for what, va, vb in problems)
        raise RasterInputError(f"optical raster {optical_ds.name} and SAR raster {sar_ds.name} are not "
                               f"co-registered ({details}); {fix}")


def _crs_str(crs: Any) -> str:
    if crs is None:
        return "none"
    return crs.to_string() if hasattr(crs, "to_string") else str(crs)


def _fmt_pair(p: tuple[float, float]) -> str:
    return f"({p[0]:.10g}, {p[1]:.10g})"


def align_to(src_path: PathLike, ref_path: PathLike, out_path: PathLike, *,
             resampling: Resampling = Resampling.bilinear, block_rows: int = 512,
             src_nodata: float | None = None) -> Path:
    """Reproject ``src_path`` onto the grid of ``ref_path`` (CRS, transform, size), write a GeoTIFF.

    Reads through a ``WarpedVRT`` one window of ``block_rows`` rows at a time, so memory stays
    bounded. Areas outside the source footprint become nodata: the source's nodata (or
    ``src_nodata``), else NaN for float data, else 0. A source with only ground control points
    is first warped with its GCPs (:func:`warp_gcps`, a temporary file). Written atomically to
    ``out_path``.
    """
    out = Path(out_path)
    with open_raster(src_path) as src:
        gcp_only = georeferencing(src) == GEOREF_GCPS
    if gcp_only:
        # rasterio's WarpedVRT ignores the GCPs when it is given a destination grid: two steps
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.gcps.", suffix=".tmp")
        os.close(fd)
        try:
            warp_gcps(src_path, tmp, resampling=resampling, block_rows=block_rows)
            return align_to(tmp, ref_path, out, resampling=resampling, block_rows=block_rows,
                            src_nodata=src_nodata)
        finally:
            Path(tmp).unlink(missing_ok=True)
    with open_raster(ref_path) as ref, open_raster(src_path) as src:
        grid = {"crs": ref.crs, "transform": ref.transform, "width": ref.width, "height": ref.height}
        return _write_warped(src, out, grid, resampling=resampling, block_rows=block_rows,
                             src_nodata=src_nodata)


def warp_gcps(src_path: PathLike, out_path: PathLike, *, resampling: Resampling = Resampling.bilinear,
              block_rows: int = 512) -> Path:
    """Warp a raster that has only ground control points onto a north-up grid in the GCPs' CRS
    (GDAL's suggested output grid for the GCP transform), streamed like :func:`align_to`."""
    with open_raster(src_path) as src:
        gcps, crs = src.gcps
        if not gcps or crs is None:
            raise RasterInputError(f"raster {src.name} has no ground control points with a CRS to warp with")
        return _write_warped(src, Path(out_path), {"crs": crs}, resampling=resampling, block_rows=block_rows)


def _write_warped(src: rasterio.io.DatasetReader, out: Path, grid: Mapping[str, Any], *,
                  resampling: Resampling, block_rows: int, src_nodata: float | None = None) -> Path:
    """Write ``src`` warped onto ``grid`` (``crs`` and optionally ``transform``/``width``/
    ``height``; without them GDAL suggests the grid) to ``out``: tiled GeoTIFF, atomic."""
    nodata = src.nodata if src.nodata is not None else src_nodata
    dst_nodata = nodata if nodata is not None else (
        float("nan") if np.issubdtype(np.dtype(src.dtypes[0]), np.floating) else 0)
    vrt_opts: dict[str, Any] = {**grid, "resampling": resampling, "nodata": dst_nodata}
    if nodata is not None:
        vrt_opts["src_nodata"] = nodata
    if src.crs is None and src.gcps[1] is not None:
        vrt_opts["src_crs"] = src.gcps[1]  # GCP-only source: warp with its GCPs
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with WarpedVRT(src, **vrt_opts) as vrt:
            profile = {"driver": "GTiff", "width": vrt.width, "height": vrt.height, "count": src.count,
                       "dtype": src.dtypes[0], "crs": vrt.crs, "transform": vrt.transform,
                       "nodata": dst_nodata, "tiled": True, "blockxsize": 256, "blockysize": 256,
                       "compress": "deflate", "BIGTIFF": "IF_SAFER"}
            with rasterio.open(tmp, "w", **profile) as dst:
                for i in range(1, src.count + 1):
                    if src.descriptions[i - 1]:
                        dst.set_band_description(i, src.descriptions[i - 1])
                for y0 in range(0, vrt.height, block_rows):
                    win = Window(0, y0, vrt.width, min(block_rows, vrt.height - y0))
                    dst.write(vrt.read(window=win), window=win)
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


# ----------------------------------------------------------------------------- georeferencing
#: :func:`georeferencing` kinds.
GEOREF_OK, GEOREF_GCPS, GEOREF_NO_CRS, GEOREF_NONE = "ok", "gcps", "no-crs", "none"


def georeferencing(ds: Any) -> str:
    """How ``ds`` is georeferenced: ``"ok"`` (a CRS and a geotransform), ``"gcps"`` (only ground
    control points, with their CRS), ``"no-crs"`` (a geotransform but no CRS) or ``"none"``
    (neither: a PNG/JPEG, or an identity transform)."""
    has_transform = not ds.transform.is_identity
    if ds.crs is not None and has_transform:
        return GEOREF_OK
    gcps, gcp_crs = ds.gcps
    if gcps and gcp_crs is not None and not has_transform:
        return GEOREF_GCPS
    if has_transform:
        return GEOREF_NO_CRS
    return GEOREF_NONE


def footprint(ds: Any, crs: Any = None) -> tuple[float, float, float, float]:
    """``(left, bottom, right, top)`` of ``ds`` in ``crs`` (default: its own CRS, or for a
    GCP-only raster the CRS of its GCPs, from the GCP extent)."""
    from rasterio.warp import transform_bounds

    if georeferencing(ds) == GEOREF_GCPS:
        gcps, own = ds.gcps
        xs, ys = [g.x for g in gcps], [g.y for g in gcps]
        bounds, own_crs = (min(xs), min(ys), max(xs), max(ys)), own
    else:
        bounds, own_crs = tuple(ds.bounds), ds.crs
    if crs is None or own_crs is None or crs == own_crs:
        return tuple(float(v) for v in bounds)  # type: ignore[return-value]
    return tuple(float(v) for v in transform_bounds(own_crs, crs, *bounds, densify_pts=21))  # type: ignore[return-value]


# ----------------------------------------------------------------------------- area
def pixel_area_m2(ds: Any) -> np.ndarray:
    """Ground area in m² of the pixels of each row, ``[height]`` float64.

    ``ds`` is anything with ``crs``, ``transform`` and ``height`` (an open dataset).
    Projected CRS: ``|det(transform)|`` in CRS units², converted to m² with the CRS linear unit
    factor (constant over rows). Geographic CRS (degrees): each row is a band of latitude
    ``[lat0, lat1]`` on a sphere of the WGS84 authalic radius ``R``; a pixel of ``dlon`` degrees
    covers ``R² · dlon_rad · |sin(lat1) − sin(lat0)|`` (the spherical approximation is within
    ~0.5 % of the ellipsoid). Rotated/sheared geographic transforms use the row-centre latitude.
    No CRS: map units are assumed to be metres (``predict_raster`` refuses such inputs first, see
    :func:`rsvl_runtime.checks.check_georeferenced`).
    """
    t = ds.transform
    height = int(ds.height)
    crs = ds.crs
    if crs is not None and crs.is_geographic:
        return _geographic_row_areas(t, height)
    factor = 1.0
    if crs is not None:
        try:
            factor = float(crs.linear_units_factor[1])
        except (RasterioError, ValueError, TypeError, AttributeError):
            factor = 1.0
    area = abs(t.a * t.e - t.b * t.d) * factor * factor
    return np.full(height, area, dtype=np.float64)


def _geographic_row_areas(t: Any, height: int) -> np.ndarray:
    r = EARTH_AUTHALIC_RADIUS_M
    rows = np.arange(height, dtype=np.float64)
    if t.b == 0 and t.d == 0:
        lat0 = np.radians(np.clip(t.f + t.e * rows, -90.0, 90.0))
        lat1 = np.radians(np.clip(t.f + t.e * (rows + 1), -90.0, 90.0))
        return r * r * math.radians(abs(t.a)) * np.abs(np.sin(lat1) - np.sin(lat0))
    # rotated grid: parallelogram area in degrees², scaled at the row-centre latitude
    lat_c = np.radians(t.f + t.e * (rows + 0.5) + t.d * 0.5)
    deg2 = abs(t.a * t.e - t.b * t.d)
    return (r * r) * math.radians(1.0) ** 2 * deg2 * np.cos(lat_c)
