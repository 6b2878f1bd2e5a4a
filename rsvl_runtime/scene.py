"""Tiled inference over a whole scene with bounded memory: the scene runner.

:func:`run_scene` runs one scene with frozen :class:`~rsvl_runtime.options.SceneOptions`
through one :class:`SceneRun`, which holds the tile grid, the output transaction, the writers
and statistics (:class:`~rsvl_runtime.sink.SceneWriters`), the resume state and the timings.
The reader (:mod:`rsvl_runtime.reading`) yields normalised batches of tiles one strip (a row
of tiles) at a time, ``predict_fn`` runs on each batch in the caller's thread, and the
:class:`~rsvl_runtime.sink.Blender` blends the tile logits with a smooth window
(:mod:`rsvl_runtime.tiling`) and streams finished rows through softmax/argmax to the output
writers (:mod:`rsvl_runtime.outputs`; the COG is encoded once, at the end). Two schedules
(``SceneOptions.pipeline``): ``serial`` runs reading and blending/writing between engine calls,
each split over every core (:mod:`rsvl_runtime.parallel` says why that is the faster one when
the engine runs on the CPU); ``overlap`` runs them in a reader thread
(:class:`~rsvl_runtime.reading.Prefetcher`) and a writer thread
(:class:`~rsvl_runtime.sink.SinkThread`) beside the engine (a GPU engine). Both write the same
bytes.

Timings (``done.json`` ``timings``, seconds): ``read_s``, ``normalise_s`` and ``batch_s``
(the tiles copied into the engine's batches; reader thread), ``predict_s`` (the engine),
``hash_s`` (the inputs' sha256 between engine calls, serial pipeline), ``blend_s``,
``postprocess_s`` (softmax/argmax/scores) and ``write_s`` (writer thread), ``sink_wait_s`` (the engine's thread waiting for the writer
thread), ``inference_s`` (the tile loop's wall time), ``overviews_s`` and, for a COG,
``cog_write_s`` (the rasters' finalisation, summed; in ``rasters_finalize_s``), ``reports_s``,
``total_s``.

Memory is independent of the scene height and linear in its width: the open strip's
accumulator ``[K, tile, W]`` float32, one strip of input per modality, a few batches of input
in the reader's queue and of logits in the writer's (:data:`~rsvl_runtime.sink.SINK_QUEUE`),
and the writers' 512-row block buffers.

``predict_fn(optical [B,3,t,t] | None, sar [B,1,t,t] | None) -> logits [B,K,t,t]`` (float32,
inputs already normalised; a missing modality is ``None``). Nodata pixels (declared nodata,
the ``nodata`` override, NaN/inf in SAR) are fed as 0 (the normalised mean) and come out as
255 in labels/mask and 0 in scores.

Outputs are transactional (:mod:`rsvl_runtime.transaction`: lock, temporary sibling folder,
one swap at the end, early free-space check) and a large scene interrupted mid-way resumes
from its last checkpointed strip (:mod:`rsvl_runtime.resume`), bit-identical to a full run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from tqdm.auto import tqdm  # at import: 60-90 ms (its notebook probe), once per process, not per scene

from . import outputs as out
from . import resume
from .classes import ClassStats, write_classes_json
from .finished import FinishedRun
from .options import TASKS, InputOptions, NodataArg, SceneOptions
from .postprocess import labels_and_scores, softmax
from .preview import write_preview
from .raster_io import pixel_area_m2
from .reading import (
    Batch,
    Decimated,
    InputHasher,
    Prefetcher,
    ReadStats,
    Sources,
    Strip,
    iter_scene_items,
    prepare_sources,
)
from .report import THUMBNAIL_PX, input_thumbnail, write_report
from .parallel import WorkPool
from .sink import Blender, InlineSink, OutputSpec, SceneWriters, SinkThread, open_writers
from .stac import write_stac_item  # pystac at import (70-80 ms), not after a scene's tile loop
from .styling import style_outputs
from .tiling import TileGrid
from .transaction import OutputTransaction, disk_full, is_no_space, no_space_error

__all__ = ["TASKS", "InputOptions", "NodataArg", "PredictFn", "Prefetcher", "SceneOptions", "SceneResult",
           "SceneRun", "iter_scene_items", "labels_and_scores", "prepare_sources", "run_scene", "softmax"]

PredictFn = Callable[[np.ndarray | None, np.ndarray | None], np.ndarray]

log = logging.getLogger(__name__)


@dataclass
class SceneResult:
    """What :func:`run_scene` produced, with its timings."""

    out_dir: Path
    outputs: dict[str, Path]
    classes: list[dict[str, Any]]
    tiles: int
    seconds: float
    width: int
    height: int
    crs: str | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else float("inf")

    @property
    def megapixels_per_s(self) -> float:
        return self.width * self.height / 1e6 / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        """One line: tiles, seconds, tiles/s, megapixels/s."""
        return (f"{self.tiles} tiles, {self.width}x{self.height} px in {self.seconds:.2f} s "
                f"({self.tiles_per_s:.1f} tiles/s, {self.megapixels_per_s:.2f} MP/s)")


def run_scene(predict_fn: PredictFn, optical: str | Path | None, sar: str | Path | None,
              out_dir: str | Path, options: SceneOptions | None = None, **kwargs: Any) -> SceneResult:
    """Segment a whole scene tile by tile and write the output folder.

    ``optical``/``sar``: GeoTIFF paths (either may be None). ``options``: the run's
    :class:`~rsvl_runtime.options.SceneOptions`; keyword arguments (the flat option names:
    ``class_names=``, ``tile=``, ``bands=``, ``nodata=`` ...) build them, or change some of
    ``options`` (:meth:`SceneOptions.replace`). Outputs are committed atomically and
    ``done.json`` is written last (see :func:`rsvl_runtime.outputs.is_complete`).
    """
    if options is None:
        opts = SceneOptions.from_kwargs(**kwargs)
    else:
        opts = options.replace(**kwargs) if kwargs else options
    env = {} if opts.gdal_cache_mb is None else {"GDAL_CACHEMAX": int(opts.gdal_cache_mb) * 1024 * 1024}
    with rasterio.Env(**env):
        result = _execute(predict_fn, optical, sar, Path(out_dir), opts)
    if opts.progress:
        _print_summary(result)
    return result


def _execute(predict_fn: PredictFn, optical: str | Path | None, sar: str | Path | None, out_dir: Path,
             options: SceneOptions) -> SceneResult:
    """Check the options and inputs, open the transaction, run, commit (or abort)."""
    t_start = time.perf_counter()
    options.check()
    sources = prepare_sources(optical, sar, options.inputs)
    with rasterio.open(sources.reference.path) as ref:
        run = SceneRun(predict_fn, options, sources, ref, out_dir, t_start)
        txn = run.txn
        leftovers = txn.begin(out.estimate_output_bytes(run.grid.width, run.grid.height, run.spec.bands))
        try:
            return run.execute(leftovers)
        except BaseException as e:
            txn.abort(keep=isinstance(e, KeyboardInterrupt))
            if not isinstance(e, KeyboardInterrupt) and (is_no_space(e) or disk_full(txn.tmp.parent)):
                raise no_space_error(txn.out_dir, e) from e
            raise
        finally:
            txn.close()


class SceneRun:
    """One scene run: its options and checked inputs, the tile grid, the output transaction,
    the writers and class statistics (:class:`~rsvl_runtime.sink.SceneWriters`, with the resume
    plan and checkpoints) and the timings.

    ``ref`` is the open reference raster (optical, else SAR): the grid, georeferencing and pixel
    areas come from it. :meth:`execute` runs once the transaction :attr:`txn` has begun.
    """

    def __init__(self, predict_fn: PredictFn, options: SceneOptions, sources: Sources, ref: Any,
                 out_dir: Path, t_start: float) -> None:
        self.predict_fn, self.options, self.sources, self.ref = predict_fn, options, sources, ref
        self.out_dir, self.t_start = out_dir, t_start
        self.txn = OutputTransaction(out_dir)
        self.palette = options.check()
        self.grid = TileGrid(ref.height, ref.width, options.tile, options.overlap)
        self.spec = OutputSpec.of(options)
        self.signature = self._signature()
        self.writers: SceneWriters | None = None
        self.hasher: InputHasher | None = None
        self.timings: dict[str, float] = {}
        self.thumbnail: Decimated | None = None  # the report's input thumbnail, gathered while reading
        self._t_finalize = 0.0

    # ------------------------------------------------------------------ resume state
    def _signature(self) -> str:
        """Everything that changes the result: inputs (path, size, mtime), bands, nodata, specs,
        outputs, tiling and the bundle (its digest, backend, precision)."""
        mods = self.sources.modalities
        return resume.signature({
            "inputs": {m.modality: resume.input_fingerprint(m.path) for m in mods},
            "bands": {m.modality: list(m.bands) for m in mods}, "nodata": {m.modality: m.nodata for m in mods},
            "specs": [self.sources.optical_spec, self.sources.sar_spec], "sar_units": self.sources.sar_units,
            "scaling": {k: getattr(self.options.inputs, k) for k in ("sensor", "scale", "offset", "stretch")},
            "min_score": self.options.min_score,
            "outputs": asdict(self.spec), "tiling": self.options.tiling, "window": self.options.window,
            "bundle": {k: v for k, v in (self.options.bundle_info or {}).items() if k != "bundle"}})

    def _probe(self) -> int:
        """crc32 of the logits of the scene's first batch."""
        items = iter_scene_items(self.sources, self.grid, self.options.batch)
        try:
            first = next(i for i in items if isinstance(i, Batch))
        finally:
            items.close()
        return resume.logits_crc(np.asarray(self.predict_fn(first.optical, first.sar), np.float32))

    def _find_checkpoint(self, leftovers: list[Path]) -> resume.Checkpoint | None:
        """Adopt the checkpointed folder of a killed run with the same signature and model output."""
        found = None
        for p in leftovers:
            cp = resume.Checkpoint.load(p)
            if found is None and cp is not None and cp.signature == self.signature:
                if cp.probe == self._probe():
                    self.txn.adopt(p)
                    found = cp
                else:
                    log.warning("%s: the model's output changed since the interrupted run; starting over", p)
        self.txn.drop_leftovers([p for p in leftovers if p.exists()])
        return found

    def _open_writers(self, cp: resume.Checkpoint | None) -> SceneWriters:
        """Writers and statistics of a fresh run, or of the checkpoint ``cp`` (resumed)."""
        txn, grid, spec = self.txn, self.grid, self.spec
        stage = out.OutputStage(txn.tmp)
        if cp is not None:
            try:
                stats = ClassStats.from_dict(len(spec.label_names), cp.stats)
                plan = resume.resume_plan(grid, cp.next_strip, self.options.batch)
                if plan.rows != cp.rows:
                    raise ValueError(f"checkpoint at row {cp.rows} is not a strip boundary of the grid")
                labels, scores = open_writers(stage, self.ref, spec, cp)
                log.info("%s: resuming at row %d of %d", txn.out_dir, cp.rows, grid.height)
            except Exception as e:  # noqa: BLE001 - a damaged checkpoint is only a lost head start
                log.warning("%s: cannot resume (%s); starting over", txn.out_dir, e)
                stage.discard()
                resume.clear(txn.tmp)
                cp = None
        if cp is None:
            cp = resume.Checkpoint(self.signature, None)  # type: ignore[arg-type]
            stats = ClassStats(len(spec.label_names))
            labels, scores = open_writers(stage, self.ref, spec, None)
            plan = resume.ResumePlan()
        writers = {spec.raster_name: labels, **({out.SCORES: scores} if scores is not None else {})}
        ckpt = resume.Checkpointer(txn.tmp, cp, writers, stats, len(grid.row_offsets))
        return SceneWriters(stage, labels, scores, stats, plan, ckpt)

    # ------------------------------------------------------------------ the run
    def execute(self, leftovers: list[Path]) -> SceneResult:
        """Resume or start, infer into the writers, finalise the rasters, reports, then the swap."""
        self.writers = w = self._open_writers(self._find_checkpoint(leftovers))
        self.hasher = InputHasher({m.modality: m for m in self.sources.modalities}, self.options.hash_inputs,
                                  background=self.options.pipeline == "overlap")  # serial: between engine calls
        closing: out.BackgroundClose | None = None
        try:
            self.timings = self._infer(w)
            resume.clear(self.txn.tmp)  # finalising is not resumable: a kill from here starts over
            self._t_finalize = time.perf_counter()
            if w.scores is not None:  # the longest encode: started first, runs beside the rest
                closing = out.BackgroundClose(w.scores)
            w.labels.close()  # read by the preview and the styling
        except BaseException:
            if closing is not None:  # the scores' encode must stop using its file first
                closing.wait(raise_error=False)
            for writer in w.writers:
                writer.abort()
            raise
        self.timings["resumed_at_row"] = float(w.plan.rows)
        try:
            return self._finish(w, closing)
        finally:
            if closing is not None:  # never leave the encode running into an aborted folder
                closing.wait(raise_error=False)

    def _rasters_done(self, w: SceneWriters, closing: out.BackgroundClose | None) -> None:
        """Wait for the rasters' finalisation; record its timings (``rasters_finalize_s``: its
        wall time, ``overviews_s``/``cog_write_s``: summed over the rasters)."""
        if closing is not None:
            closing.wait()
        self.timings["rasters_finalize_s"] = time.perf_counter() - self._t_finalize
        for key in ("overviews_s", "cog_write_s"):
            spent = [wr.timings[key] for wr in w.writers if key in wr.timings]
            if spent:
                self.timings[key] = sum(spent)

    def _infer(self, w: SceneWriters) -> dict[str, float]:
        """The tile loop: read, predict (this thread), blend and emit finished rows. The
        ``serial`` pipeline runs the CPU stages here between engine calls, each split over the
        :class:`~rsvl_runtime.parallel.WorkPool`; ``overlap`` prefetches in a reader thread
        and blends/writes in a writer thread (:class:`~rsvl_runtime.sink.SinkThread`). Returns
        the timings (with ``workers``)."""
        t0 = time.perf_counter()
        grid, opts, plan = self.grid, self.options, w.plan
        serial = opts.pipeline != "overlap"
        read_stats = ReadStats()
        pool = WorkPool(opts.workers)
        blender = Blender(grid, opts, w, pixel_area_m2(self.ref), {}, pool)
        predict_s = hash_s = 0.0
        bar = tqdm(total=grid.n_tiles, initial=plan.first_tile, unit="tile", desc="tiles",
                   disable=not opts.progress, leave=False)
        self.thumbnail = Decimated(grid.height, grid.width, THUMBNAIL_PX)
        items = iter_scene_items(self.sources, grid, opts.batch, read_stats, plan.first_tile, pool, self.thumbnail)
        reader = items if serial else Prefetcher(items, opts.prefetch)
        sink: SinkThread | InlineSink = InlineSink(blender) if serial else SinkThread(blender)
        hasher = self.hasher
        # the inputs' sha256 between engine calls (serial), done by about two thirds of the loop
        calls = max(1, -(-(grid.n_tiles - plan.first_tile) // max(1, opts.batch)))
        hash_step = -(-3 * (hasher.total_bytes if hasher is not None else 0) // (2 * calls))
        try:
            for item in reader:
                if isinstance(item, Strip):
                    sink.strip(item.row, item.valid)
                    continue
                tp = time.perf_counter()
                logits = blender.check(self.predict_fn(item.optical, item.sar), len(item.tiles))
                predict_s += time.perf_counter() - tp
                sink.add(item.tiles, logits)
                if hash_step and serial:
                    th = time.perf_counter()
                    hasher.step(hash_step, pool)  # type: ignore[union-attr]
                    hash_s += time.perf_counter() - th
                bar.update(len(item.tiles))
            sunk = sink.finish()
        finally:
            sink.close()
            if serial:
                items.close()
            else:
                reader.close()  # type: ignore[union-attr]
            bar.close()
            pool.close()
        return {"inference_s": time.perf_counter() - t0, "read_s": read_stats.seconds,
                "normalise_s": read_stats.normalise_seconds, "batch_s": read_stats.batch_seconds,
                "predict_s": predict_s, "hash_s": hash_s, **sunk,
                "workers": float(pool.workers)}

    def _finish(self, w: SceneWriters, closing: out.BackgroundClose | None = None) -> SceneResult:
        """Class table, preview, report (and polygons, STAC item when asked) into the stage,
        commit them in the temporary folder, done.json, then swap the folder in. ``closing``:
        the scores raster being finalised meanwhile (waited for before the timings)."""
        t0 = time.perf_counter()
        # the input's thumbnail encodes beside the class table, preview and styling (Pillow's
        # encoders release the GIL; 15 ms of a run's fixed cost at the end, 52 ms as PNG)
        values = self.thumbnail.values if self.thumbnail is not None else None
        thumb_pool = ThreadPoolExecutor(1, thread_name_prefix="rsvl-thumbnail")
        thumb = thumb_pool.submit(input_thumbnail, self.sources, values)
        thumb_pool.shutdown(wait=False)
        grid, task, class_names, palette = self.grid, self.spec.task, list(self.spec.class_names), self.palette
        crs = self.ref.crs.to_string() if self.ref.crs is not None else None
        table = w.stats.table(self.spec.label_names, palette)  # classes (+ "unclassified")
        write_classes_json(w.stage.temp(out.CLASSES), table, w.stats, crs,
                           self.spec.scoring.describe() if self.spec.scoring is not None else None)
        png = write_preview(w.stage.path(self.spec.raster_name), w.stage.temp(out.PREVIEW), palette,
                            self.spec.label_names, [c["fraction"] for c in table])
        style_outputs(w.stage, self.spec.raster_name, table, "mask" if task == "referring" else "class")
        assert self.hasher is not None
        t_wait = time.perf_counter()
        self._rasters_done(w, closing)
        t0 += time.perf_counter() - t_wait  # reports_s: without the wait
        seconds = time.perf_counter() - self.t_start
        timings = {**(self.options.engine_timings or {}), **self.timings, "total_s": seconds,
                   "tiles_per_s": grid.n_tiles / seconds if seconds > 0 else 0.0,
                   "megapixels_per_s": grid.width * grid.height / 1e6 / seconds if seconds > 0 else 0.0}
        raster = {"size": f"{grid.width} x {grid.height} px", "crs": crs or "none",
                  "transform": list(self.ref.transform)[:6], "task": task, **self.options.tiling,
                  "tiles": grid.n_tiles, "pipeline": "overlap" if self.options.pipeline == "overlap" else "serial"}
        run = FinishedRun(title=f"rsvl — {Path(self.sources.reference.path).name}", task=task,
                          out_dir=self.out_dir, stage=w.stage, raster_name=self.spec.raster_name,
                          class_table=table, stats=w.stats, palette=palette, crs=crs,
                          transform=self.ref.transform, width=grid.width, height=grid.height,
                          options=self.options, sources=self.sources, raster=raster, timings=timings,
                          thumbnail=values)
        if self.options.vector:
            from .vectors import write_vectors

            write_vectors(run)
        run.inputs = self.hasher.records()
        write_report(w.stage.temp(out.REPORT), run, preview_png=png, thumbnail=thumb.result())
        if self.options.stac:
            write_stac_item(run)
        timings["reports_s"] = time.perf_counter() - t0
        committed = w.stage.commit()
        out.write_done(w.stage.out_dir, committed, {"task": task, "timings": timings, "inputs": run.inputs,
                                                    "raster": raster, "class_names": class_names})
        self.txn.commit()
        out_dir = self.out_dir
        outputs = {name: out_dir / name for name in committed}
        return SceneResult(out_dir=out_dir, outputs={**outputs, out.DONE: out_dir / out.DONE}, classes=table,
                           tiles=grid.n_tiles, seconds=time.perf_counter() - self.t_start, width=grid.width,
                           height=grid.height, crs=crs, timings=timings)


def _print_summary(result: SceneResult) -> None:
    try:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True).print(f"[bold green]done[/] {escape(result.summary())} -> "
                                   f"{escape(str(result.out_dir))}")
    except ImportError:  # pragma: no cover - rich is a dependency
        import sys

        print(f"done {result.summary()} -> {result.out_dir}", file=sys.stderr)
