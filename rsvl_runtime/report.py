"""``report.html``: the self-contained report of a run, written for the GIS user who opens it.

It holds, in one file with no external URL (images embedded as base64: the labels preview as
PNG, the input's thumbnail as WebP):

- the optical input (a decimated read, <= :data:`THUMBNAIL_PX` px, percentile-stretched for
  display, nodata transparent: :func:`optical_thumbnail`) beside the preview of the labels;
- an HTML legend (colour swatch + class name + share of the valid area), readable at any zoom;
- the class table with formatted areas (:func:`format_area`: km² for large, ha for medium, m²
  for small, thousands separators) and a nodata row;
- the vocabulary: each class with its synonyms, colour and the prompts its embedding averages
  (or the referring expression of a referring run);
- inputs, raster, run options, timings under human names (:data:`TIMING_LABELS`; an unknown key
  gets a readable fallback, :func:`timing_label`) and the bundle information.

:func:`write_report` renders a :class:`~rsvl_runtime.finished.FinishedRun`;
:func:`render_report` is the pure HTML function behind it.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .files import atomic_write_text
from .finished import FinishedRun
from .outputs import utc_now
from .preview import PNG_COMPRESS_LEVEL

if TYPE_CHECKING:  # pragma: no cover
    from .reading import Sources

PathLike = str | os.PathLike[str]
log = logging.getLogger("rsvl.runtime")

#: Longest side of the optical thumbnail, in pixels.
THUMBNAIL_PX = 512
#: Percentiles of the display stretch of the optical thumbnail.
THUMBNAIL_STRETCH = (2.0, 98.0)
#: The thumbnail is lossy WebP (alpha lossless: nodata stays exactly transparent) at this quality,
#: libwebp's fastest method: a photograph-like image, for orientation. Measured on a 512 px
#: thumbnail of a speckled synthetic scene: 15 ms / 129 KB against PNG level 3's 52 ms / 739 KB
#: (the encode ended every run after its tile loop; the report was 1.4 MB); PNG where Pillow
#: has no WebP.
THUMBNAIL_WEBP_QUALITY = 85

#: Timing keys (``FinishedRun.timings``) -> (label, unit). Unknown keys: :func:`timing_label`.
TIMING_LABELS: dict[str, tuple[str, str]] = {
    "vocabulary_s": ("Encoding the vocabulary", "s"),
    "engine_warmup_s": ("Engine warm-up before the run (not in the total)", "s"),
    "read_s": ("Reading inputs", "s"),
    "normalise_s": ("Normalising inputs", "s"),
    "batch_s": ("Copying tiles into batches", "s"),
    "hash_s": ("Hashing the inputs (sha256, between engine calls)", "s"),
    "predict_s": ("Model inference", "s"),
    "sink_wait_s": ("Inference waiting for the writer thread", "s"),
    "blend_s": ("Blending overlapping tiles", "s"),
    "postprocess_s": ("Class decision (softmax, argmax)", "s"),
    "write_s": ("Writing rasters", "s"),
    "inference_s": ("Tile loop (read, infer, blend, write)", "s"),
    "rasters_finalize_s": ("Finalising rasters (overviews, COG)", "s"),
    "overviews_s": ("Building overviews (a COG: while writing)", "s"),
    "cog_write_s": ("Encoding the COGs (deflate, once)", "s"),
    "reports_s": ("Writing reports", "s"),
    "total_s": ("Total", "s"),
    "tiles_per_s": ("Throughput", "tiles/s"),
    "megapixels_per_s": ("Throughput", "megapixels/s"),
    "resumed_at_row": ("Resumed at output row", "row"),
}

#: Raster keys (``FinishedRun.raster``) -> label. Unknown keys: :func:`_readable`.
RASTER_LABELS = {"size": "Size", "crs": "CRS", "transform": "Geotransform (a, b, c, d, e, f)", "task": "Task",
                 "tile": "Tile size (px)", "overlap": "Tile overlap", "batch": "Tiles per batch",
                 "tiles": "Tiles"}

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;
vertical-align:top}th{background:#f3f3f3}td.l,th.l{text-align:left}
.sw{display:inline-block;width:16px;height:16px;border:1px solid #555;vertical-align:middle;margin-right:6px}
.nodata{background:repeating-linear-gradient(45deg,#fff 0 3px,#999 3px 5px)}
.figs{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}figure{margin:0;flex:1 1 360px;max-width:640px}
figure img{width:100%;image-rendering:pixelated;border:1px solid #ccc;
background:repeating-conic-gradient(#eee 0 25%,#fff 0 50%) 0 0/16px 16px}
figcaption{font-size:.9em;color:#555}ul.legend{list-style:none;padding:0;columns:2 16em;font-size:1.05em}
ul.legend li{margin:4px 0}pre{background:#f7f7f7;padding:8px;overflow:auto}ul.prompts{margin:0;padding-left:1.2em}
.note{font-size:.9em;color:#555}"""


