"""Strip checkpoints: an interrupted run of a large scene resumes from its last finished strip.

While a scene runs, its temporary output folder (:mod:`rsvl_runtime.transaction`) holds the
partially written rasters. Every :data:`CHECKPOINT_S` seconds, at the end of a strip, the
row writers make the rows written so far durable (:meth:`GeoTiffRowWriter.checkpoint`) and
``progress.json`` records:

``signature``   sha256 of the inputs (path, size, mtime), the bundle and every option that
                changes the result; a checkpoint of another run is never resumed;
``probe``       crc32 of the logits of the scene's first batch: recomputed before resuming, it
                catches a different model or vocabulary behind the same names;
``next_strip``  first strip (row of tiles) whose rows are not written; ``rows`` its first row;
``files``       the rasters' temporary names and the crc32 of their re-read rows;
``stats``       the class statistics of the rows written.

A resumed run recomputes the rows of tiles that overlap ``next_strip`` (the Hann blend of a row
needs every tile that covers it, :func:`resume_plan`), with the same batch boundaries, and
discards the rows before ``rows``: the result is bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write_text
from .tiling import TileGrid

PROGRESS = "progress.json"
PROGRESS_FORMAT = "rsvl-progress/2"  # 2: a COG's rows in a tile spool (tile_spool.py)
#: Seconds between checkpoints (``RSVL_CHECKPOINT_SECONDS``; 0: after every strip).
CHECKPOINT_S = float(os.environ.get("RSVL_CHECKPOINT_SECONDS", "60"))


def input_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Resolved path, size and mtime of a local input file (cheap; changes when the file does).

    A remote input (a URL or ``/vsi*`` path, :func:`rsvl_runtime.raster_io.is_gdal_path`) is
    fingerprinted by the URL alone: rasterio reports no size or mtime for it, and a changed file
    behind the same URL is caught by the checkpoint's ``probe`` (the first batch's logits).
    """
    from .raster_io import is_gdal_path

    if is_gdal_path(path):
        return {"path": os.fspath(path), "remote": True}
    p = Path(path)
    st = p.stat()
    return {"path": str(p.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def signature(parts: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``parts``."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def logits_crc(logits: np.ndarray) -> int:
    """crc32 of a float32 logits array."""
    return zlib.crc32(np.ascontiguousarray(logits, np.float32).data)  # the buffer itself: no copy


@dataclass
class Checkpoint:
    """The content of ``progress.json``."""

    signature: str
    probe: int
    next_strip: int = 0
    rows: int = 0
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"temp", "crc"}
    stats: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        atomic_write_text(folder / PROGRESS, json.dumps({"format": PROGRESS_FORMAT, **asdict(self)}) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Checkpoint | None:
        """The checkpoint of ``folder`` (None when missing or unreadable)."""
        try:
            doc = json.loads((folder / PROGRESS).read_text(encoding="utf-8"))
            if doc.pop("format") != PROGRESS_FORMAT:
                return None
            cp = cls(**doc)
        except (OSError, ValueError, TypeError, KeyError):
            return None
        return cp if cp.next_strip > 0 and cp.files else None


def clear(folder: Path) -> None:
    """Remove the checkpoint (before the rasters are finalised: no resume past this point)."""
    (folder / PROGRESS).unlink(missing_ok=True)


@dataclass(frozen=True)
class ResumePlan:
    """Where a run starts: ``first_tile`` (batch-aligned) is read first, tiles of rows before
    ``first_row`` are computed only to keep the batches as before, rows of strips before
    ``strip`` are already written."""

    strip: int = 0
    first_row: int = 0
    first_tile: int = 0
    rows: int = 0  # scene rows already written (first row of ``strip``)


def resume_plan(grid: TileGrid, strip: int, batch: int) -> ResumePlan:
    """The rows of tiles to recompute to resume at ``strip`` (every row of tiles that reaches
    into it: their blended sums are needed for its rows) and the first tile of the batch that
    holds the first of them."""
    if strip <= 0:
        return ResumePlan()
    offsets = grid.row_offsets
    y = offsets[strip]
    first_row = next(j for j, y0 in enumerate(offsets) if y0 + grid.strip_height > y)
    first_tile = (first_row * len(grid.col_offsets)) // batch * batch
    return ResumePlan(strip, first_row, first_tile, y)


class Checkpointer:
    """Saves a checkpoint at the end of a strip when :data:`CHECKPOINT_S` seconds have passed."""

    def __init__(self, folder: Path, checkpoint: Checkpoint, writers: Mapping[str, Any],
                 stats: Any, n_strips: int, interval: float | None = None) -> None:
        self.folder, self.cp, self.writers, self.stats = folder, checkpoint, dict(writers), stats
        self.n_strips = n_strips
        self.interval = CHECKPOINT_S if interval is None else interval
        self._last = time.monotonic()
        self.saved = 0

    def strip_done(self, next_strip: int, rows: int) -> None:
        """Called after the rows of a strip were handed to the writers."""
        if next_strip >= self.n_strips or time.monotonic() - self._last < self.interval:
            return
        files = {name: {"temp": Path(w.path).name, "crc": w.checkpoint()} for name, w in self.writers.items()}
        self.cp.next_strip, self.cp.rows, self.cp.files = next_strip, rows, files
        self.cp.stats = self.stats.to_dict()
        self.cp.save(self.folder)
        self.saved += 1
        self._last = time.monotonic()
