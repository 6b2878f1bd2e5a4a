"""COCO segmentation decoding without pycocotools: polygons and (un)compressed RLE to masks.

RefCOCO-format datasets (RRSIS-D, RRSIS-HR) store each object's ``segmentation`` in
``instances.json`` the way COCO does; the reference loaders (``refer/refer.py`` of
Lsan2401/RMSIN and zxk688/CADFormer, ``REFER.getMask``) decode it with
``pycocotools.mask``. This module does the same with numpy only, so pycocotools (a compiled
package) is not a dependency:

- **polygons** ``[[x1, y1, x2, y2, ...], ...]`` (pixel coordinates, the usual RefCOCO case):
  a scan-line fill that samples the pixel centres. pycocotools scan-converts at 5x, so
  pixels whose centre lies within about a fifth of a pixel of the outline can differ
  (``tests/test_dataset_layouts.py`` bounds the difference); everything else agrees.
- **compressed RLE** ``{"size": [h, w], "counts": "<LEB128-like string>"}`` (pycocotools'
  ``rleToString`` / ``rleFrString`` encoding, column-major runs starting with zeros);
- **uncompressed RLE** ``{"size": [h, w], "counts": [n0, n1, ...]}``.

Several parts (several polygons, a list of RLEs) are united; the reference ``getMask`` sums
them and then keeps ``mask == 1``, which only differs where parts of one object overlap
(those pixels are object here, background there).

All functions are torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "decode_segmentation",
    "polygon_mask",
    "rle_counts_from_string",
    "rle_counts_to_string",
    "rle_decode",
    "rle_encode",
]


class SegmentationFormatError(ValueError):
    """A ``segmentation`` entry is neither polygons nor an RLE; the message says which format is expected."""


def rle_counts_from_string(s: str | bytes) -> list[int]:
    """Run lengths from pycocotools' compressed ``counts`` string (``rleFrString`` in maskApi.c)."""
    text = s.decode("ascii") if isinstance(s, bytes) else s
    counts: list[int] = []
    p = 0
    while p < len(text):
        x = 0
        k = 0
        more = True
        while more:
            if p >= len(text):
                raise SegmentationFormatError(f"RLE counts string ends inside a number: {text[:40]!r}...")
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_counts_to_string(counts: Sequence[int]) -> str:
    """pycocotools' compressed ``counts`` string for run lengths (``rleToString`` in maskApi.c)."""
    out: list[str] = []
    for i, n in enumerate(counts):
        x = int(n) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO RLE of a 2-D mask: ``{"size": [h, w], "counts": [...]}`` (column-major, zeros first)."""
    flat = (np.asarray(mask) > 0).ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        runs = [0, *runs]
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": [int(r) for r in runs]}


def rle_decode(rle: Mapping[str, Any]) -> np.ndarray:
    """A COCO RLE (compressed string or uncompressed list ``counts``) as a ``uint8`` ``[h, w]`` 0/1 mask."""
    try:
        h, w = (int(v) for v in rle["size"])
        raw = rle["counts"]
    except (KeyError, TypeError, ValueError) as e:
        raise SegmentationFormatError(
            f"RLE {str(dict(rle))[:80]!r} needs 'size': [h, w] and 'counts' (a string or a list of run lengths)"
        ) from e
    counts = rle_counts_from_string(raw) if isinstance(raw, (str, bytes)) else [int(c) for c in raw]
    if any(c < 0 for c in counts) or sum(counts) != h * w:
        raise SegmentationFormatError(
            f"RLE of size {h}x{w} has run lengths summing to {sum(counts)} (expected {h * w}, all >= 0); "
            "the annotation is corrupt or belongs to another image size"
        )
    values = np.zeros(len(counts), dtype=np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, counts)
    return flat.reshape((h, w), order="F")


def polygon_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Union of COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` as a ``uint8`` ``[height, width]`` 0/1 mask.

    COCO coordinates put pixel ``(c, r)`` at ``[c, c+1) x [r, r+1)``; a pixel is inside when
    its centre ``(c + 0.5, r + 0.5)`` is (even-odd rule, scan lines at the row centres, edges
    half-open), which is pycocotools' result up to pixels whose centre lies within about a
    fifth of a pixel of the outline (it scan-converts at 5x).
    """
    out = np.zeros((int(height), int(width)), dtype=np.uint8)
    for poly in polygons:
        coords = np.asarray([float(v) for v in poly], dtype=np.float64)
        if coords.size < 6 or coords.size % 2:
            raise SegmentationFormatError(
                f"polygon with {coords.size} coordinates; a COCO polygon is a flat list x1, y1, x2, y2, ... "
                "of at least 3 points"
            )
        _fill_polygon(out, coords[0::2], coords[1::2])
    return out


def _fill_polygon(out: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> None:
    h, w = out.shape
    x0, y0, x1, y1 = xs, ys, np.roll(xs, -1), np.roll(ys, -1)
    r_lo = max(0, int(np.floor(ys.min())))
    r_hi = min(h, int(np.ceil(ys.max())) + 1)
    for r in range(r_lo, r_hi):
        yc = r + 0.5
        cross = (y0 <= yc) != (y1 <= yc)
        if not cross.any():
            continue
        a0, b0, a1, b1 = x0[cross], y0[cross], x1[cross], y1[cross]
        xi = np.sort(a0 + (yc - b0) * (a1 - a0) / (b1 - b0))
        for left, right in zip(xi[0::2], xi[1::2]):
            c_lo = max(0, int(np.ceil(left - 0.5)))
            c_hi = min(w, int(np.ceil(right - 0.5)))
            if c_hi > c_lo:
                out[r, c_lo:c_hi] = 1


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, an RLE dict, or a list of RLE dicts) as a 0/1 ``uint8`` mask.

    ``height``/``width`` are the image's (from ``instances.json`` ``images``); an RLE whose
    ``size`` differs is refused.
    """
    parts: list[Any]
    if isinstance(segmentation, Mapping):
        parts = [segmentation]
    elif isinstance(segmentation, Sequence) and segmentation and all(isinstance(p, Mapping) for p in segmentation):
        parts = list(segmentation)
    elif isinstance(segmentation, Sequence) and segmentation and all(
        isinstance(p, Sequence) and not isinstance(p, (str, bytes)) for p in segmentation
    ):
        return polygon_mask(segmentation, height, width)
    else:
        raise SegmentationFormatError(
            f"segmentation {str(segmentation)[:60]!r} is neither a list of polygons [[x1, y1, ...], ...] nor an "
            "RLE {'size': [h, w], 'counts': ...}"
        )
    out = np.zeros((int(height), int(width)), dtype=np.uint8)
    for rle in parts:
        m = rle_decode(rle)
        if m.shape != out.shape:
            raise SegmentationFormatError(
                f"RLE size {list(m.shape)} differs from the image size [{height}, {width}]"
            )
        out |= m
    return out