# ----------------------------------------------------------------------------- number formats
def format_count(n: float) -> str:
    """``1234567`` -> ``"1,234,567"``."""
    return f"{round(float(n)):,}"


def format_area(m2: float) -> str:
    """An area for people: km² from 1 km², ha from 1 ha, else m² (thousands separators).

    ``12_345_678`` -> ``"12.35 km²"``, ``45_600`` -> ``"4.56 ha"``, ``1234.4`` -> ``"1,234 m²"``.
    """
    m2 = float(m2)
    if abs(m2) >= 1e6:
        return f"{m2 / 1e6:,.2f} km²"
    if abs(m2) >= 1e4:
        return f"{m2 / 1e4:,.2f} ha"
    return f"{m2:,.0f} m²" if abs(m2) >= 10 or m2 == 0 else f"{m2:,.1f} m²"


def format_percent(fraction: float) -> str:
    """``0.1234`` -> ``"12.34 %"``."""
    return f"{100 * float(fraction):.2f} %"


def _readable(key: str) -> str:
    return key.replace("_", " ").strip().capitalize() or key


def timing_label(key: str) -> tuple[str, str]:
    """(label, unit) of a timing key: :data:`TIMING_LABELS`, else ``foo_bar_s`` -> ("Foo bar", "s")."""
    if key in TIMING_LABELS:
        return TIMING_LABELS[key]
    if key.endswith("_per_s"):
        return "Throughput", key.removesuffix("_per_s").replace("_", " ") + "/s"
    if key.endswith("_s"):
        return _readable(key.removesuffix("_s")), "s"
    return _readable(key), ""


def _fmt_timing(value: Any, unit: str) -> str:
    if not isinstance(value, (int, float)):
        return _fmt(value)
    if unit == "s":
        return f"{value:,.2f} s"
    if unit == "row":
        return format_count(value)
    return f"{value:,.2f} {unit}".rstrip()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    return str(v)


def _esc(v: Any) -> str:
    return html.escape(str(v))


# ----------------------------------------------------------------------------- HTML parts
def _swatch(color: Sequence[int] | None) -> str:
    if color is None:
        return "<span class='sw nodata' title='nodata (transparent)'></span>"
    r, g, b = (int(c) for c in list(color)[:3])
    return f"<span class=sw style='background:rgb({r},{g},{b})' title='rgb({r}, {g}, {b})'></span>"


