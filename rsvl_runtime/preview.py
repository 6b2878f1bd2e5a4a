"""``preview.png``: the labels raster colour-mapped at most 1024 px on the long side, with a
legend strip below it. A palette PNG (the label ids are its indices, with per-entry alpha): nodata
pixels are transparent (alpha 0) and drawn in the legend as a hatched swatch; the legend lists
every label id of the palette ("unclassified" included).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import rasterio
from PIL import Image, ImageDraw, ImageFont
from rasterio.enums import Resampling

from .colours import palette_lut
from .files import atomic_open
from .outputs import LABEL_NODATA, file_mode
from .raster_io import scaled_shape

PathLike = str | os.PathLike[str]

# Pillow's image plugins (PNG among them) registered at import: otherwise the first save of a
# run imports them, 20-25 ms of every run's fixed cost after the tile loop (and the legend's
# ImageDraw/ImageFont another 6-13 ms), paid once per process instead
Image.preinit()

#: zlib level of the run's PNGs (preview.png, the report's input thumbnail). Measured on a
#: 1024 px preview: level 3 55 ms / 285 KB, Pillow's default 6 110 ms / 228 KB, 1 64 ms / 406 KB;
#: the two PNGs are a fixed cost of every run, a few percent of a 2048 px scene's.
PNG_COMPRESS_LEVEL = 3


def read_label_thumbnail(path: PathLike, max_size: int = 1024) -> np.ndarray:
    """Band 1 of a raster at most ``max_size`` px on the long side (nearest; uses overviews)."""
    with rasterio.open(path) as ds:
        shape = scaled_shape(ds.height, ds.width, max_size)
        if shape == ds.shape:
            return ds.read(1)
        return ds.read(1, out_shape=shape, resampling=Resampling.nearest)


#: Grey levels of the legend strip (text, swatch outlines, the nodata hatch, the background):
#: palette entries :data:`LEGEND_FIRST` onwards. Antialiased text is mapped to the nearest.
LEGEND_GREYS = (0, 60, 90, 120, 150, 190, 225, 255)
#: First palette entry of the legend greys: label ids below it keep their own entries.
LEGEND_FIRST = 246


def render_preview(labels: np.ndarray, colors: Sequence[Sequence[int]], class_names: Sequence[str],
                   fractions: Sequence[float] | None = None) -> Any:
    """Colour-map ``labels [h, w]`` (nodata transparent) and add a legend strip below it; returns
    a Pillow image in palette mode ("P" with per-entry alpha: the label ids are the palette
    indices, so the map needs no colour lookup and the PNG holds one byte per pixel: 15 vs 51 ms
    and 219 vs 331 KB for a 1024 px preview than RGBA), or RGBA when the ids leave no room for the
    legend's greys (more than :data:`LEGEND_FIRST` of them)."""
    lut = palette_lut(colors)
    entries = [f"{n}" + (f"  {100 * fractions[i]:.1f}%" if fractions is not None else "")
               for i, n in enumerate(class_names)]
    if np.any(labels == LABEL_NODATA):
        entries.append("nodata")
    h, w = labels.shape
    width = max(w, 320)
    col_w, row_h = 200, 18
    cols = max(1, width // col_w)
    legend_h = 8 + row_h * (-(-len(entries) // cols))
    # the legend drawn in grey levels ("L": antialiased text), the swatches' colours added below
    legend = Image.new("L", (width, legend_h), 255)
    draw = ImageDraw.Draw(legend)
    font = ImageFont.load_default()
    swatches = []
    for i, text in enumerate(entries):
        x = 6 + (i % cols) * col_w
        y = 6 + (i // cols) * row_h
        draw.rectangle([x, y, x + 12, y + 12], fill=255, outline=60)
        if i < len(class_names):
            swatches.append((i, (x + 1, y + 1, x + 12, y + 12)))
        else:  # nodata: transparent in the map, a hatched swatch here
            for d in range(-12, 13, 4):
                draw.line([(x + max(0, d), y + max(0, -d)), (x + min(12, 12 + d), y + min(12, 12 - d))], fill=120)
        draw.text((x + 18, y), text, fill=0, font=font)
    greys = np.asarray(LEGEND_GREYS)
    grey_of = np.abs(np.arange(256)[:, None] - greys[None, :]).argmin(axis=1)  # L value -> nearest grey
    if len(colors) > LEGEND_FIRST:  # no room in the palette: RGBA
        strip = np.asarray(legend)
        rgba = np.zeros((h + legend_h, width, 4), np.uint8)
        rgba[:h, :w] = lut[labels]
        rgba[h:, :, :3] = greys[grey_of[strip]][..., None].astype(np.uint8)
        rgba[h:, :, 3] = 255
        for i, (x0, y0, x1, y1) in swatches:
            rgba[h + y0:h + y1, x0:x1] = lut[i]
        return Image.fromarray(rgba, "RGBA")
    index = np.full((h + legend_h, width), LABEL_NODATA, np.uint8)  # beside a narrow map: transparent
    index[:h, :w] = labels
    index[h:] = (LEGEND_FIRST + grey_of[np.asarray(legend)]).astype(np.uint8)
    for i, (x0, y0, x1, y1) in swatches:
        index[h + y0:h + y1, x0:x1] = i
    palette = lut.copy()
    palette[LEGEND_FIRST:LEGEND_FIRST + len(greys), :3] = greys[:, None]
    palette[LEGEND_FIRST:LEGEND_FIRST + len(greys), 3] = 255
    img = Image.fromarray(index, "P")
    img.putpalette(palette[:, :3].tobytes())
    img.info["transparency"] = palette[:, 3].tobytes()
    return img


def write_preview(labels_path: PathLike, out_path: PathLike, colors: Sequence[Sequence[int]],
                  class_names: Sequence[str], fractions: Sequence[float] | None = None,
                  max_size: int = 1024) -> bytes:
    """Render the preview of a labels raster and write it as PNG (atomically); returns the PNG bytes."""
    img = render_preview(read_label_thumbnail(labels_path, max_size), colors, class_names, fractions)
    buf = io.BytesIO()
    # no optimize=True: twice the encode for ~nothing; a palette image's alpha (info["transparency"]) is saved
    img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    data = buf.getvalue()
    with atomic_open(out_path, "wb") as f:
        f.write(data)
    os.chmod(out_path, file_mode())
    return data

