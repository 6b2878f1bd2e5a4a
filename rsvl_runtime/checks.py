"""Plausibility checks of the inputs: refuse (or warn about) what would give a silently wrong result.

:func:`preflight` runs in :meth:`Segmenter.predict_raster <rsvl_runtime.segmenter.Segmenter.predict_raster>`
and :meth:`Referrer.predict_raster <rsvl_runtime.segmenter.Referrer.predict_raster>`, so ``rsvl-infer``,
batch runs and Ray actors all get it, before anything is written. :func:`check_array` is the
same rule set for the in-memory arrays of ``Segmenter.predict`` / ``Referrer.predict``, and
:func:`with_array_limits` their ``--stretch`` (computed once per array, as once per scene). Every
refusal is a :class:`~rsvl_runtime.raster_io.RasterInputError` whose message names the file
(or array), the wrong value and the fix; warnings go to the ``rsvl.checks`` logger.

The rules:

- **Data type** (rasters and arrays alike, :func:`rsvl_runtime.raster_io.check_input_dtype`):
  optical in the bundle's integer type (``uint8``, or ``uint16`` when the bundle declares it),
  SAR float32/float64. Other optical types (uint16 reflectance x 10000, float reflectance) need
  the caller's scaling (``--scale``/``--offset``, a ``--sensor`` preset or ``--stretch``); bool,
  complex and object data are refused.
- **Paths**: a URL or ``/vsi*`` path reaches GDAL unchanged
  (:func:`rsvl_runtime.raster_io.is_gdal_path`); a missing or unreachable one is one line.
- **Georeferencing**: an input without a CRS, without a geotransform (a PNG/JPEG, an identity
  transform) or with only ground control points is refused: its areas would be 1 m² pixels.
  GCP-only rasters can be warped with their GCPs by ``rsvl-infer --align``.
- **Nodata**: a decimated sample (at most :data:`SAMPLE_MAX_SIDE` px a side; GDAL reads
  overviews when the file has them) estimates the nodata share of each input and of the pair. No
  valid pixel at all (all nodata, or a SAR that is all NaN/inf) is an error, confirmed by a
  full streamed pass before refusing; more than :data:`NODATA_WARN_FRACTION` nodata is a warning.
- **SAR units**: on the valid sampled values, with the bundle's SAR ``mean``/``std`` (dB),
  the plausible dB range is ``mean ± SAR_RANGE_SIGMAS * std``:

  * ``--sar-units db`` and at least :data:`SAR_NONNEGATIVE_FRACTION` of the values ``>= 0``
    (while the bundle's mean is negative): linear intensity or amplitude given as dB;
  * ``--sar-units linear`` and more than :data:`SAR_NEGATIVE_FRACTION` negative values: dB
    given as linear (an intensity is never negative);
  * otherwise the median (in dB, after the linear -> dB conversion) outside the plausible range.

  The first two (a units mix-up) refuse the run unless the check is forced off
  (``--no-sar-check``, ``sar_check=False``), which logs them as a warning instead; the third is
  always a warning (an unusual scene, a calibration offset or undeclared nodata values).
- **Overlap** (``--align``): :func:`check_overlap` refuses a SAR whose footprint does not
  intersect the optical one, naming both files and both bounds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from rasterio.windows import Window

from .normalization import OpticalScaling, band_stats, linear_to_db
from .options import InputOptions
from .parallel import WorkPool, available_cpus
from .raster_io import (
    GEOREF_GCPS,
    GEOREF_NO_CRS,
    GEOREF_OK,
    STRETCH_MAX_SIDE,
    ModalityInput,
    PathLike,
    RasterInputError,
    check_coregistered,
    check_input_dtype,
    decimated_shape,
    footprint,
    georeferencing,
    open_raster,
    prepare_input,
    read_decimated,
    read_window,
    valid_mask,
)
from .sensors import scaling_of

log = logging.getLogger("rsvl.checks")

#: Longest side, in pixels, of the decimated sample the checks read.
SAMPLE_MAX_SIDE = 512
#: Nodata share above which a warning is logged (an all-nodata input is an error).
NODATA_WARN_FRACTION = 0.99
#: Plausible SAR dB range: the bundle's ``mean ± SAR_RANGE_SIGMAS * std``.
SAR_RANGE_SIGMAS = 3.0
#: ``--sar-units db``: this share of values ``>= 0`` means linear intensity/amplitude.
SAR_NONNEGATIVE_FRACTION = 0.95
#: ``--sar-units linear``: more than this share of negative values means dB.
SAR_NEGATIVE_FRACTION = 0.01
#: Fewer valid sampled values than this: the SAR units check is skipped.
SAR_MIN_SAMPLES = 16
#: Rows per window of the full pass that confirms an all-nodata sample.
CONFIRM_ROWS = 256

FORCE_HINT = "--no-sar-check (sar_check=False) runs anyway"


# ----------------------------------------------------------------------------- samples
@dataclass(frozen=True)
class Sample:
    """A decimated read of one input: ``values [C, h, w]`` and ``valid [h, w]``."""

    source: str  # "optical raster a.tif", "SAR array"
    values: np.ndarray
    valid: np.ndarray
    nodata: float | None
    exact: bool  # True when the sample is the whole raster at full resolution

    @property
    def nodata_fraction(self) -> float:
        return 1.0 - float(self.valid.mean()) if self.valid.size else 1.0


def _sample_shape(height: int, width: int, max_side: int | None = None) -> tuple[int, int]:
    return decimated_shape(height, width, max_side or SAMPLE_MAX_SIDE)


def _source(src: ModalityInput) -> str:
    return f"{'optical' if src.modality == 'optical' else 'SAR'} raster {src.path}"


def sample_input(src: ModalityInput, shape: tuple[int, int] | None = None) -> Sample:
    """Decimated nearest-neighbour read of ``src`` (``shape``: its size, default
    :func:`_sample_shape`); GDAL uses the raster's overviews when it has them."""
    h, w = shape or _sample_shape(src.height, src.width)
    values = read_decimated(src, (h, w))
    return Sample(_source(src), values, valid_mask(values, src.nodata), src.nodata,
                  exact=(h, w) == (src.height, src.width))