def _kv_table(items: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> str:
    labels = labels or {}
    rows = "".join(f"<tr><th class=l>{_esc(labels.get(k, _readable(str(k))))}</th><td class=l>{_esc(_fmt(v))}</td></tr>"
                   for k, v in items.items())
    return f"<table>{rows}</table>"


def _img(data: bytes, alt: str) -> str:
    """An embedded image (PNG or WebP, told by its signature)."""
    mime = "image/webp" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else "image/png"
    return f"<img alt='{_esc(alt)}' src='data:{mime};base64,{base64.b64encode(data).decode('ascii')}'>"


def _figures(preview_png: bytes, thumbnail: bytes | None, thumbnail_caption: str) -> str:
    labels = f"<figure>{_img(preview_png, 'labels preview')}<figcaption>Labels</figcaption></figure>"
    if thumbnail is None:
        return f"<div class=figs>{labels}</div>"
    optical = (f"<figure>{_img(thumbnail, 'input image')}"
               f"<figcaption>{_esc(thumbnail_caption)}</figcaption></figure>")
    return f"<div class=figs>{optical}{labels}</div>"


def _legend(table: Sequence[Mapping[str, Any]], nodata_pixels: int) -> str:
    items = [f"<li>{_swatch(c['color'])}<b>{_esc(c['name'])}</b> &nbsp;{format_percent(c['fraction'])}</li>"
             for c in table]
    if nodata_pixels:
        items.append(f"<li>{_swatch(None)}<b>nodata</b> &nbsp;(transparent)</li>")
    return f"<h2>Legend</h2><ul class=legend id=legend>{''.join(items)}</ul>"


def _class_table(table: Sequence[Mapping[str, Any]], nodata: tuple[int, float] | None) -> str:
    head = ("<tr><th class=l>colour</th><th>id</th><th class=l>class</th><th>pixels</th><th>area</th>"
            "<th>area (m²)</th><th>share of valid area</th></tr>")
    rows = [f"<tr><td class=l>{_swatch(c['color'])}</td><td>{_esc(c['id'])}</td><td class=l>{_esc(c['name'])}</td>"
            f"<td>{format_count(c['pixels'])}</td><td>{format_area(c['area_m2'])}</td>"
            f"<td>{format_count(c['area_m2'])}</td><td>{format_percent(c['fraction'])}</td></tr>" for c in table]
    if nodata is not None:
        px, area = nodata
        rows.append(f"<tr class=nodata-row><td class=l>{_swatch(None)}</td><td>255</td><td class=l>nodata</td>"
                    f"<td>{format_count(px)}</td><td>{format_area(area)}</td><td>{format_count(area)}</td>"
                    "<td>—</td></tr>")
    total_px = sum(int(c["pixels"]) for c in table) + (nodata[0] if nodata else 0)
    total_area = sum(float(c["area_m2"]) for c in table) + (nodata[1] if nodata else 0.0)
    rows.append(f"<tr><th class=l></th><th></th><th class=l>total</th><th>{format_count(total_px)}</th>"
                f"<th>{format_area(total_area)}</th><th>{format_count(total_area)}</th><th></th></tr>")
    return (f"<h2>Classes and areas</h2><table id=areas>{head}{''.join(rows)}</table>"
            "<p class=note>Areas are ground areas of the pixels (per row on geographic grids). Shares are of "
            "the valid (not nodata) area.</p>")


def _vocabulary(vocab: Sequence[Mapping[str, Any]] | None, expression: str | None) -> str:
    if expression:
        return f"<h2>Referring expression</h2><p id=expression>“{_esc(expression)}”</p>"
    if not vocab:
        return ""
    rows = []
    for v in vocab:
        syn = ", ".join(str(s) for s in v.get("synonyms") or []) or "—"
        prompts = "".join(f"<li>{_esc(p)}</li>" for p in v.get("prompts") or [])
        rows.append(f"<tr><td class=l>{_swatch(v.get('color'))}<b>{_esc(v.get('name', ''))}</b></td>"
                    f"<td class=l>{_esc(syn)}</td><td class=l><ul class=prompts>{prompts}</ul></td></tr>")
    return ("<h2>Vocabulary</h2><table id=vocabulary><tr><th class=l>class</th><th class=l>synonyms</th>"
            "<th class=l>prompts (their text embeddings are averaged per class)</th></tr>" + "".join(rows) + "</table>")


def _timings(timings: Mapping[str, Any]) -> str:
    rows = []
    for k, v in timings.items():
        label, unit = timing_label(str(k))
        rows.append(f"<tr><th class=l title='{_esc(k)}'>{_esc(label)}</th><td>{_esc(_fmt_timing(v, unit))}</td></tr>")
    return f"<h2>Timings</h2><table id=timings>{''.join(rows)}</table>"


def _fmt_input(key: str, value: Any) -> str:
    """One field of an input record: sizes in MB, modification times in UTC, the rest as is."""
    if key == "bytes" and isinstance(value, (int, float)):
        return f"size: {value / 1e6:,.2f} MB" if value >= 1e5 else f"size: {format_count(value)} bytes"
    if key == "mtime" and isinstance(value, (int, float)):
        import datetime as dt

        return "modified: " + dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{key if key == 'sha256' else _readable(key)}: {_fmt(value)}"


def _inputs(inputs: Mapping[str, Any]) -> str:
    rows = []
    for modality, rec in inputs.items():
        info = rec if isinstance(rec, Mapping) else {"path": rec}
        extra = "; ".join(_fmt_input(str(k), v) for k, v in info.items() if k != "path")
        rows.append(f"<tr><th class=l>{_esc(modality)}</th><td class=l>{_esc(info.get('path', ''))}</td>"
                    f"<td class=l>{_esc(extra)}</td></tr>")
    return f"<h2>Inputs</h2><table id=inputs>{''.join(rows)}</table>"


def render_report(*, title: str, preview_png: bytes, table: Sequence[Mapping[str, Any]],
                  timings: Mapping[str, Any], inputs: Mapping[str, Any], raster: Mapping[str, Any],
                  bundle_info: Mapping[str, Any] | None = None, nodata: tuple[int, float] | None = None,
                  vocabulary: Sequence[Mapping[str, Any]] | None = None, thumbnail: bytes | None = None,
                  thumbnail_caption: str = "Optical input", options: Mapping[str, Any] | None = None) -> str:
    """Self-contained HTML report (see the module docstring). ``table``: classes.json rows
    (``id, name, color, pixels, area_m2, fraction``); ``nodata``: (pixels, area m²) of the nodata
    row; ``inputs``: per modality a path or a record with ``"path"``; ``bundle_info["expression"]``
    (referring runs) is shown as the referring expression."""
    expression = (bundle_info or {}).get("expression")
    bundle = (f"<h2>Model bundle</h2><pre>{_esc(json.dumps(bundle_info, indent=2, default=str))}</pre>"
              if bundle_info else "")
    opts = f"<h2>Run options</h2>{_kv_table(options)}" if options else ""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>"
            f"{_figures(preview_png, thumbnail, thumbnail_caption)}"
            f"{_legend(table, nodata[0] if nodata else 0)}{_class_table(table, nodata)}"
            f"{_vocabulary(vocabulary, str(expression) if expression else None)}"
            f"{_inputs(inputs)}<h2>Raster</h2>{_kv_table(raster, RASTER_LABELS)}{opts}{_timings(timings)}{bundle}"
            f"<p><small>generated {_esc(utc_now())} by rsvl_runtime</small></p></body></html>\n")


