"""Writers of the output folder of a scene: rasters, class table, preview, report, done marker.

Folder layout (semantic task)::

    labels.tif     uint8 class ids, nodata 255, input CRS/transform, 512x512 tiles, deflate,
                   internal overviews (mode) — cloud-optimised (GDAL COG driver when available)
    scores.tif     one band per class: probability * 255 as uint8 (valid pixels 1..255,
                   nodata 0), band descriptions = class names, overviews (average)
    classes.json   per class: id, name, color, pixels, area_m2, fraction (of the valid area)
    preview.png    colour-mapped labels (<= 1024 px on the long side) + legend strip
    report.html    self-contained report (preview embedded as base64)
    done.json      written LAST: timings, inputs, outputs and their sizes

The referring task writes ``mask.tif`` (uint8 0/1, nodata 255) instead of labels/scores.

Atomicity: a run writes into a temporary sibling folder (:mod:`rsvl_runtime.transaction`);
there every file is written under a temporary name (``.<name>.<random>.tmp``) and renamed with
``os.replace`` when all of them are ready (:class:`OutputStage`), ``done.json`` is written after
the renames, and the folder then replaces the output folder in one step. A previous complete
result stays untouched until then; :func:`is_complete` tells a finished folder from any other.
"""

from __future__ import annotations

import base64
import colorsys
import datetime as _dt
import html
import io
import json
import os
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.windows import Window

from .files import atomic_open, atomic_write_text
from .transaction import DISK_RESERVE_BYTES, disk_full, no_space_error

PathLike = str | os.PathLike[str]
Color = tuple[int, int, int]

LABELS = "labels.tif"
SCORES = "scores.tif"
MASK = "mask.tif"
CLASSES = "classes.json"
PREVIEW = "preview.png"
REPORT = "report.html"
DONE = "done.json"
DONE_FORMAT = "rsvl-outputs/1"

LABEL_NODATA = 255
SCORE_NODATA = 0
BLOCK = 512
NODATA_COLOR: Color = (0, 0, 0)


# ----------------------------------------------------------------------------- atomic staging
def temp_path(final: PathLike) -> Path:
    """A fresh, unused temporary name next to ``final`` (hidden, ``.tmp`` suffix)."""
    final = Path(final)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def file_mode() -> int:
    """Permissions of a normally created file (``0o666 & ~umask``); temporary files from
    ``mkstemp`` are 0600 and get these before their final rename."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


class OutputStage:
    """Temporary files of an output folder, renamed to their final names together.

    ``stage.temp("labels.tif")`` reserves a temporary file; :meth:`commit` renames all of them
    (``os.replace``), :meth:`discard` deletes them (interrupted run: nothing final-named appears).
    """

    def __init__(self, out_dir: PathLike) -> None:
        self.out_dir = Path(out_dir)
        self._files: dict[str, Path] = {}

    def temp(self, name: str) -> Path:
        """Temporary path standing for the final file ``name``."""
        if name in self._files:
            raise ValueError(f"{name} is already staged")
        self._files[name] = temp_path(self.out_dir / name)
        return self._files[name]

    def path(self, name: str) -> Path:
        """Temporary path of the staged file ``name``."""
        return self._files[name]

    def adopt(self, name: str, path: PathLike) -> Path:
        """Stage an existing temporary file (a checkpointed raster of a resumed run)."""
        if name in self._files:
            raise ValueError(f"{name} is already staged")
        self._files[name] = Path(path)
        return self._files[name]

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def commit(self) -> dict[str, Path]:
        """Rename every staged file to its final name; returns name -> final path."""
        done = {}
        mode = file_mode()
        for name, tmp in list(self._files.items()):
            final = self.out_dir / name
            os.chmod(tmp, mode)
            os.replace(tmp, final)
            done[name] = final
            del self._files[name]
        return done

    def discard(self) -> None:
        """Delete every staged temporary file (and GDAL side-cars of it)."""
        for tmp in self._files.values():
            for p in (tmp, Path(f"{tmp}.aux.xml"), Path(f"{tmp}.ovr")):
                p.unlink(missing_ok=True)
        self._files.clear()


# ----------------------------------------------------------------------------- GeoTIFF rows writer
def overview_factors(width: int, height: int, min_size: int = 256) -> list[int]:
    """Overview decimation factors 2, 4, ... until the long side drops to ``min_size`` (at least [2])."""
    factors = [2]
    while -(-max(width, height) // factors[-1]) > min_size:
        factors.append(factors[-1] * 2)
    return factors


def cog_available() -> bool:
    """Whether rasterio's GDAL has the COG driver."""
    with rasterio.Env() as env:
        return "COG" in env.drivers()