def has_valid_pixel(src: ModalityInput) -> bool:
    """Full streamed pass over ``src``, stopping at the first valid pixel."""
    with open_raster(src.path) as ds:
        for y0 in range(0, src.height, CONFIRM_ROWS):
            win = Window(0, y0, src.width, min(CONFIRM_ROWS, src.height - y0))
            if valid_mask(read_window(ds, src.bands, win), src.nodata).any():
                return True
    return False


# ----------------------------------------------------------------------------- nodata
def _nodata_desc(sample: Sample) -> str:
    kinds = []
    if sample.nodata is not None and not math.isnan(sample.nodata):
        kinds.append(f"nodata {sample.nodata:g}")
    if np.issubdtype(sample.values.dtype, np.floating):
        kinds.append("NaN/inf")
    return " or ".join(kinds) or "nodata"


def check_nodata(sample: Sample, confirm: Any = None) -> None:
    """No valid pixel: error (after ``confirm()`` returns False for a decimated sample);
    more than :data:`NODATA_WARN_FRACTION` nodata: a warning with the percentage."""
    if not sample.valid.any() and (sample.exact or confirm is None or not confirm()):
        raise RasterInputError(
            f"{sample.source} has no valid pixel: every pixel is {_nodata_desc(sample)}, so the result "
            "would be empty. Check the file (a failed calibration or export?), its declared nodata "
            "and --nodata/--sar-nodata")
    frac = sample.nodata_fraction
    if frac > NODATA_WARN_FRACTION:
        log.warning("%s: %.2f %% of the pixels are %s (%s); the result will be almost empty — check the "
                    "footprint and --nodata/--sar-nodata", sample.source, 100 * frac, _nodata_desc(sample),
                    "every pixel counted" if sample.exact else f"estimated from a {sample.valid.shape[1]}x"
                                                 f"{sample.valid.shape[0]} px sample")