# ----------------------------------------------------------------------------- the optical thumbnail
def _display_bands(spec: Mapping[str, Any] | None, n: int) -> list[int]:
    """0-based positions (in the bundle's band order) shown as R, G, B: the bands named red, green
    and blue when the bundle names them, else the first three (one band: grey)."""
    names = [str(b).lower() for b in (spec or {}).get("bands", [])][:n]
    if all(c in names for c in ("red", "green", "blue")):
        return [names.index(c) for c in ("red", "green", "blue")]
    return list(range(min(n, 3))) if n >= 3 else [0]


def stretch_for_display(values: np.ndarray, valid: np.ndarray,
                        percentiles: tuple[float, float] = THUMBNAIL_STRETCH) -> np.ndarray:
    """``[C, H, W]`` values -> uint8 ``[C, H, W]``: each band's ``percentiles`` of the valid pixels
    mapped to 0..255 (clipped). A band with no spread maps to mid-grey."""
    out = np.zeros(values.shape, np.uint8)
    for i, band in enumerate(values.astype(np.float64)):
        px = band[valid & np.isfinite(band)]
        if px.size == 0:
            continue
        lo, hi = np.percentile(px, percentiles)
        if hi <= lo:
            out[i] = 128
            continue
        out[i] = np.clip(np.nan_to_num((band - lo) / (hi - lo) * 255.0), 0, 255).round().astype(np.uint8)
    return out


@functools.cache
def _has_webp() -> bool:
    from PIL import features

    return bool(features.check("webp"))


