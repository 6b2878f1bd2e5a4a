"""Blending tile logits and sinking finished rows into the output rasters.

:class:`Blender` accumulates the tile logits of a run with a smooth window
(:class:`rsvl_runtime.tiling.RowAccumulator`) and hands each finished block of rows to a
:class:`RowSink`, which turns it into labels/scores chunk by chunk
(:func:`rsvl_runtime.postprocess.labels_and_scores`, with the run's
:class:`~rsvl_runtime.postprocess.Scoring`: the "unclassified" threshold), writes them with the run's row writers
(:class:`SceneWriters`, :mod:`rsvl_runtime.outputs`), counts the classes and checkpoints the
strip (:mod:`rsvl_runtime.resume`). :class:`SinkThread` runs the blender in a writer thread
behind a bounded queue, so the engine's thread only runs the model and hands over its logits (no
copy). Memory: the open strip's accumulator ``[K, tile, W]`` float32, at most
:data:`SINK_QUEUE` batches of logits in the queue and the writers' block buffers.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rasterio.enums import Resampling

from . import outputs as out
from . import resume
from .classes import ClassStats, count_labels, uniform_areas
from .options import SceneOptions
from .parallel import WorkPool
from .postprocess import UNCLASSIFIED, Scoring, labels_and_scores
from .styling import SCORE_SCALE, label_colormap
from .tiling import FinishedRows, RowAccumulator, Tile, TileGrid, window_1d

#: Elements per chunk when turning finished rows into labels/scores (bounds temporaries).
POSTPROCESS_ELEMENTS = 1 << 20
#: Deflate level of scores.tif (K bands: speed matters more than the last 15 % of size).
SCORES_ZLEVEL = 1
#: Deflate level of labels.tif / mask.tif: libdeflate level 4 deflates label tiles at 458 MB/s
#: against level 6's 237 (2-core EPYC) for 27 % more bytes (ratio 0.045 vs 0.036 of the raw
#: labels: labels.tif 7.6 vs 6.2 MB for a 10000^2 scene, beside a 147 MB scores.tif).
LABELS_ZLEVEL = 4
#: Batches of logits waiting for the writer thread (bounds memory; 2 keeps the engine busy).
SINK_QUEUE = 2


@dataclass(frozen=True)
class OutputSpec:
    """What a run writes (also part of its resume signature): ``palette`` has one colour per
    label id (:meth:`SceneOptions.check`), ``scoring`` turns logits into scores and labels."""

    task: str
    class_names: tuple[str, ...]
    write_scores: bool
    cog: bool | None
    palette: tuple[tuple[int, int, int], ...] = ()
    scoring: Scoring | None = None

    @classmethod
    def of(cls, options: SceneOptions) -> OutputSpec:
        scoring = Scoring.of_options(options) if options.task == "semantic" else None
        return cls(options.task, tuple(options.class_names), options.write_scores, options.cog,
                   tuple(tuple(c) for c in options.check()), scoring)  # type: ignore[misc]

    @property
    def label_names(self) -> tuple[str, ...]:
        """One name per label id: the classes, then "unclassified" when a threshold applies."""
        extra = (UNCLASSIFIED,) if self.scoring is not None and self.scoring.unclassified is not None else ()
        return self.class_names + extra

    @property
    def raster_name(self) -> str:
        return out.MASK if self.task == "referring" else out.LABELS

    @property
    def bands(self) -> int:
        """Output raster bands: labels/mask plus one score band per class."""
        return 1 + (len(self.class_names) if self.task == "semantic" and self.write_scores else 0)


@dataclass
class SceneWriters:
    """The output side of one run: staged files, row writers, class statistics, where the run
    starts (:class:`~rsvl_runtime.resume.ResumePlan`) and its checkpoints."""

    stage: out.OutputStage
    labels: out.GeoTiffRowWriter
    scores: out.GeoTiffRowWriter | None
    stats: ClassStats
    plan: resume.ResumePlan
    checkpointer: resume.Checkpointer

    @property
    def writers(self) -> list[out.GeoTiffRowWriter]:
        return [w for w in (self.labels, self.scores) if w is not None]

    def record_probe(self, logits: np.ndarray) -> None:
        """Remember the crc of the scene's first batch (the first one of a fresh run)."""
        if self.checkpointer.cp.probe is None:
            self.checkpointer.cp.probe = resume.logits_crc(logits)