def check_common_valid(optical: Sample, sar: Sample) -> None:
    """Refuse a co-registered pair whose valid areas do not intersect (same-shape samples);
    warn when more than :data:`NODATA_WARN_FRACTION` of the pair is nodata."""
    if optical.valid.shape != sar.valid.shape:
        return
    both = optical.valid & sar.valid
    frac = 1.0 - float(both.mean())
    if not both.any() and optical.exact:
        raise RasterInputError(f"{optical.source} and {sar.source} have no valid pixel in common: their "
                               "valid areas do not overlap, so the result would be empty. Check both "
                               "footprints and nodata values")
    if frac > NODATA_WARN_FRACTION and optical.nodata_fraction <= NODATA_WARN_FRACTION \
            and sar.nodata_fraction <= NODATA_WARN_FRACTION:
        log.warning("%s and %s: %.2f %% of the pixels are nodata in one of them (estimated); the result "
                    "will be almost empty — check that their footprints overlap", optical.source,
                    sar.source, 100 * frac)


# ----------------------------------------------------------------------------- SAR units
def sar_units_problem(values: np.ndarray, valid: np.ndarray, spec: Mapping[str, Any],
                      units: str | None, source: str) -> tuple[str, bool] | None:
    """Why the SAR ``values [C, ...]`` (``valid``: the usable pixels) are implausible for the
    bundle's dB statistics with ``units``, and whether that is a units mix-up (True: refuse) or
    only an unusual median (False: warn); None when they look right (module docstring rules)."""
    units = (units or spec.get("units", "db")).lower()
    if "mean" not in spec or "std" not in spec:
        return None
    names = list(spec.get("bands", [])) or [f"band {i + 1}" for i in range(values.shape[0])]
    means, stds = band_stats(spec, values.shape[0])
    for i in range(values.shape[0]):
        v = values[i][valid].astype(np.float64)
        if v.size < SAR_MIN_SAMPLES:
            continue
        mean, std = float(means[i, 0, 0]), float(stds[i, 0, 0])
        lo, hi = mean - SAR_RANGE_SIGMAS * std, mean + SAR_RANGE_SIGMAS * std
        db = linear_to_db(v).astype(np.float64) if units == "linear" else v
        med = float(np.median(db))
        seen = (f"observed {v.min():.4g}..{v.max():.4g}, median {float(np.median(v)):.4g}"
                + (f" ({med:.3g} dB)" if units == "linear" else ""))
        expected = (f"the bundle expects dB around {mean:g} ± {std:g} (plausible {lo:g}..{hi:g} dB)")
        what = f"{source} ({names[i] if i < len(names) else f'band {i + 1}'})"
        nonneg = float((v >= 0).mean())
        if units == "db" and mean < 0 and nonneg >= SAR_NONNEGATIVE_FRACTION:
            return ((f"{what} looks like linear intensity (or amplitude), not dB: {100 * nonneg:.0f} % of the "
                    f"values are >= 0, {seen}; {expected}. Pass --sar-units linear (sar_units='linear') "
                    f"if these are linear intensities, or convert them to dB; {FORCE_HINT}"), True)
        if units == "linear" and 1.0 - nonneg > SAR_NEGATIVE_FRACTION:
            return ((f"{what} has {100 * (1 - nonneg):.0f} % negative values ({seen}), which a linear intensity "
                    f"never has: it looks like dB. Pass --sar-units db (sar_units='db'); {FORCE_HINT}"), True)
        if not lo <= med <= hi:
            return ((f"{what}: median {med:.4g} dB is outside the bundle's dB range {lo:g}..{hi:g} ({seen}); "
                    f"{expected}. Check the calibration, undeclared nodata values and --sar-units "
                    f"(now {units})"), False)
    return None