def optical_thumbnail(path: PathLike, bands: Sequence[int], nodata: float | None,
                      spec: Mapping[str, Any] | None = None, max_size: int = THUMBNAIL_PX,
                      values: np.ndarray | None = None) -> bytes:
    """An RGBA image of the input (WebP, :data:`THUMBNAIL_WEBP_QUALITY`; PNG without WebP): a
    decimated read (nearest, overviews used) at most ``max_size`` px on the long side,
    percentile-stretched (:func:`stretch_for_display`), nodata transparent.
    ``bands``: the 1-based raster bands in the bundle's order (``ModalityInput.bands``).
    ``values``: that decimated read, already made (the scene runner gathers it while reading)."""
    from rasterio.enums import Resampling

    from .raster_io import open_raster, scaled_shape, valid_mask

    if values is None:
        with open_raster(path) as ds:
            shape = scaled_shape(ds.height, ds.width, max_size)
            values = ds.read(indexes=list(bands), out_shape=(len(bands), *shape), resampling=Resampling.nearest)
    valid = valid_mask(values, nodata)
    rgb = stretch_for_display(values[_display_bands(spec, len(bands))], valid)
    if rgb.shape[0] == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    rgba = np.concatenate([rgb, (valid * 255).astype(np.uint8)[None]], axis=0).transpose(1, 2, 0)
    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(rgba), "RGBA")
    if _has_webp():
        img.save(buf, format="WEBP", quality=THUMBNAIL_WEBP_QUALITY, method=0)
    else:  # pragma: no cover - Pillow wheels ship libwebp
        img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def input_thumbnail(sources: Sources, values: np.ndarray | None = None) -> tuple[bytes | None, str]:
    """The report's thumbnail of the input (optical; SAR in grey when there is no optical input)
    as image bytes (:func:`optical_thumbnail`), and its caption; ``values``: the decimated read
    gathered while the scene was read (:class:`~rsvl_runtime.reading.Decimated`), else the input
    is read again. (None, "") when it cannot be made (logged: the report is still written)."""
    src = sources.optical or sources.sar
    if src is None:
        return None, ""
    spec = sources.optical_spec if src is sources.optical else sources.sar_spec
    try:
        image = optical_thumbnail(src.path, src.bands, src.nodata, spec, values=values)
    except Exception as e:  # noqa: BLE001 - a display nicety must never fail the run
        log.warning("report: no input thumbnail of %s (%s)", src.path, e)
        return None, ""
    lo, hi = THUMBNAIL_STRETCH
    what = "Optical input" if src is sources.optical else "SAR input"
    return image, f"{what} (bands {', '.join(map(str, src.bands))}; display stretch p{lo:g}–p{hi:g}; nodata transparent)"


def _run_options(run: FinishedRun) -> dict[str, Any]:
    """The options of a run that change its result, for the report."""
    o, i = run.options, run.options.inputs
    shown: dict[str, Any] = {
        "score threshold (unclassified below)": o.min_score, "optical scale": i.scale, "optical offset": i.offset,
        "input stretch (percentiles)": i.stretch, "sensor preset": i.sensor, "SAR units": i.sar_units,
        "nodata override": i.nodata, "polygons": o.vector,
        "minimum polygon area": format_area(o.min_area_m2) if o.vector and o.min_area_m2 else None,
        "polygon simplification (CRS units)": o.simplify if o.vector else None,
    }
    return {k: v for k, v in shown.items() if v is not None}


def write_report(path: PathLike, run: FinishedRun, preview_png: bytes,
                 thumbnail: tuple[bytes | None, str] | None = None) -> None:
    """The report of a finished run (:func:`render_report`), written atomically to ``path``;
    ``thumbnail``: :func:`input_thumbnail` made already (the scene runner encodes it beside the
    preview), else made here."""
    thumb, caption = thumbnail if thumbnail is not None else input_thumbnail(run.sources, run.thumbnail)
    stats = run.stats
    nodata = (int(stats.nodata_pixels), float(stats.nodata_area_m2)) if stats is not None else None
    atomic_write_text(path, render_report(
        title=run.title, preview_png=preview_png, table=run.class_table, timings=run.timings,
        inputs=run.inputs, raster=run.raster, bundle_info=run.bundle_info, nodata=nodata,
        vocabulary=run.vocabulary, thumbnail=thumb, thumbnail_caption=caption, options=_run_options(run)))