def open_writers(stage: out.OutputStage, ref: Any, spec: OutputSpec,
                 cp: resume.Checkpoint | None) -> tuple[out.GeoTiffRowWriter, out.GeoTiffRowWriter | None]:
    """New row writers, or (``cp``) the checkpointed rasters of a resumed run reopened."""
    common = {"width": ref.width, "height": ref.height, "crs": ref.crs, "transform": ref.transform, "cog": spec.cog}

    def path_and_resume(name: str) -> dict[str, Any]:
        if cp is None:
            return {"path": stage.temp(name)}
        f = cp.files[name]
        return {"path": stage.adopt(name, stage.out_dir / f["temp"]), "resume": (cp.rows, int(f["crc"]))}

    labels = out.GeoTiffRowWriter(count=1, nodata=out.LABEL_NODATA, overview_resampling=Resampling.mode,
                                  zlevel=LABELS_ZLEVEL, descriptions=["mask" if spec.task == "referring" else "class"],
                                  colormap=label_colormap(spec.palette), **path_and_resume(spec.raster_name),
                                  **common)
    scores = None
    if spec.bands > 1:
        try:
            scores = out.GeoTiffRowWriter(count=len(spec.class_names), nodata=out.SCORE_NODATA,
                                          descriptions=list(spec.class_names),
                                          overview_resampling=Resampling.average, zlevel=SCORES_ZLEVEL,
                                          scales=[SCORE_SCALE] * len(spec.class_names),
                                          **path_and_resume(out.SCORES), **common)
        except BaseException:
            labels.abort()
            raise
    return labels, scores


class RowSink:
    """Turns finished rows into labels/scores, writes them, counts classes, checkpoints.

    ``pool``: the run's :class:`~rsvl_runtime.parallel.WorkPool`; the rows of a finished block
    are split into one contiguous range per worker (each turned into labels/scores chunk by
    chunk, :data:`POSTPROCESS_ELEMENTS` at a time, and its labels counted per class there); the
    chunks that fit the writers' open 512-row blocks are computed straight into the blocks'
    buffers (:meth:`~rsvl_runtime.outputs.GeoTiffRowWriter.claim`: no copy between the stages),
    the others are written after them; labels and scores are written by two workers at once.
    The class counts are integers summed in row order (areas weighted once per block), so the
    statistics do not depend on the number of workers.
    """

    def __init__(self, writers: SceneWriters, row_areas: np.ndarray, valids: dict[int, np.ndarray],
                 width: int, channels: int, scoring: Scoring | None = None,
                 pool: WorkPool | None = None) -> None:
        self.out = writers
        self.scoring = scoring
        self.row_areas = row_areas
        self.valids = valids  # strip index -> [strip_height, W] validity, filled by the reader
        self.chunk = max(1, POSTPROCESS_ELEMENTS // (channels * width))
        self.pool = pool or WorkPool(1)
        for w in writers.writers:  # each writer splits its own block (write beside overviews, bands)
            w.pool = self.pool
        self.postprocess_s = 0.0
        self.write_s = 0.0

    def emit(self, fin: FinishedRows) -> None:
        """Softmax/argmax the finished rows (in parallel), count the classes, write them."""
        valid = self.valids.pop(fin.strip)[:fin.n_rows]
        for k in [k for k in self.valids if k < fin.strip]:  # rows only read to align batches
            del self.valids[k]
        if fin.strip < self.out.plan.strip:  # written before the run was resumed
            return
        if fin.n_rows == 0:
            return
        with_scores = self.out.scores is not None
        t0 = time.perf_counter()
        row_areas = self.row_areas[fin.y0:fin.y0 + fin.n_rows]
        per_row = not uniform_areas(row_areas)

        # rows [0, m) are computed straight into the writers' open blocks; the rows past a block's
        # end into arrays of their own, written once that block is
        n, writers = fin.n_rows, [self.out.labels, *([self.out.scores] if self.out.scores is not None else [])]
        views = [w.claim(n) for w in writers]
        m = views[0].shape[1]
        if any(v.shape[1] != m for v in views):
            raise RuntimeError("the labels and scores writers are at different rows")

        def postprocess(part: slice) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray, bool]]:
            done = []
            starts = sorted({*range(part.start, part.stop, self.chunk), *([m] if part.start < m < part.stop else [])})
            for i, j in zip(starts, [*starts[1:], part.stop]):
                rows = slice(i, j)
                into = (views[0][0, rows], views[1][:, rows] if with_scores else None) if j <= m else None
                labels, scores = labels_and_scores(fin.logits(rows), valid[rows], with_scores, self.scoring,
                                                   inplace=True, out=into)
                done.append((labels, scores, count_labels(labels, per_row), into is not None))  # counted cache-hot
            return done

        chunks = [c for part in self.pool.map(postprocess, self.pool.ranges(n)) for c in part]
        self.out.stats.add_counts([c[2] for c in chunks], row_areas)
        t1 = time.perf_counter()
        rest = [c for c in chunks if not c[3]]
        jobs: list[tuple[out.GeoTiffRowWriter, int, list[np.ndarray]]] = [(self.out.labels, m, [c[0] for c in rest])]
        if self.out.scores is not None:
            jobs.append((self.out.scores, m, [c[1] for c in rest if c[1] is not None]))
        self.pool.map(_write_rows, jobs)  # labels and scores (and their overview levels) at once
        self.out.checkpointer.strip_done(fin.strip + 1, fin.y0 + fin.n_rows)
        self.postprocess_s += t1 - t0
        self.write_s += time.perf_counter() - t1


