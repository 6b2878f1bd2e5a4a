"""``preview.png``: the labels raster colour-mapped at most 1024 px on the long side, with a
legend strip below it. RGBA: nodata pixels are transparent (alpha 0) and drawn in the legend as
a hatched swatch; the legend lists every label id of the palette ("unclassified" included).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling

from .colours import palette_lut
from .files import atomic_open
from .outputs import LABEL_NODATA, file_mode
from .raster_io import scaled_shape

PathLike = str | os.PathLike[str]

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


def render_preview(labels: np.ndarray, colors: Sequence[Sequence[int]], class_names: Sequence[str],
                   fractions: Sequence[float] | None = None) -> Any:
    """Colour-map ``labels [h, w]`` (nodata transparent) and add a legend strip below it; returns
    a Pillow RGBA image."""
    from PIL import Image, ImageDraw, ImageFont

    rgba = palette_lut(colors)[labels]
    img = Image.fromarray(rgba, "RGBA")
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
    canvas = Image.new("RGBA", (width, img.height + legend_h), (0, 0, 0, 0))
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, img.height, width - 1, img.height + legend_h - 1], fill=(255, 255, 255, 255))
    for i, text in enumerate(entries):
        x = 6 + (i % cols) * col_w
        y = img.height + 6 + (i // cols) * row_h
        if i < len(class_names):
            draw.rectangle([x, y, x + 12, y + 12], fill=(*(int(v) for v in colors[i][:3]), 255),
                           outline=(60, 60, 60, 255))
        else:  # nodata: transparent in the map, a hatched swatch here
            draw.rectangle([x, y, x + 12, y + 12], fill=(255, 255, 255, 255), outline=(60, 60, 60, 255))
            for d in range(-12, 13, 4):
                draw.line([(x + max(0, d), y + max(0, -d)), (x + min(12, 12 + d), y + min(12, 12 - d))],
                          fill=(120, 120, 120, 255))
        draw.text((x + 18, y), text, fill=(0, 0, 0, 255), font=font)
    return canvas


def write_preview(labels_path: PathLike, out_path: PathLike, colors: Sequence[Sequence[int]],
                  class_names: Sequence[str], fractions: Sequence[float] | None = None,
                  max_size: int = 1024) -> bytes:
    """Render the preview of a labels raster and write it as PNG (atomically); returns the PNG bytes."""
    img = render_preview(read_label_thumbnail(labels_path, max_size), colors, class_names, fractions)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)  # no optimize=True: twice the encode for ~nothing
    data = buf.getvalue()
    with atomic_open(out_path, "wb") as f:
        f.write(data)
    os.chmod(out_path, file_mode())
    return data