class GeoTiffRowWriter:
    """Writes a uint8 GeoTIFF top to bottom, in windows aligned to the 512-row tile blocks.

    Rows arrive in order through :meth:`write` (``[count, n, width]``); they are buffered up to one
    block row (``count x 512 x width`` bytes) and written window by window, so each compressed
    tile is written once. ``zlevel``: deflate level (1 is ~9x faster than 6 for ~15 % more
    bytes; the runner uses it for the K-band scores). :meth:`close` builds internal overviews and, when ``cog`` and the COG
    driver is available, rewrites the file as a Cloud Optimized GeoTIFF (same temporary path).

    :meth:`checkpoint` makes the rows written so far durable (a valid TIFF on disk) and returns
    the crc32 of the rows of the open block row; ``resume=(rows, crc)`` reopens such a file and
    continues after its first ``rows`` rows (ValueError when the file does not match). A flush
    that leaves the disk full raises :class:`~rsvl_runtime.transaction.OutputError` at once.
    """

    def __init__(self, path: PathLike, *, width: int, height: int, count: int, crs: Any,
                 transform: Any, nodata: float | None, descriptions: Sequence[str] | None = None,
                 overview_resampling: Resampling = Resampling.mode, cog: bool | None = None,
                 block: int = BLOCK, zlevel: int = 6, resume: tuple[int, int] | None = None) -> None:
        self.path = Path(path)
        self.width, self.height, self.count, self.block = width, height, count, block
        self.overview_resampling = overview_resampling
        self.cog = cog_available() if cog is None else (cog and cog_available())
        self.nodata = nodata
        self._profile = {"driver": "GTiff", "width": width, "height": height, "count": count,
                         "dtype": "uint8", "crs": crs, "transform": transform, "nodata": nodata,
                         "tiled": True, "blockxsize": block, "blockysize": block,
                         "compress": "deflate", "zlevel": zlevel, "BIGTIFF": "IF_SAFER",
                         "NUM_THREADS": "ALL_CPUS"}
        self.zlevel = zlevel
        self._buf = np.empty((count, min(block, height), width), np.uint8)
        self._buf_y0 = 0  # scene row of self._buf[:, 0]
        self._filled = 0
        self.rows_written = 0
        if resume is not None:
            self._reopen(*resume)
            return
        self._ds = rasterio.open(self.path, "w", **self._profile)
        if descriptions:
            for i, d in enumerate(descriptions, start=1):
                self._ds.set_band_description(i, str(d))

    def _reopen(self, rows: int, crc: int) -> None:
        self._ds = rasterio.open(self.path, "r+", NUM_THREADS="ALL_CPUS")
        if (self._ds.width, self._ds.height, self._ds.count) != (self.width, self.height, self.count):
            self._ds.close()
            raise ValueError(f"{self.path}: checkpointed raster has another shape")
        self._buf_y0 = rows // self.block * self.block
        self._filled = rows - self._buf_y0
        self.rows_written = self._buf_y0
        if self._filled:
            self._buf[:, :self._filled] = self._ds.read(window=Window(0, self._buf_y0, self.width, self._filled))
        if self._crc() != crc:
            self._ds.close()
            raise ValueError(f"{self.path}: checkpointed rows do not match their checksum")

    def _crc(self) -> int:
        return zlib.crc32(np.ascontiguousarray(self._buf[:, :self._filled]).tobytes())

    def checkpoint(self) -> int:
        """Write the buffered rows (also a partial block row, kept in the buffer), close and
        reopen the file so that it is a valid TIFF on disk; returns the crc32 of the buffer."""
        if self._filled:
            self._write(self._filled)
        self._ds.close()
        self._check_space()
        self._ds = rasterio.open(self.path, "r+", NUM_THREADS="ALL_CPUS")
        return self._crc()

    def _write(self, n: int) -> None:
        self._ds.write(self._buf[:, :n], window=Window(0, self._buf_y0, self.width, n))
        self._check_space()

    def _check_space(self) -> None:
        if disk_full(self.path.parent):
            raise no_space_error(self.path.parent, OSError(f"less than {DISK_RESERVE_BYTES >> 20} MiB free"))

    def write(self, rows: np.ndarray) -> None:
        """Append the next rows ``[count, n, width]`` (or ``[n, width]`` for one band)."""
        if rows.ndim == 2:
            rows = rows[None]
        if rows.shape[0] != self.count or rows.shape[2] != self.width:
            raise ValueError(f"rows of shape {rows.shape} do not fit {self.count} x ? x {self.width}")
        i = 0
        while i < rows.shape[1]:
            n = min(self._buf.shape[1] - self._filled, rows.shape[1] - i)
            self._buf[:, self._filled:self._filled + n] = rows[:, i:i + n]
            self._filled += n
            i += n
            if self._filled == self._buf.shape[1] or self._buf_y0 + self._filled == self.height:
                self._flush()

    def _flush(self) -> None:
        if self._filled == 0:
            return
        if self._buf_y0 + self._filled > self.height:
            raise ValueError(f"more rows written than the raster's height {self.height}")
        self._write(self._filled)
        self._buf_y0 += self._filled
        self.rows_written = self._buf_y0
        self._filled = 0

    def close(self) -> Path:
        """Flush, build overviews (and COG layout); the file stays at its temporary path."""
        self._flush()
        if self.rows_written != self.height:
            self.abort()
            raise RuntimeError(f"{self.path}: only {self.rows_written} of {self.height} rows written")
        self._ds.close()
        factors = overview_factors(self.width, self.height)
        with rasterio.open(self.path, "r+") as ds:
            ds.build_overviews(factors, self.overview_resampling)
            ds.update_tags(ns="rio_overview", resampling=self.overview_resampling.name)
        if self.cog:
            self._to_cog()
        self._buf = np.empty((0, 0, 0), np.uint8)
        return self.path

    def _to_cog(self) -> None:
        tmp = temp_path(self.path)
        try:
            rasterio.shutil.copy(self.path, tmp, driver="COG", COMPRESS="DEFLATE", LEVEL=self.zlevel,
                                 BLOCKSIZE=self.block,
                                 OVERVIEWS="FORCE_USE_EXISTING", BIGTIFF="IF_SAFER",
                                 NUM_THREADS="ALL_CPUS",
                                 OVERVIEW_RESAMPLING=self.overview_resampling.name.upper())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def abort(self) -> None:
        """Close without finishing (the caller discards the temporary file)."""
        if not self._ds.closed:
            self._ds.close()