def _write_rows(job: tuple[out.GeoTiffRowWriter, int, list[np.ndarray]]) -> None:
    """Commit a writer's ``m`` rows filled in place, then write the rows past its block."""
    writer, m, rest = job
    writer.commit(m)
    for rows in rest:
        writer.write(rows)


def check_logits(logits: Any, n: int, channels: int, tile: int) -> np.ndarray:
    """``predict_fn``'s output as float32 ``[n, channels, tile, tile]``, or a ValueError."""
    arr = np.asarray(logits, dtype=np.float32)
    want = (n, channels, tile, tile)
    if arr.shape != want:
        raise ValueError(f"predict_fn returned logits of shape {tuple(arr.shape)}, expected {want} "
                         "(batch, classes, tile, tile); the vocabulary size or the tile size of the "
                         "bundle does not match the run")
    return arr


def expected_channels(raw: Any, n_classes: int, task: str) -> int:
    """Logit channels of the run: K for semantic; 2 (or a single target logit) for referring."""
    got = np.shape(raw)[1] if np.ndim(raw) == 4 else None
    if task == "referring" and got == 1:
        return 1
    return n_classes


class Blender:
    """Blends the tile logits of a run into finished rows and sinks them (:class:`RowSink`).

    The accumulator is made at the first batch, when the number of logit channels is known.
    Tiles of rows before the resume plan's ``first_row`` are computed only to keep the batches
    of the full run and are not blended.
    """

    def __init__(self, grid: TileGrid, options: SceneOptions, writers: SceneWriters,
                 row_areas: np.ndarray, valids: dict[int, np.ndarray], pool: WorkPool | None = None) -> None:
        self.grid, self.writers, self.row_areas, self.valids = grid, writers, row_areas, valids
        self.pool = pool or WorkPool(1)
        self.window, self.task, self.n_classes = options.window, options.task, len(options.class_names)
        self.scoring = Scoring.of_options(options) if options.task == "semantic" else None
        self.acc: RowAccumulator | None = None
        self.sink: RowSink | None = None
        self.blend_s = 0.0

    def check(self, raw: Any, n: int) -> np.ndarray:
        """The checked logits of a batch of ``n`` tiles (the first batch sets up the accumulator)."""
        if self.acc is None:
            channels = expected_channels(raw, self.n_classes, self.task)
            self.acc = RowAccumulator(self.grid, channels, window_1d(self.grid.tile, self.window),
                                      self.writers.plan.first_row)
            self.sink = RowSink(self.writers, self.row_areas, self.valids, self.grid.width, channels,
                                self.scoring, self.pool)
        logits = check_logits(raw, n, self.acc.channels, self.grid.tile)
        self.writers.record_probe(logits)
        return logits

    def strip(self, row: int, valid: np.ndarray) -> None:
        """The validity mask of the strip of tiles ``row`` (before its tiles are added)."""
        self.valids[row] = valid

    def add(self, tiles: Sequence[Tile], logits: np.ndarray) -> None:
        """Blend checked logits (:meth:`check`), split over the pool's workers by tile rows;
        finished rows go to the sink."""
        assert self.acc is not None and self.sink is not None
        first_row = self.writers.plan.first_row
        keep = [i for i, t in enumerate(tiles) if t.row >= first_row]  # others only keep the batches
        if not keep:
            return
        tb = time.perf_counter()
        self.acc.add_batch([tiles[i] for i in keep], logits if len(keep) == len(tiles) else logits[keep],
                           self.sink.emit, self.pool)
        self.blend_s += time.perf_counter() - tb

    def finish(self) -> dict[str, float]:
        """Sink the last rows; returns the blend/postprocess/write timings."""
        if self.acc is None or self.sink is None:
            raise RuntimeError("the scene produced no tiles")
        self.blend_s -= self.sink.postprocess_s + self.sink.write_s  # emitted from inside acc.add
        self.sink.emit(self.acc.finish())
        return {"blend_s": self.blend_s, "postprocess_s": self.sink.postprocess_s, "write_s": self.sink.write_s}


