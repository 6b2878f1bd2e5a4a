"""``preview.png``: the labels raster colour-mapped at most 1024 px on the long side, with a
legend strip below it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling

from .colours import NODATA_COLOR, palette_lut
from .files import atomic_open
from .outputs import LABEL_NODATA, file_mode

PathLike = str | os.PathLike[str]


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

    rgb = palette_lut(colors)[labels]
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
    with atomic_open(out_path, "wb") as f:
        f.write(data)
    os.chmod(out_path, file_mode())
    return data