def check_sar_units(values: np.ndarray, valid: np.ndarray, spec: Mapping[str, Any], units: str | None,
                    source: str, *, strict: bool = True) -> None:
    """Raise (a units mix-up, when ``strict``) or log a warning when :func:`sar_units_problem`
    finds a problem."""
    found = sar_units_problem(values, valid, spec, units, source)
    if found is None:
        return
    problem, mix_up = found
    if mix_up and strict:
        raise RasterInputError(problem)
    log.warning("%s", problem)


# ----------------------------------------------------------------------------- georeferencing
def check_georeferenced(path: PathLike, modality: str) -> None:
    """Refuse an input that is not georeferenced (no CRS, no geotransform) or has only GCPs."""
    label = "optical" if modality == "optical" else "SAR"
    with open_raster(path) as ds:
        kind = georeferencing(ds)
        if kind == GEOREF_OK:
            return
        if kind == GEOREF_GCPS:
            gcps, crs = ds.gcps
            raise RasterInputError(
                f"{label} raster {path} has only ground control points ({len(gcps)} GCPs in {crs}) and no "
                f"geotransform, so its pixels have no size; re-run with --align to warp it with its GCPs, "
                f"or warp it first: gdalwarp -t_srs {crs} {path} warped.tif")
        what = ("a geotransform but no CRS" if kind == GEOREF_NO_CRS
                else "no CRS and no geotransform, e.g. a PNG/JPEG without world file")
        raise RasterInputError(
            f"{label} raster {path} is not georeferenced ({what}): areas would be computed for 1 m² "
            "pixels. Georeference it first, e.g. gdal_translate -a_srs EPSG:<code> -a_ullr <ulx> <uly> "
            f"<lrx> <lry> {path} georef.tif (or gdal_edit.py -a_srs EPSG:<code> when only the CRS is missing)")


def check_overlap(optical: PathLike, sar: PathLike) -> None:
    """``--align``: refuse a SAR whose footprint does not intersect the optical's (in the optical CRS)."""
    with open_raster(optical) as a, open_raster(sar) as b:
        crs = a.crs if a.crs is not None else a.gcps[1]
        fa, fb = footprint(a, crs), footprint(b, crs)
    if fa[0] < fb[2] and fb[0] < fa[2] and fa[1] < fb[3] and fb[1] < fa[3]:
        return
    raise RasterInputError(
        f"SAR raster {sar} does not overlap optical raster {optical}: SAR bounds {_fmt_bounds(fb)} vs optical "
        f"bounds {_fmt_bounds(fa)} (left, bottom, right, top in {crs}); --align would give an empty result. Pass the SAR "
        "scene that covers the optical one")


