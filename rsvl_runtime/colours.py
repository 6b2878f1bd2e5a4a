"""Class colours: the palette of a vocabulary and the colour of nodata.

:func:`default_colors` gives ``n`` distinguishable colours; :func:`palette_lut` turns a class
palette into a 256-entry lookup table (class id -> RGB, 255 = nodata) for previews.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np

from .outputs import LABEL_NODATA

Color = tuple[int, int, int]

NODATA_COLOR: Color = (0, 0, 0)


def default_colors(n: int) -> list[Color]:
    """``n`` distinguishable colours (golden-angle hues)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out



def palette_lut(colors: Sequence[Sequence[int]]) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    for i, c in enumerate(colors[:255]):
        lut[i] = [int(v) for v in c[:3]]
    lut[LABEL_NODATA] = NODATA_COLOR
    return lut
