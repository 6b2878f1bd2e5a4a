"""Text derived from a label map: a one-sentence scene description (:func:`describe_labels`) and
referring expressions with their target masks (:func:`referring_expressions`).

Labels are the class ids of :data:`rsvl_train.data.synthetic.constants.CLASS_NAMES`; scipy
(connected components, distance transforms) is imported when a function runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .constants import (
    BARE_SOIL,
    BUILDING,
    CLASS_NAMES,
    FARMLAND,
    IGNORE_INDEX,
    ROAD,
    VEGETATION,
    WATER,
)

__all__ = ["ReferringExpression", "describe_labels", "referring_expressions"]

_REGIONS = (("north-west", "north", "north-east"), ("west", "centre", "east"), ("south-west", "south", "south-east"))


def _region_name(cy: float, cx: float, h: int, w: int) -> str:
    i = min(2, max(0, int(3 * cy / max(h, 1))))
    j = min(2, max(0, int(3 * cx / max(w, 1))))
    return _REGIONS[i][j]


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    return lab, int(n)


def _water_components(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected water bodies, joined across bridges (gaps of a few road pixels)."""
    from scipy import ndimage

    water = labels == WATER
    bridged = water | (ndimage.binary_closing(water, iterations=4) & (labels == ROAD))
    lab, n = ndimage.label(bridged)
    lab[~water] = 0
    return lab, int(n)


def describe_labels(labels: np.ndarray, ignore_index: int = IGNORE_INDEX) -> str:
    """A one-sentence scene description derived from a label map (:data:`CLASS_NAMES` ids).

    Example: ``"a mostly agricultural area with a river crossing from north to south,
    scattered buildings and a road network"``.
    """
    labels = np.asarray(labels)
    valid = labels != ignore_index
    n = int(valid.sum())
    if n == 0:
        return "an area with no valid data"
    h, w = labels.shape
    frac = np.bincount(labels[valid].astype(np.int64), minlength=len(CLASS_NAMES))[: len(CLASS_NAMES)] / n
    if frac[BUILDING] + frac[ROAD] > 0.35:
        head = "a dense urban area"
    elif frac[WATER] > 0.4:
        head = "an area dominated by open water"
    elif frac[FARMLAND] > 0.4:
        head = "a mostly agricultural area"
    elif frac[VEGETATION] > 0.4:
        head = "a densely vegetated area"
    elif frac[BARE_SOIL] > 0.4:
        head = "a mostly barren area of bare soil"
    elif frac[BUILDING] > 0.08:
        head = "a suburban area"
    else:
        top = [CLASS_NAMES[i].replace("_", " ") for i in np.argsort(-frac)[:2] if frac[i] > 0]
        head = "a mixed landscape of " + " and ".join(top)
    parts: list[str] = []
    if frac[WATER] > 0.002:
        lab, _ = _water_components(labels)
        sizes = np.bincount(lab.ravel())[1:]
        big = int(np.argmax(sizes)) + 1
        ys, xs = np.nonzero(lab == big)
        ns = ys.min() == 0 and ys.max() == h - 1
        ew = xs.min() == 0 and xs.max() == w - 1
        if ns and (ys.max() - ys.min()) >= (xs.max() - xs.min()):
            parts.append("a river crossing from north to south")
        elif ew:
            parts.append("a river crossing from west to east")
        elif ns:
            parts.append("a river crossing from north to south")
        else:
            kind = "a lake" if sizes[big - 1] > 0.05 * n else "a small pond"
            parts.append(f"{kind} in the {_region_name(ys.mean(), xs.mean(), h, w)}")
    if frac[BUILDING] > 0:
        _, nb = _components(labels == BUILDING)
        if nb >= 15:
            parts.append("many buildings")
        elif nb >= 4:
            parts.append("scattered buildings")
        elif nb > 0:
            parts.append("a few isolated buildings")
    if frac[ROAD] > 0.04:
        parts.append("a dense road network")
    elif frac[ROAD] > 0.003:
        parts.append("a road")
    if not parts:
        return head
    tail = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{head} with {tail}"


@dataclass
class ReferringExpression:
    """A referring expression and the boolean mask of the object it refers to."""

    text: str
    mask: np.ndarray
    class_id: int
    kind: str


def referring_expressions(
    labels: np.ndarray, seed: int = 0, max_expressions: int = 3, min_pixels: int = 20
) -> list[ReferringExpression]:
    """Referring expressions with their target masks, derived from a label map.

    Candidate templates (each unique by construction: a superlative over connected
    components, with the target's position appended): "the largest water body in the
    north-east", "the largest building in the south", "the smallest building in the west",
    "the building closest to the road in the south", "the largest farmland field in the
    centre", "the largest vegetation patch next to the water in the east", "the largest area of
    bare soil in the north". Components smaller than ``min_pixels`` are skipped; ties skip the
    template. Up to ``max_expressions`` are returned, chosen by ``seed``.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    h, w = labels.shape
    cands: list[ReferringExpression] = []

    def comps(cls: int) -> tuple[np.ndarray, np.ndarray]:
        lab, n = _water_components(labels) if cls == WATER else _components(labels == cls)
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        sizes[0] = 0
        return lab, sizes

    def add(lab: np.ndarray, idx: int, cls: int, kind: str, text: str) -> None:
        mask = lab == idx
        ys, xs = np.nonzero(mask)
        region = _region_name(float(ys.mean()), float(xs.mean()), h, w)
        cands.append(ReferringExpression(f"{text} in the {region}", mask, cls, kind))

    def largest(cls: int, kind: str, text: str) -> None:
        lab, sizes = comps(cls)
        if sizes.max(initial=0) >= min_pixels and (sizes == sizes.max()).sum() == 1:
            add(lab, int(np.argmax(sizes)), cls, kind, text)

    largest(WATER, "largest_water", "the largest water body")
    largest(BUILDING, "largest_building", "the largest building")
    largest(FARMLAND, "largest_farmland", "the largest farmland field")
    largest(BARE_SOIL, "largest_bare", "the largest area of bare soil")
    lab_b, sizes_b = comps(BUILDING)
    ok = np.nonzero(sizes_b >= min_pixels)[0]
    if len(ok) >= 2:
        smin = sizes_b[ok].min()
        if (sizes_b[ok] == smin).sum() == 1:
            add(lab_b, int(ok[np.argmin(sizes_b[ok])]), BUILDING, "smallest_building", "the smallest building")
        road = labels == ROAD
        if road.any():
            dist = ndimage.distance_transform_edt(~road)
            dmin = np.asarray(ndimage.minimum(dist, lab_b, ok))
            if (dmin == dmin.min()).sum() == 1:
                add(lab_b, int(ok[np.argmin(dmin)]), BUILDING, "building_near_road",
                    "the building closest to the road")
    water = labels == WATER
    if water.any():
        lab_v, sizes_v = comps(VEGETATION)
        near = ndimage.binary_dilation(water, iterations=2)
        touching = np.unique(lab_v[near & (lab_v > 0)])
        if len(touching):
            s = sizes_v[touching]
            if s.max() >= min_pixels and (s == s.max()).sum() == 1:
                add(lab_v, int(touching[np.argmax(s)]), VEGETATION, "vegetation_near_water",
                    "the largest vegetation patch next to the water")
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 11])
    order = rng.permutation(len(cands))
    return [cands[i] for i in order[:max_expressions]]