def _fmt_bounds(bounds: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"


# ----------------------------------------------------------------------------- rasters (preflight)
def preflight(optical: PathLike | None, sar: PathLike | None, options: InputOptions | None = None,
              **kwargs: Any) -> None:
    """Check the input rasters of one scene before it runs (see the module docstring).

    ``options``: the scene's :class:`~rsvl_runtime.options.InputOptions` (specs, bands, nodata,
    SAR units, ``sar_check``); keyword arguments with those names build them (or change some
    of ``options``). Raises :class:`RasterInputError`; logs warnings to ``rsvl.checks``.
    """
    opts = replace(options or InputOptions(), **kwargs)
    if optical is None and sar is None:
        raise RasterInputError("no input raster: give an optical raster, a SAR raster or both")
    inputs: dict[str, ModalityInput] = {}
    for modality, path in (("optical", optical), ("sar", sar)):
        spec = opts.spec(modality)
        if path is None or spec is None:
            continue  # a raster the bundle has no input for is refused by run_scene
        check_georeferenced(path, modality)
        inputs[modality] = prepare_input(path, modality, spec, bands=opts.bands_of(modality),
                                         nodata=opts.nodata_for(modality),
                                         scaling=scaling_of(opts) if modality == "optical" else None)
    if len(inputs) == 2:
        with open_raster(inputs["optical"].path) as a, open_raster(inputs["sar"].path) as b:
            check_coregistered(a, b)
    with WorkPool(min(len(inputs), available_cpus())) as pool:  # both inputs decoded at once
        samples = dict(zip(inputs, pool.map(sample_input, list(inputs.values()))))
    for m, s in samples.items():
        check_nodata(s, confirm=lambda src=inputs[m]: has_valid_pixel(src))
    if len(samples) == 2:
        check_common_valid(samples["optical"], samples["sar"])
    if "sar" in samples and opts.sar_spec is not None:
        s = samples["sar"]
        check_sar_units(s.values, s.valid, opts.sar_spec, opts.sar_units, s.source, strict=opts.sar_check)


# ----------------------------------------------------------------------------- arrays (Python API)
def to_chw(arr: np.ndarray, bands: int, what: str) -> np.ndarray:
    """``[C, H, W]`` view of an array given as ``[C, H, W]``, ``[H, W, C]`` or ``[H, W]`` (one band)."""
    if arr.ndim == 2 and bands == 1:
        arr = arr[None]
    if arr.ndim != 3:
        raise RasterInputError(f"{what} must be [C, H, W] (or [H, W] for one band), got shape {arr.shape}")
    if arr.shape[0] != bands and arr.shape[-1] == bands:
        arr = np.moveaxis(arr, -1, 0)
    if arr.shape[0] != bands:
        raise RasterInputError(f"{what} has {arr.shape[0]} bands, the bundle expects {bands}; "
                               "reorder or select bands (e.g. arr[[2, 1, 0]])")
    return arr


def check_array(arr: Any, modality: str, spec: Mapping[str, Any], *, what: str | None = None,
                scaling: OpticalScaling | None = None) -> np.ndarray:
    """An in-memory input as ``[C, H, W]``, after the CLI's data-type rule
    (:func:`rsvl_runtime.raster_io.check_input_dtype`; ``scaling``: the caller's optical
    scaling, which lets uint16/float arrays through). ``None`` or a non-array is refused."""
    label = what or ("optical array" if modality == "optical" else "SAR array")
    if arr is None:
        raise RasterInputError(f"{label} is None; pass a numpy array")
    a = np.asarray(arr)
    check_input_dtype(a.dtype, spec, modality, label, scaling if modality == "optical" else None)
    return to_chw(a, len(spec.get("bands", [])) or a.shape[0], label)


def with_array_limits(scaling: OpticalScaling | None, optical: np.ndarray,
                      nodata: float | None = None) -> OpticalScaling | None:
    """The Python API's ``--stretch``: ``scaling`` with its limits computed once from the checked
    ``[C, H, W]`` array (:func:`check_array`) decimated to
    :data:`~rsvl_runtime.raster_io.STRETCH_MAX_SIDE` px a side, ``nodata`` excluded, as for a
    raster; ``scaling`` itself when it needs none. ``scaling`` comes from
    :func:`rsvl_runtime.sensors.scaling_of` of the caller's ``InputOptions(sensor=, scale=,
    offset=, stretch=)`` (a preset's bands are not applied to arrays: select them, e.g.
    ``arr[[3, 2, 1]]``)."""
    if scaling is None or not scaling.needs_limits:
        return scaling
    h, w = optical.shape[-2:]
    step = max(1, math.ceil(max(h, w) / STRETCH_MAX_SIDE))
    values = optical[:, ::step, ::step]
    try:
        return scaling.with_limits(values, valid_mask(values, nodata))
    except ValueError as e:
        raise RasterInputError(f"optical array: {e}") from e


def sar_array_valid(sar: np.ndarray, spec: Mapping[str, Any], units: str | None, *,
                    sar_check: bool = True, what: str = "SAR array") -> np.ndarray:
    """``[H, W]`` validity of a checked SAR array (NaN/inf = nodata); all invalid is an error,
    then the SAR units rule (:func:`check_sar_units`) runs on the valid values."""
    valid = valid_mask(sar, None)
    sample = Sample(what, sar, valid, None, exact=True)
    check_nodata(sample)
    check_sar_units(sar, valid, spec, units, what, strict=sar_check)
    return valid