class _End:
    pass


class SinkThread:
    """Runs a :class:`Blender` in a writer thread: blend, class decision, write, checkpoint.

    The engine's thread calls :meth:`strip` and :meth:`add` (in tile order; the arrays are
    handed over, not copied: do not modify them afterwards), then :meth:`finish`, which waits
    for the last rows and returns the timings. The queue holds at most ``maxsize`` items; a
    full queue blocks the caller (``wait_s`` counts that time). An exception in the writer
    thread stops it and is re-raised in the caller's thread at its next call. :meth:`close`
    (always call it, e.g. in ``finally``) stops the thread after the item it is on and waits
    for it, so the writers are no longer in use when the caller aborts them.
    """

    def __init__(self, blender: Blender, maxsize: int = SINK_QUEUE) -> None:
        self.blender = blender
        self.wait_s = 0.0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, maxsize))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._timings: dict[str, float] | None = None
        self._thread = threading.Thread(target=self._run, name="rsvl-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    item = self._queue.get(timeout=0.1)
                except queue.Empty:
                    continue
                if isinstance(item, _End):
                    self._timings = self.blender.finish()
                    return
                kind, a, b = item
                if kind == "strip":
                    self.blender.strip(a, b)
                else:
                    self.blender.add(a, b)
        except BaseException as e:  # noqa: BLE001 - handed to the caller, re-raised there
            self._error = e

    def _raise_failed(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._thread.is_alive():
            raise RuntimeError("the writer thread stopped")

    def _put(self, item: Any) -> None:
        t0 = time.perf_counter()
        while True:
            self._raise_failed()
            try:
                self._queue.put(item, timeout=0.1)
                break
            except queue.Full:
                continue
        self.wait_s += time.perf_counter() - t0

    def strip(self, row: int, valid: np.ndarray) -> None:
        """Hand over the validity mask of the strip ``row`` (see :meth:`Blender.strip`)."""
        self._put(("strip", row, valid))

    def add(self, tiles: Sequence[Tile], logits: np.ndarray) -> None:
        """Hand over checked logits (:meth:`Blender.check`) of ``tiles``."""
        self._put(("add", tiles, logits))

    def finish(self) -> dict[str, float]:
        """Wait until every row is written; the blender's timings plus ``sink_wait_s``."""
        self._put(_End())
        t0 = time.perf_counter()
        self._thread.join()
        self.wait_s += time.perf_counter() - t0
        if self._error is not None:
            raise self._error
        assert self._timings is not None
        return {**self._timings, "sink_wait_s": self.wait_s}

    def close(self) -> None:
        """Stop the writer thread (after its current item) and wait for it."""
        self._stop.set()
        self._thread.join()


class InlineSink:
    """:class:`SinkThread`'s interface without the thread: the ``serial`` pipeline blends and
    writes in the caller's thread, between engine calls (the blender's own pool splits the
    work over the cores, :mod:`rsvl_runtime.parallel`)."""

    def __init__(self, blender: Blender) -> None:
        self.blender = blender

    def strip(self, row: int, valid: np.ndarray) -> None:
        self.blender.strip(row, valid)

    def add(self, tiles: Sequence[Tile], logits: np.ndarray) -> None:
        self.blender.add(tiles, logits)

    def finish(self) -> dict[str, float]:
        return {**self.blender.finish(), "sink_wait_s": 0.0}

    def close(self) -> None:
        pass