#: Fraction of the raw (uncompressed) output bytes taken as a floor of what a run writes:
#: deflate-compressed labels/scores are rarely smaller (see :func:`estimate_output_bytes`).
ESTIMATE_FRACTION = 0.05


def estimate_output_bytes(width: int, height: int, bands: int) -> int:
    """A floor of the bytes the output rasters of a run need (uint8 ``bands`` x ``width`` x
    ``height`` at :data:`ESTIMATE_FRACTION` of their raw size, plus 1 MB for overviews and the
    small files): a destination with less free space cannot hold the result."""
    return int(width * height * bands * ESTIMATE_FRACTION) + (1 << 20)


# ----------------------------------------------------------------------------- class statistics
def default_colors(n: int) -> list[Color]:
    """``n`` distinguishable colours (golden-angle hues)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


@dataclass
class ClassStats:
    """Running pixel counts and ground areas per class id (255 = nodata)."""

    n_classes: int
    pixels: np.ndarray = field(init=False)
    area_m2: np.ndarray = field(init=False)
    nodata_pixels: int = 0
    nodata_area_m2: float = 0.0

    def __post_init__(self) -> None:
        self.pixels = np.zeros(self.n_classes, np.int64)
        self.area_m2 = np.zeros(self.n_classes, np.float64)

    def update(self, labels: np.ndarray, row_areas: np.ndarray) -> None:
        """Add ``labels [n, W]`` (uint8) whose rows have per-pixel areas ``row_areas [n]`` m²."""
        flat = labels.ravel()
        weights = np.repeat(np.asarray(row_areas, np.float64), labels.shape[1])
        counts = np.bincount(flat, minlength=256)
        areas = np.bincount(flat, weights=weights, minlength=256)
        self.pixels += counts[:self.n_classes]
        self.area_m2 += areas[:self.n_classes]
        self.nodata_pixels += int(counts[LABEL_NODATA])
        self.nodata_area_m2 += float(areas[LABEL_NODATA])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state (floats round-trip exactly)."""
        return {"pixels": self.pixels.tolist(), "area_m2": self.area_m2.tolist(),
                "nodata_pixels": self.nodata_pixels, "nodata_area_m2": self.nodata_area_m2}

    @classmethod
    def from_dict(cls, n_classes: int, doc: Mapping[str, Any]) -> ClassStats:
        """Inverse of :meth:`to_dict` (ValueError when it does not fit ``n_classes``)."""
        st = cls(n_classes)
        st.pixels = np.asarray(doc["pixels"], np.int64)
        st.area_m2 = np.asarray(doc["area_m2"], np.float64)
        if st.pixels.shape != (n_classes,) or st.area_m2.shape != (n_classes,):
            raise ValueError("class statistics of another vocabulary size")
        st.nodata_pixels, st.nodata_area_m2 = int(doc["nodata_pixels"]), float(doc["nodata_area_m2"])
        return st

    @property
    def valid_area_m2(self) -> float:
        return float(self.area_m2.sum())

    def table(self, class_names: Sequence[str], colors: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
        """Per class: ``id, name, color, pixels, area_m2, fraction`` (fraction of the valid area)."""
        total = self.valid_area_m2
        return [{"id": i, "name": str(class_names[i]), "color": [int(c) for c in colors[i]],
                 "pixels": int(self.pixels[i]), "area_m2": float(self.area_m2[i]),
                 "fraction": float(self.area_m2[i] / total) if total > 0 else 0.0}
                for i in range(self.n_classes)]


def write_classes_json(path: PathLike, table: Sequence[Mapping[str, Any]], stats: ClassStats,
                       crs: str | None) -> None:
    """Write the class table (plus valid/nodata totals) as JSON, atomically."""
    doc = {"classes": list(table), "valid_pixels": int(stats.pixels.sum()),
           "valid_area_m2": stats.valid_area_m2, "nodata_pixels": stats.nodata_pixels,
           "nodata_area_m2": stats.nodata_area_m2, "crs": crs,
           "area_note": "areas in square metres (geographic CRS: per-row spherical approximation)"}
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


# ----------------------------------------------------------------------------- preview
def _palette(colors: Sequence[Sequence[int]]) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    for i, c in enumerate(colors[:255]):
        lut[i] = [int(v) for v in c[:3]]
    lut[LABEL_NODATA] = NODATA_COLOR
    return lut


def read_decimated(path: PathLike, max_size: int = 1024) -> np.ndarray:
    """Band 1 of a raster at most ``max_size`` px on the long side (nearest; uses overviews)."""
    with rasterio.open(path) as ds:
        scale = max(ds.width, ds.height) / max_size
        if scale <= 1:
            return ds.read(1)
        shape = (max(1, round(ds.height / scale)), max(1, round(ds.width / scale)))
        return ds.read(1, out_shape=shape, resampling=Resampling.nearest)


def render_preview(labels: np.ndarray, colors: Sequence[Sequence[int]], class_names: Sequence[str],
                   fractions: Sequence[float] | None = None) -> Any:
    """Colour-map ``labels [h, w]`` and add a legend strip below it; returns a Pillow RGB image."""
    from PIL import Image, ImageDraw, ImageFont

    rgb = _palette(colors)[labels]
    img = Image.fromarray(rgb, "RGB")
    font = ImageFont.load_default()
    entries = [f"{n}" + (f"  {100 * fractions[i]:.1f}%" if fractions is not None else "")
               for i, n in enumerate(class_names)]
    if np.any(labels == LABEL_NODATA):
        entries.append("nodata")
    width = max(img.width, 320)
    col_w = 200
    cols = max(1, width // col_w)
    row_h = 18
    legend_h = 8 + row_h * (-(-len(entries) // cols))
    canvas = Image.new("RGB", (width, img.height + legend_h), (255, 255, 255))
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(entries):
        x = 6 + (i % cols) * col_w
        y = img.height + 6 + (i // cols) * row_h
        color = tuple(int(v) for v in (colors[i][:3] if i < len(class_names) else NODATA_COLOR))
        draw.rectangle([x, y, x + 12, y + 12], fill=color, outline=(60, 60, 60))
        draw.text((x + 18, y), text, fill=(0, 0, 0), font=font)
    return canvas


def write_preview(labels_path: PathLike, out_path: PathLike, colors: Sequence[Sequence[int]],
                  class_names: Sequence[str], fractions: Sequence[float] | None = None,
                  max_size: int = 1024) -> bytes:
    """Render the preview of a labels raster and write it as PNG (atomically); returns the PNG bytes."""
    img = render_preview(read_decimated(labels_path, max_size), colors, class_names, fractions)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    data = buf.getvalue()
    _atomic_write_bytes(out_path, data)
    return data


def _atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)
    os.chmod(path, file_mode())


# ----------------------------------------------------------------------------- report
_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.sw{display:inline-block;width:14px;height:14px;
border:1px solid #555;vertical-align:middle}pre{background:#f7f7f7;padding:8px;overflow:auto}
img{max-width:100%;border:1px solid #ccc}"""


def _kv_table(items: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th class=l>{html.escape(str(k))}</th><td class=l>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in items.items())
    return f"<table>{rows}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    return str(v)


def render_report(*, title: str, preview_png: bytes, table: Sequence[Mapping[str, Any]],
                  timings: Mapping[str, Any], inputs: Mapping[str, Any], raster: Mapping[str, Any],
                  bundle_info: Mapping[str, Any] | None = None) -> str:
    """Self-contained HTML report: preview (base64), legend/area table, raster info, inputs,
    timings and bundle information."""
    b64 = base64.b64encode(preview_png).decode("ascii")
    rows = []
    for c in table:
        r, g, b = c["color"]
        rows.append(
            f"<tr><td class=l><span class=sw style='background:rgb({r},{g},{b})'></span></td>"
            f"<td>{c['id']}</td><td class=l>{html.escape(str(c['name']))}</td><td>{c['pixels']}</td>"
            f"<td>{c['area_m2']:.1f}</td><td>{c['area_m2'] / 1e6:.4f}</td><td>{100 * c['fraction']:.2f}%</td></tr>")
    classes = ("<table><tr><th class=l>colour</th><th>id</th><th class=l>class</th><th>pixels</th>"
               "<th>area m²</th><th>area km²</th><th>fraction</th></tr>" + "".join(rows) + "</table>")
    bundle = (f"<h2>Model bundle</h2><pre>{html.escape(json.dumps(bundle_info, indent=2, default=str))}</pre>"
              if bundle_info else "")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<img alt='preview' src='data:image/png;base64,{b64}'>"
            f"<h2>Classes</h2>{classes}<h2>Raster</h2>{_kv_table(raster)}"
            f"<h2>Inputs</h2>{_kv_table(inputs)}<h2>Timings</h2>{_kv_table(timings)}{bundle}"
            f"<p><small>generated {html.escape(_now())} by rsvl_runtime</small></p></body></html>\n")


def write_report(path: PathLike, **kwargs: Any) -> None:
    """:func:`render_report` written atomically to ``path``."""
    atomic_write_text(path, render_report(**kwargs))


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- done marker
def clear_done(out_dir: PathLike) -> None:
    """Remove the completion marker (marks a folder incomplete; runs no longer call this: they
    replace the whole folder when done)."""
    (Path(out_dir) / DONE).unlink(missing_ok=True)


def write_done(out_dir: PathLike, outputs: Mapping[str, PathLike], info: Mapping[str, Any]) -> Path:
    """Write ``done.json`` LAST: the outputs (name -> bytes) plus ``info`` (timings, inputs, ...)."""
    out_dir = Path(out_dir)
    doc = {"format": DONE_FORMAT, "complete": True, "finished_at": _now(),
           "outputs": {name: {"bytes": Path(p).stat().st_size} for name, p in outputs.items()},
           **dict(info)}
    path = out_dir / DONE
    atomic_write_text(path, json.dumps(doc, indent=2, default=str) + "\n")
    os.chmod(path, file_mode())
    return path


def is_complete(out_dir: PathLike) -> bool:
    """True when ``out_dir`` holds a finished run: a valid ``done.json`` whose listed outputs all
    exist with the recorded sizes."""
    path = Path(out_dir) / DONE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict) or doc.get("format") != DONE_FORMAT or doc.get("complete") is not True:
        return False
    outputs = doc.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return False
    for name, meta in outputs.items():
        f = Path(out_dir) / name
        try:
            if not f.is_file() or f.stat().st_size != int(meta["bytes"]):
                return False
        except (OSError, KeyError, TypeError, ValueError):
            return False
    return True
