"""Reading a scene: checked inputs, normalised strips, batches of tiles and the prefetch thread.

:func:`prepare_sources` opens and checks the input rasters (:mod:`rsvl_runtime.raster_io`)
before anything is written, and resolves the optical scaling (``--sensor``/``--scale``/
``--offset``; a ``--stretch`` gets its per-band limits here, once per scene, from a decimated
read). :func:`iter_scene_items` reads the optical and/or SAR raster one
strip (a row of tiles) at a time, normalises it (:mod:`rsvl_runtime.normalization`; invalid
pixels are set to 0, the normalised mean) and yields the strip's validity mask followed by
batches of tiles in row-major order. :class:`Prefetcher` runs that iterator in a reader thread
behind a bounded queue. :class:`InputHasher` hashes the local input files in the background
for the report (a remote input, a URL, is recorded by its URL and not downloaded to hash it). Memory: one strip of input per modality and a few batches in the queue.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from .files import FileHasher, cached_sha256, store_sha256
from .normalization import normalize_optical, normalize_sar
from .options import InputOptions
from .parallel import WorkPool
from .raster_io import (
    ModalityInput,
    RasterInputError,
    RasterPath,
    check_coregistered,
    is_gdal_path,
    open_raster,
    prepare_input,
    read_window,
    scaled_shape,
    valid_mask,
    with_stretch_limits,
)
from .sensors import scaling_of
from .tiling import Tile, TileGrid, pad_to_tile

#: Columns normalised at once when preparing a strip (bounds temporaries).
NORMALIZE_COLUMNS = 2048


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Sources:
    """The checked input rasters of a scene and the options they are read with."""

    optical: ModalityInput | None
    sar: ModalityInput | None
    options: InputOptions

    @property
    def optical_spec(self) -> Mapping[str, Any] | None:
        return self.options.optical_spec

    @property
    def sar_spec(self) -> Mapping[str, Any] | None:
        return self.options.sar_spec

    @property
    def sar_units(self) -> str | None:
        return self.options.sar_units

    @property
    def reference(self) -> ModalityInput:
        ref = self.optical or self.sar
        assert ref is not None
        return ref

    @property
    def modalities(self) -> list[ModalityInput]:
        """The inputs given, optical first."""
        return [m for m in (self.optical, self.sar) if m is not None]


def prepare_sources(optical: RasterPath | None, sar: RasterPath | None,
                    options: InputOptions | None = None) -> Sources:
    """Open and check the inputs (bands, dtype, nodata, co-registration) before anything is written."""
    opts = options or InputOptions()
    if optical is None and sar is None:
        raise RasterInputError("no input raster: give an optical raster, a SAR raster or both")
    opt = sar_in = None
    if optical is not None:
        if opts.optical_spec is None:
            raise RasterInputError(f"optical raster {optical} given but the bundle has no optical input; "
                                   "run with the SAR raster only")
        opt = with_stretch_limits(prepare_input(optical, "optical", opts.optical_spec, bands=opts.bands,
                                                nodata=opts.nodata_for("optical"), scaling=scaling_of(opts)))
    if sar is not None:
        if opts.sar_spec is None:
            raise RasterInputError(f"SAR raster {sar} given but the bundle has no SAR input; "
                                   "run with the optical raster only")
        sar_in = prepare_input(sar, "sar", opts.sar_spec, bands=opts.sar_bands, nodata=opts.nodata_for("sar"))
    if opt is not None and sar_in is not None:
        with open_raster(opt.path) as a, open_raster(sar_in.path) as b:
            check_coregistered(a, b)
    return Sources(opt, sar_in, opts)


# ----------------------------------------------------------------------------- reader thread
@dataclass
class Strip:
    row: int
    valid: np.ndarray  # [strip_height, W] bool


@dataclass
class Batch:
    tiles: list[Tile]
    optical: np.ndarray | None
    sar: np.ndarray | None


class ReadStats:
    """Seconds the reader spent reading (``seconds``), normalising (``normalise_seconds``) and
    copying tiles into batches (``batch_seconds``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.normalise_seconds = 0.0
        self.batch_seconds = 0.0


class Decimated:
    """A nearest-neighbour decimated copy of a raster, gathered from its rows as they are read
    (GDAL's pixel-centre rule: output pixel ``i`` takes source pixel ``floor((i + 0.5) * n / m)``),
    so the report's input thumbnail needs no second pass over the input. :attr:`values` is None
    until every output row was seen (a resumed run reads only part of the scene)."""

    def __init__(self, height: int, width: int, max_side: int) -> None:
        self.shape = scaled_shape(height, width, max_side)
        self.src_rows = ((np.arange(self.shape[0]) + 0.5) * height / self.shape[0]).astype(np.int64)
        self.src_cols = ((np.arange(self.shape[1]) + 0.5) * width / self.shape[1]).astype(np.int64)
        self._out: np.ndarray | None = None
        self._seen = np.zeros(self.shape[0], bool)

    def add(self, y0: int, rows: np.ndarray) -> None:
        """Rows ``[C, n, W]`` of the raster starting at row ``y0``."""
        pick = np.nonzero((self.src_rows >= y0) & (self.src_rows < y0 + rows.shape[1]))[0]
        if pick.size == 0:
            return
        if self._out is None:
            self._out = np.zeros((rows.shape[0], *self.shape), rows.dtype)
        self._out[:, pick] = rows[:, self.src_rows[pick] - y0][:, :, self.src_cols]
        self._seen[pick] = True

    @property
    def values(self) -> np.ndarray | None:
        return self._out if self._out is not None and self._seen.all() else None


class StripReader:
    """Reads and normalises the strips of a scene (invalid pixels set to 0), in order.

    Consecutive strips overlap (the tiles overlap): the rows a strip shares with the previous one
    are copied from it, so each scene row is read and normalised once, not ``tile / stride``
    times. With a ``pool`` the modalities are read at once (one dataset per worker) and the
    normalisation is split into column ranges of :data:`NORMALIZE_COLUMNS` over its workers.
    """

    def __init__(self, datasets: Mapping[str, Any], sources: Sources, grid: TileGrid,
                 stats: ReadStats | None = None, pool: WorkPool | None = None,
                 thumbnail: Decimated | None = None) -> None:
        self.datasets, self.sources, self.grid, self.stats = datasets, sources, grid, stats
        self.pool = pool or WorkPool(1)
        self.thumbnail = thumbnail  # of the reference input (optical, else SAR): raw values
        self.mods = [(name, src) for name, src in (("optical", sources.optical), ("sar", sources.sar))
                     if src is not None]
        self._prev: tuple[int, np.ndarray, dict[str, np.ndarray]] | None = None

    def strip(self, row: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``valid [strip_height, W]`` and the normalised ``[C, strip_height, W]`` per modality."""
        grid, pool = self.grid, self.pool
        y0, y1 = grid.strip_rows(row)
        keep = 0
        if self._prev is not None:
            py0, pvalid, _ = self._prev
            keep = max(0, min(py0 + pvalid.shape[0], y1) - y0) if py0 <= y0 else 0
        t0 = time.perf_counter()
        window = Window(0, y0 + keep, grid.width, y1 - y0 - keep)
        raw = dict(zip([m[0] for m in self.mods],
                       pool.map(lambda m: read_window(self.datasets[m[0]], m[1].bands, window), self.mods)))
        fresh = np.ones((y1 - y0 - keep, grid.width), bool)
        for name, src in self.mods:
            fresh &= valid_mask(raw[name], src.nodata)
        if self.thumbnail is not None:
            self.thumbnail.add(y0 + keep, raw[self.mods[0][0]])
        t1 = time.perf_counter()
        valid = np.empty((y1 - y0, grid.width), bool)
        valid[keep:] = fresh
        norm = {name: np.empty((values.shape[0], y1 - y0, grid.width), np.float32) for name, values in raw.items()}
        if keep:
            py0, pvalid, pnorm = self._prev  # type: ignore[misc]
            valid[:keep] = pvalid[y0 - py0:y0 - py0 + keep]
            for name in norm:
                norm[name][:, :keep] = pnorm[name][:, y0 - py0:y0 - py0 + keep]
        invalid = None if fresh.all() else ~fresh

        def normalise(job: tuple[str, slice]) -> None:
            name, cols = job
            dst = norm[name][:, keep:, cols]
            _normalise(name, raw[name][..., cols], self.sources, out=dst)
            if invalid is not None:
                dst[:, invalid[:, cols]] = 0.0

        pool.map(normalise, [(name, slice(x0, x0 + NORMALIZE_COLUMNS)) for name in norm
                             for x0 in range(0, grid.width, NORMALIZE_COLUMNS)])
        if self.stats is not None:
            self.stats.seconds += t1 - t0
            self.stats.normalise_seconds += time.perf_counter() - t1
        self._prev = (y0, valid, norm)
        return valid, norm


def _normalise(name: str, values: np.ndarray, sources: Sources, out: np.ndarray | None = None) -> np.ndarray:
    if name == "optical":
        scaling = sources.optical.scaling if sources.optical is not None else None
        return normalize_optical(values, sources.optical_spec or {}, scaling, out=out)
    with np.errstate(invalid="ignore"):
        return normalize_sar(values, sources.sar_spec or {}, sources.sar_units, out=out)


class BatchBuilder:
    """Gathers tiles into ``[batch, C, t, t]`` arrays; the copies out of the normalised strips
    are made when the batch is taken, tile by tile over the ``pool``'s workers (the batch keeps
    no reference to the strips)."""

    def __init__(self, batch: int, tile: int, channels: Mapping[str, int], pool: WorkPool | None = None,
                 stats: ReadStats | None = None) -> None:
        self.batch, self.tile, self.channels = batch, tile, dict(channels)
        self.pool = pool or WorkPool(1)
        self.stats = stats  # its batch_seconds: the copies of take()
        self._pending: list[tuple[Tile, Mapping[str, np.ndarray]]] = []

    @property
    def tiles(self) -> list[Tile]:
        return [t for t, _ in self._pending]

    def add(self, tile: Tile, strips: Mapping[str, np.ndarray]) -> Batch | None:
        """Add one tile of the normalised strips; returns a batch when it is full."""
        self._pending.append((tile, strips))
        return self.take() if len(self._pending) == self.batch else None

    def take(self) -> Batch | None:
        """The tiles gathered so far as a batch (None when empty)."""
        pending, self._pending = self._pending, []
        n = len(pending)
        if n == 0:
            return None
        arrays = {name: np.empty((n, c, self.tile, self.tile), np.float32) for name, c in self.channels.items()}

        def copy(i: int) -> None:
            tile, strips = pending[i]
            for name, strip in strips.items():
                arrays[name][i] = pad_to_tile(strip[:, :tile.height, tile.x:tile.x + tile.width], self.tile)

        t0 = time.perf_counter()
        self.pool.map(copy, range(n))
        if self.stats is not None:
            self.stats.batch_seconds += time.perf_counter() - t0
        return Batch([t for t, _ in pending], arrays.get("optical"), arrays.get("sar"))


def iter_scene_items(sources: Sources, grid: TileGrid, batch: int, stats: ReadStats | None = None,
                     start: int = 0, pool: WorkPool | None = None,
                     thumbnail: Decimated | None = None) -> Iterator[Strip | Batch]:
    """Strips (validity masks) and batches of normalised tiles, in row-major tile order, from
    the tile of row-major index ``start`` (a resumed run); ``pool``: the workers that read,
    normalise and copy the tiles (:mod:`rsvl_runtime.parallel`); ``thumbnail``: gathers a
    decimated copy of the reference input on the way (:class:`Decimated`)."""
    datasets = {}
    try:
        for name, src in (("optical", sources.optical), ("sar", sources.sar)):
            if src is not None:
                datasets[name] = rasterio.open(src.path)
        builder = BatchBuilder(batch, grid.tile, {name: len(src.bands) for name, src in
                                                   (("optical", sources.optical), ("sar", sources.sar))
                                                   if src is not None}, pool, stats)
        n_cols = len(grid.col_offsets)
        strips = StripReader(datasets, sources, grid, stats, pool, thumbnail)
        for row in range(start // n_cols, len(grid.row_offsets)):
            valid, norm = strips.strip(row)
            yield Strip(row, valid)
            for tile in grid.row_tiles(row)[max(0, start - row * n_cols):]:
                full = builder.add(tile, norm)
                if full is not None:
                    yield full
            del norm  # before the next strip is read (an open batch keeps it until taken)
        last = builder.take()
        if last is not None:
            yield last
    finally:
        for ds in datasets.values():
            ds.close()


class _End:
    pass


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher:
    """Runs an iterator in a daemon thread, handing its items over a bounded queue.

    Iterate over it in the consuming thread; an exception in the producer is re-raised there.
    :meth:`close` stops the producer (it is also called when iteration ends or fails).
    """

    def __init__(self, items: Iterator[Any], maxsize: int = 2) -> None:
        self._items = items
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, maxsize))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rsvl-reader", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(_End())
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, re-raised there
            self._put(_Failed(e))
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                item = self._queue.get()
                if isinstance(item, _End):
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the producer thread and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


# ----------------------------------------------------------------------------- input records
#: ``sha256`` of a remote input in the records: it is not downloaded to be hashed.
NOT_HASHED_REMOTE = "not hashed (remote)"


class InputHasher:
    """sha256 of the local input files, computed while the scene runs.

    ``inputs``: per modality its path (a ``Path``, or a URL string) or its
    :class:`~rsvl_runtime.raster_io.ModalityInput` (then the records also hold its optical
    scaling: sensor, scale, offset and the ``--stretch`` percentiles and values used). A remote
    input (:func:`~rsvl_runtime.raster_io.is_gdal_path`) is recorded by its URL with
    ``"sha256": "not hashed (remote)"``: hashing would download the whole file.

    Two ways to run, by who drives it: ``background=True`` hashes in a daemon thread (beside a GPU
    engine, whose host cores are free); ``background=False`` hashes only when :meth:`step` is
    called, a few MiB per file at a time, over a pool's workers — the serial pipeline calls it
    between the calls of a CPU engine, where a hashing thread would preempt one of the engine's
    threads (0.38 CPU-s for the two inputs of a 10000² scene cost the engine as much). Whatever
    is left is hashed by :meth:`records`. A file hashed before in the same state (device, inode,
    size, mtime, ctime: :func:`~rsvl_runtime.files.cached_sha256`) is not read again.
    """

    def __init__(self, inputs: Mapping[str, RasterPath | ModalityInput], enabled: bool,
                 background: bool = True) -> None:
        self.inputs = {name: v for name, v in inputs.items()}
        self.paths: dict[str, RasterPath] = {
            name: v.path if isinstance(v, ModalityInput) else (str(v) if is_gdal_path(v) else Path(v))
            for name, v in inputs.items()}
        self.hashes: dict[str, str] = {}
        local = {name: p for name, p in self.paths.items() if not is_gdal_path(p)} if enabled else {}
        for name, p in local.items():  # the same file in the same state: its recorded sha256
            digest = cached_sha256(p)
            if digest is not None:
                self.hashes[name] = digest
        self._files = {name: FileHasher(p) for name, p in local.items() if name not in self.hashes}
        self._thread = (threading.Thread(target=self._run, daemon=True, name="rsvl-hash")
                        if background and self._files else None)
        if self._thread is not None:
            self._thread.start()

    @property
    def total_bytes(self) -> int:
        """Bytes of the local inputs to hash."""
        return sum(f.size for f in self._files.values())

    def _run(self) -> None:
        for name in self._files:
            self._finish(name)

    def _finish(self, name: str) -> None:
        """Hash what is left of the file ``name`` and record its sha256 (also in the cache)."""
        f = self._files[name]
        self.hashes[name] = f.hexdigest()
        store_sha256(f.path, self.hashes[name])

    def step(self, nbytes: int, pool: WorkPool | None = None) -> None:
        """Hash the next ``nbytes`` of each unfinished file (the files at once over ``pool``)."""
        if self._thread is not None:
            return
        pending = [f for f in self._files.values() if not f.done]
        if pending:
            (pool or WorkPool(1)).map(lambda f: f.update(nbytes), pending)

    def records(self) -> dict[str, Any]:
        """Per modality ``{"path", "bytes", "mtime", "sha256"}`` (a remote input: ``{"path": URL,
        "remote": True, "sha256": "not hashed (remote)"}``), plus ``"scaling"`` for a scaled optical input."""
        if self._thread is not None:
            self._thread.join()
        for name in self._files:
            if name not in self.hashes:
                self._finish(name)
        recs: dict[str, dict[str, Any]] = {}
        for name, p in self.paths.items():
            if is_gdal_path(p):
                recs[name] = {"path": str(p), "remote": True, "sha256": NOT_HASHED_REMOTE}
            else:
                q = Path(p)
                st = q.stat()
                recs[name] = {"path": str(q.resolve()), "bytes": st.st_size, "mtime": st.st_mtime,
                              "sha256": self.hashes.get(name)}
            src = self.inputs[name]
            if isinstance(src, ModalityInput) and src.scaling is not None:
                recs[name]["scaling"] = src.scaling.record()
        return recs
