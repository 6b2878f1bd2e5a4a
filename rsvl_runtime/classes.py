"""Per-class statistics of a run and the class table ``classes.json``.

:class:`ClassStats` counts pixels and ground areas per label id while rows are written (and
round-trips through the resume checkpoint); :func:`write_classes_json` writes the table. The
ids are the classes and, when a ``min_score`` threshold applies, "unclassified" (id K, a row
of the same form: :mod:`rsvl_runtime.postprocess`); fractions are of the valid area, so they
sum to 1 with it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .files import atomic_write_text
from .outputs import LABEL_NODATA

PathLike = str | os.PathLike[str]


def uniform_areas(row_areas: np.ndarray) -> bool:
    """True when every row has the same pixel area (a projected CRS): labels are then counted
    over whole chunks, not row by row."""
    a = np.asarray(row_areas, np.float64)
    return bool(a.size) and bool(np.all(a == a[0]))


def count_labels(labels: np.ndarray, per_row: bool) -> np.ndarray:
    """Pixels per label id (0..255) of uint8 ``labels [n, W]``: ``[256]``, or ``[n, 256]`` with
    ``per_row`` (for rows of different areas). Integers: any split of the rows sums to the same."""
    if per_row:
        return (np.stack([np.bincount(row, minlength=256) for row in labels]) if labels.size
                else np.zeros((0, 256), np.int64))
    return np.bincount(labels.ravel(), minlength=256)


@dataclass
class ClassStats:
    """Running pixel counts and ground areas per label id (``n_classes`` ids, "unclassified"
    included when thresholded; 255 = nodata)."""

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
        self.add_counts([count_labels(labels, not uniform_areas(row_areas))], row_areas)

    def add_counts(self, counts: Sequence[np.ndarray], row_areas: np.ndarray) -> None:
        """Add the :func:`count_labels` of consecutive chunks of rows (in row order; per row
        unless :func:`uniform_areas`) whose per-pixel areas are ``row_areas [n]`` m². The sums
        are those of :meth:`update` on the whole rows, bit for bit, however the rows were split."""
        areas_of_rows = np.asarray(row_areas, np.float64)
        if uniform_areas(areas_of_rows):  # a projected CRS: one count per chunk
            counts_all = np.sum(np.stack(counts), axis=0)
            areas = counts_all * areas_of_rows[0]
        else:  # per-row pixel areas (geographic CRS): count per row, weight each row once
            per_row = np.concatenate(counts) if counts else np.zeros((0, 256), np.int64)
            counts_all = per_row.sum(axis=0)
            areas = areas_of_rows @ per_row
        self.pixels += counts_all[:self.n_classes]
        self.area_m2 += areas[:self.n_classes]
        self.nodata_pixels += int(counts_all[LABEL_NODATA])
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
                       crs: str | None, threshold: Mapping[str, Any] | None = None) -> None:
    """Write the class table (plus valid/nodata totals) as JSON, atomically. ``threshold``:
    ``{"min_score", "unclassified_id", "score"}`` of a thresholded run (stored as ``threshold``)."""
    doc = {"classes": list(table), "threshold": dict(threshold) if threshold else None,
           "valid_pixels": int(stats.pixels.sum()),
           "valid_area_m2": stats.valid_area_m2, "nodata_pixels": stats.nodata_pixels,
           "nodata_area_m2": stats.nodata_area_m2, "crs": crs,
           "area_note": "areas in square metres (geographic CRS: per-row spherical approximation)"}
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
