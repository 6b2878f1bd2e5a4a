"""Tiled inference over a whole scene with bounded memory.

:func:`run_scene` reads the optical and/or SAR rasters one strip (a row of tiles) at a time in
a reader thread that prefetches normalised batches into a bounded queue, calls ``predict_fn``
on each batch, blends the tile logits with a smooth window (:mod:`rsvl_runtime.tiling`), and
streams finished rows through softmax/argmax to the output writers
(:mod:`rsvl_runtime.outputs`). Memory is independent of the scene height and linear in its
width: the open strip's accumulator ``[K, tile, W]`` float32, one strip of input per modality,
a few batches in the queue and the writers' 512-row block buffers.

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
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from . import outputs as out
from . import resume
from .bundle import sha256_file
from .normalization import normalize_optical, normalize_sar
from .raster_io import (
    ModalityInput,
    RasterInputError,
    check_coregistered,
    open_raster,
    pixel_area_m2,
    prepare_input,
    read_window,
    valid_mask,
)
from .tiling import (
    FinishedRows,
    RowAccumulator,
    Tile,
    TileGrid,
    blend_window,
    pad_to_tile,
)
from .transaction import OutputTransaction, disk_full, is_no_space, no_space_error

PredictFn = Callable[[np.ndarray | None, np.ndarray | None], np.ndarray]
NodataArg = float | Mapping[str, float | None] | None
TASKS = ("semantic", "referring")

#: Elements per chunk when turning finished rows into labels/scores (bounds temporaries).
POSTPROCESS_ELEMENTS = 1 << 20
#: Deflate level of scores.tif (K bands: speed matters more than the last 15 % of size).
SCORES_ZLEVEL = 1
#: Columns normalised at once when preparing a strip (bounds temporaries).
NORMALIZE_COLUMNS = 2048

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


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class _Sources:
    optical: ModalityInput | None
    sar: ModalityInput | None
    optical_spec: Mapping[str, Any] | None
    sar_spec: Mapping[str, Any] | None
    sar_units: str | None

    @property
    def reference(self) -> ModalityInput:
        ref = self.optical or self.sar
        assert ref is not None
        return ref


def _nodata_for(nodata: NodataArg, modality: str) -> float | None:
    if isinstance(nodata, Mapping):
        v = nodata.get(modality)
        return None if v is None else float(v)
    return None if nodata is None else float(nodata)


def prepare_sources(optical: str | Path | None, sar: str | Path | None, *,
                    optical_spec: Mapping[str, Any] | None, sar_spec: Mapping[str, Any] | None,
                    sar_units: str | None = None, bands: Sequence[int] | None = None,
                    sar_bands: Sequence[int] | None = None, nodata: NodataArg = None) -> _Sources:
    """Open and check the inputs (bands, dtype, nodata, co-registration) before anything is written."""
    if optical is None and sar is None:
        raise RasterInputError("no input raster: give an optical raster, a SAR raster or both")
    opt = sar_in = None
    if optical is not None:
        if optical_spec is None:
            raise RasterInputError(f"optical raster {optical} given but the bundle has no optical input; "
                                   "run with the SAR raster only")
        opt = prepare_input(optical, "optical", optical_spec, bands=bands,
                            nodata=_nodata_for(nodata, "optical"))
    if sar is not None:
        if sar_spec is None:
            raise RasterInputError(f"SAR raster {sar} given but the bundle has no SAR input; "
                                   "run with the optical raster only")
        sar_in = prepare_input(sar, "sar", sar_spec, bands=sar_bands, nodata=_nodata_for(nodata, "sar"))
    if opt is not None and sar_in is not None:
        with open_raster(opt.path) as a, open_raster(sar_in.path) as b:
            check_coregistered(a, b)
    return _Sources(opt, sar_in, optical_spec, sar_spec, sar_units)


# ----------------------------------------------------------------------------- reader thread
@dataclass
class _Strip:
    row: int
    valid: np.ndarray  # [strip_height, W] bool


@dataclass
class _Batch:
    tiles: list[Tile]
    optical: np.ndarray | None
    sar: np.ndarray | None


class _ReadStats:
    def __init__(self) -> None:
        self.seconds = 0.0


def _read_strip(ds: Any, src: ModalityInput, grid: TileGrid, row: int) -> np.ndarray:
    y0, y1 = grid.strip_rows(row)
    return read_window(ds, src.bands, Window(0, y0, grid.width, y1 - y0))


def _normalised_strip(datasets: Mapping[str, Any], sources: _Sources, grid: TileGrid,
                      row: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read and normalise one strip of every modality; invalid pixels are set to 0."""
    valid = np.ones((grid.strip_height, grid.width), bool)
    raw: dict[str, np.ndarray] = {}
    for name, src in (("optical", sources.optical), ("sar", sources.sar)):
        if src is None:
            continue
        raw[name] = _read_strip(datasets[name], src, grid, row)
        valid &= valid_mask(raw[name], src.nodata)
    norm: dict[str, np.ndarray] = {}
    for name, values in raw.items():
        norm[name] = np.empty(values.shape, np.float32)
        for x0 in range(0, grid.width, NORMALIZE_COLUMNS):
            cols = slice(x0, x0 + NORMALIZE_COLUMNS)
            norm[name][..., cols] = _normalise(name, values[..., cols], sources)
        norm[name][:, ~valid] = 0.0
    return valid, norm


def _normalise(name: str, values: np.ndarray, sources: _Sources) -> np.ndarray:
    if name == "optical":
        return normalize_optical(values, sources.optical_spec or {})
    with np.errstate(invalid="ignore"):
        return normalize_sar(values, sources.sar_spec or {}, sources.sar_units)


class _BatchBuilder:
    """Copies tiles into preallocated ``[batch, C, t, t]`` arrays (no reference to the strip kept)."""

    def __init__(self, batch: int, tile: int, channels: Mapping[str, int]) -> None:
        self.batch, self.tile, self.channels = batch, tile, dict(channels)
        self._new()

    def _new(self) -> None:
        self.tiles: list[Tile] = []
        self.arrays = {name: np.empty((self.batch, c, self.tile, self.tile), np.float32)
                       for name, c in self.channels.items()}

    def add(self, tile: Tile, strips: Mapping[str, np.ndarray]) -> _Batch | None:
        """Add one tile cut from the normalised strips; returns a batch when it is full."""
        i = len(self.tiles)
        for name, strip in strips.items():
            self.arrays[name][i] = pad_to_tile(strip[:, :tile.height, tile.x:tile.x + tile.width], self.tile)
        self.tiles.append(tile)
        return self.take() if len(self.tiles) == self.batch else None

    def take(self) -> _Batch | None:
        """The tiles gathered so far as a batch (None when empty)."""
        n = len(self.tiles)
        if n == 0:
            return None
        arrays = {name: a[:n] for name, a in self.arrays.items()}
        out = _Batch(self.tiles, arrays.get("optical"), arrays.get("sar"))
        self._new()
        return out


def iter_scene_items(sources: _Sources, grid: TileGrid, batch: int, stats: _ReadStats | None = None,
                     start: int = 0) -> Iterator[_Strip | _Batch]:
    """Strips (validity masks) and batches of normalised tiles, in row-major tile order, from
    the tile of row-major index ``start`` (a resumed run)."""
    datasets = {}
    try:
        for name, src in (("optical", sources.optical), ("sar", sources.sar)):
            if src is not None:
                datasets[name] = rasterio.open(src.path)
        builder = _BatchBuilder(batch, grid.tile, {name: len(src.bands) for name, src in
                                                   (("optical", sources.optical), ("sar", sources.sar))
                                                   if src is not None})
        n_cols = len(grid.col_offsets)
        for row in range(start // n_cols, len(grid.row_offsets)):
            t0 = time.perf_counter()
            valid, norm = _normalised_strip(datasets, sources, grid, row)
            if stats is not None:
                stats.seconds += time.perf_counter() - t0
            yield _Strip(row, valid)
            for tile in grid.row_tiles(row)[max(0, start - row * n_cols):]:
                full = builder.add(tile, norm)
                if full is not None:
                    yield full
            del norm  # before the next strip is read: one strip in memory at a time
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


# ----------------------------------------------------------------------------- post-processing
def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Numerically stable softmax (float32)."""
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def labels_and_scores(logits: np.ndarray, valid: np.ndarray,
                      with_scores: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Blended logits ``[K, n, W]`` -> labels uint8 ``[n, W]`` (255 = nodata) and scores uint8
    ``[K, n, W]`` (probability * 255 clipped to 1..255, 0 = nodata). ``K == 1``: a single
    target logit, label 1 where it is > 0."""
    if logits.shape[0] == 1:
        labels = (logits[0] > 0).astype(np.uint8)
        probs = 1.0 / (1.0 + np.exp(-logits)) if with_scores else None
    else:
        labels = logits.argmax(axis=0).astype(np.uint8)
        probs = softmax(logits) if with_scores else None
    labels[~valid] = out.LABEL_NODATA
    scores = None
    if probs is not None:
        scores = np.clip(np.rint(probs * 255.0), 1, 255).astype(np.uint8)
        scores[:, ~valid] = out.SCORE_NODATA
    return labels, scores


class _Sink:
    """Turns finished rows into labels/scores, writes them, counts classes, checkpoints."""

    def __init__(self, job: _Job, row_areas: np.ndarray, valids: dict[int, np.ndarray],
                 width: int, channels: int) -> None:
        self.job = job
        self.labels_writer, self.scores_writer = job.labels, job.scores
        self.stats, self.row_areas = job.stats, row_areas
        self.valids = valids  # strip index -> [strip_height, W] validity, filled by the reader
        self.chunk = max(1, POSTPROCESS_ELEMENTS // (channels * width))
        self.postprocess_s = 0.0
        self.write_s = 0.0

    def emit(self, fin: FinishedRows) -> None:
        """Softmax/argmax the finished rows chunk by chunk, write them, count the classes."""
        valid = self.valids.pop(fin.strip)[:fin.n_rows]
        for k in [k for k in self.valids if k < fin.strip]:  # rows only read to align batches
            del self.valids[k]
        if fin.strip < self.job.plan.strip:  # written before the run was resumed
            return
        for i in range(0, fin.n_rows, self.chunk):
            t0 = time.perf_counter()
            rows = slice(i, min(i + self.chunk, fin.n_rows))
            labels, scores = labels_and_scores(fin.logits(rows), valid[rows], self.scores_writer is not None)
            y = fin.y0 + rows.start
            self.stats.update(labels, self.row_areas[y:y + labels.shape[0]])
            t1 = time.perf_counter()
            self.labels_writer.write(labels)
            if self.scores_writer is not None and scores is not None:
                self.scores_writer.write(scores)
            self.postprocess_s += t1 - t0
            self.write_s += time.perf_counter() - t1
        t1 = time.perf_counter()
        self.job.checkpointer.strip_done(fin.strip + 1, fin.y0 + fin.n_rows)
        self.write_s += time.perf_counter() - t1


# ----------------------------------------------------------------------------- input records
class _InputHasher:
    """sha256 of the input files, computed in a background thread while the scene runs."""

    def __init__(self, paths: Mapping[str, Path], enabled: bool) -> None:
        self.paths = dict(paths)
        self.hashes: dict[str, str] = {}
        self._thread = threading.Thread(target=self._run, daemon=True, name="rsvl-hash") if enabled else None
        if self._thread is not None:
            self._thread.start()

    def _run(self) -> None:
        for name, p in self.paths.items():
            self.hashes[name] = sha256_file(p)

    def records(self) -> dict[str, Any]:
        if self._thread is not None:
            self._thread.join()
        recs = {}
        for name, p in self.paths.items():
            st = p.stat()
            recs[name] = {"path": str(p.resolve()), "bytes": st.st_size, "mtime": st.st_mtime,
                          "sha256": self.hashes.get(name)}
        return recs


# ----------------------------------------------------------------------------- the runner
def _check_logits(logits: Any, n: int, channels: int, tile: int) -> np.ndarray:
    arr = np.asarray(logits, dtype=np.float32)
    want = (n, channels, tile, tile)
    if arr.shape != want:
        raise ValueError(f"predict_fn returned logits of shape {tuple(arr.shape)}, expected {want} "
                         "(batch, classes, tile, tile); the vocabulary size or the tile size of the "
                         "bundle does not match the run")
    return arr


def _expected_channels(raw: Any, n_classes: int, task: str) -> int:
    """Logit channels of the run: K for semantic; 2 (or a single target logit) for referring."""
    got = np.shape(raw)[1] if np.ndim(raw) == 4 else None
    if task == "referring" and got == 1:
        return 1
    return n_classes


@dataclass(frozen=True)
class _OutputSpec:
    """What a run writes (also part of its resume signature)."""

    task: str
    class_names: tuple[str, ...]
    write_scores: bool
    cog: bool | None

    @property
    def raster_name(self) -> str:
        return out.MASK if self.task == "referring" else out.LABELS

    @property
    def bands(self) -> int:
        """Output raster bands: labels/mask plus one score band per class."""
        return 1 + (len(self.class_names) if self.task == "semantic" and self.write_scores else 0)


@dataclass
class _Job:
    """The output side of one run: its transaction, staged files, writers, class statistics,
    where it starts (:class:`~rsvl_runtime.resume.ResumePlan`) and its checkpoints."""

    txn: OutputTransaction
    spec: _OutputSpec
    stage: out.OutputStage
    labels: out.GeoTiffRowWriter
    scores: out.GeoTiffRowWriter | None
    stats: out.ClassStats
    plan: resume.ResumePlan
    checkpointer: resume.Checkpointer

    @property
    def writers(self) -> list[out.GeoTiffRowWriter]:
        return [w for w in (self.labels, self.scores) if w is not None]

    def record_probe(self, logits: np.ndarray) -> None:
        """Remember the crc of the scene's first batch (the first one of a fresh run)."""
        if self.checkpointer.cp.probe is None:
            self.checkpointer.cp.probe = resume.logits_crc(logits)


def _open_writers(stage: out.OutputStage, ref: Any, spec: _OutputSpec,
                  cp: resume.Checkpoint | None) -> tuple[out.GeoTiffRowWriter, out.GeoTiffRowWriter | None]:
    """New row writers, or (``cp``) the checkpointed rasters of a resumed run reopened."""
    common = {"width": ref.width, "height": ref.height, "crs": ref.crs, "transform": ref.transform, "cog": spec.cog}

    def path_and_resume(name: str) -> dict[str, Any]:
        if cp is None:
            return {"path": stage.temp(name)}
        f = cp.files[name]
        return {"path": stage.adopt(name, stage.out_dir / f["temp"]), "resume": (cp.rows, int(f["crc"]))}

    labels = out.GeoTiffRowWriter(count=1, nodata=out.LABEL_NODATA, overview_resampling=Resampling.mode,
                                  **path_and_resume(spec.raster_name), **common)
    scores = None
    if spec.bands > 1:
        try:
            scores = out.GeoTiffRowWriter(count=len(spec.class_names), nodata=out.SCORE_NODATA,
                                          descriptions=list(spec.class_names),
                                          overview_resampling=Resampling.average, zlevel=SCORES_ZLEVEL,
                                          **path_and_resume(out.SCORES), **common)
        except BaseException:
            labels.abort()
            raise
    return labels, scores


def _signature(sources: _Sources, spec: _OutputSpec, tiling: Mapping[str, Any], window: str,
               bundle_info: Mapping[str, Any] | None) -> str:
    """Everything that changes the result: inputs (path, size, mtime), bands, nodata, specs,
    outputs, tiling and the bundle (its digest, backend, precision)."""
    mods = [m for m in (sources.optical, sources.sar) if m is not None]
    return resume.signature({
        "inputs": {m.modality: resume.input_fingerprint(m.path) for m in mods},
        "bands": {m.modality: list(m.bands) for m in mods}, "nodata": {m.modality: m.nodata for m in mods},
        "specs": [sources.optical_spec, sources.sar_spec], "sar_units": sources.sar_units,
        "outputs": asdict(spec), "tiling": dict(tiling), "window": window,
        "bundle": {k: v for k, v in (bundle_info or {}).items() if k != "bundle"}})


def _probe(predict_fn: PredictFn, sources: _Sources, grid: TileGrid, batch: int) -> int:
    """crc32 of the logits of the scene's first batch."""
    items = iter_scene_items(sources, grid, batch)
    try:
        first = next(i for i in items if isinstance(i, _Batch))
    finally:
        items.close()
    return resume.logits_crc(np.asarray(predict_fn(first.optical, first.sar), np.float32))


def _find_checkpoint(txn: OutputTransaction, leftovers: list[Path], sig: str,
                     probe: Callable[[], int]) -> resume.Checkpoint | None:
    """Adopt the checkpointed folder of a killed run with the same signature and model output."""
    found = None
    for p in leftovers:
        cp = resume.Checkpoint.load(p)
        if found is None and cp is not None and cp.signature == sig:
            if cp.probe == probe():
                txn.adopt(p)
                found = cp
            else:
                log.warning("%s: the model's output changed since the interrupted run; starting over", p)
    txn.drop_leftovers([p for p in leftovers if p.exists()])
    return found


def _open_job(txn: OutputTransaction, cp: resume.Checkpoint | None, sig: str, ref: Any,
              grid: TileGrid, spec: _OutputSpec, batch: int) -> _Job:
    """Writers and statistics of a fresh run, or of the checkpoint ``cp`` (resumed)."""
    stage = out.OutputStage(txn.tmp)
    if cp is not None:
        try:
            stats = out.ClassStats.from_dict(len(spec.class_names), cp.stats)
            plan = resume.resume_plan(grid, cp.next_strip, batch)
            if plan.rows != cp.rows:
                raise ValueError(f"checkpoint at row {cp.rows} is not a strip boundary of the grid")
            labels, scores = _open_writers(stage, ref, spec, cp)
            log.info("%s: resuming at row %d of %d", txn.out_dir, cp.rows, grid.height)
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint is only a lost head start
            log.warning("%s: cannot resume (%s); starting over", txn.out_dir, e)
            stage.discard()
            resume.clear(txn.tmp)
            cp = None
    if cp is None:
        cp = resume.Checkpoint(sig, None)  # type: ignore[arg-type]
        stats = out.ClassStats(len(spec.class_names))
        labels, scores = _open_writers(stage, ref, spec, None)
        plan = resume.ResumePlan()
    writers = {spec.raster_name: labels, **({out.SCORES: scores} if scores is not None else {})}
    ckpt = resume.Checkpointer(txn.tmp, cp, writers, stats, len(grid.row_offsets))
    return _Job(txn, spec, stage, labels, scores, stats, plan, ckpt)


def _check_args(task: str, class_names: Sequence[str], colors: Sequence[Sequence[int]] | None,
                batch: int) -> list[tuple[int, int, int]]:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task == "referring" and len(class_names) != 2:
        raise ValueError(f"the referring task has 2 classes (background, target), got {list(class_names)}")
    if not 1 <= len(class_names) <= 255:
        raise ValueError(f"need 1..255 classes (255 is the nodata label), got {len(class_names)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    cols = list(colors) if colors is not None else []
    if len(cols) < len(class_names):
        cols += out.default_colors(len(class_names))[len(cols):]
    return [tuple(int(v) for v in c[:3]) for c in cols[:len(class_names)]]  # type: ignore[misc]


def run_scene(predict_fn: PredictFn, optical: str | Path | None, sar: str | Path | None,
              out_dir: str | Path, *, class_names: Sequence[str],
              colors: Sequence[Sequence[int]] | None, optical_spec: Mapping[str, Any] | None,
              sar_spec: Mapping[str, Any] | None, tile: int, overlap: float, batch: int,
              sar_units: str | None = None, bands: Sequence[int] | None = None,
              sar_bands: Sequence[int] | None = None, nodata: NodataArg = None,
              progress: bool = True, write_scores: bool = True, task: str = "semantic",
              bundle_info: Mapping[str, Any] | None = None, prefetch: int = 2,
              cog: bool | None = None, hash_inputs: bool = True,
              window: str = "hann", gdal_cache_mb: int | None = 128) -> SceneResult:
    """Segment a whole scene tile by tile and write the output folder.

    ``optical``/``sar``: GeoTIFF paths (either may be None). ``class_names``/``colors``: the
    vocabulary (K names; colours default to a palette). ``*_spec``: the bundle's modality specs
    (:mod:`rsvl_runtime.normalization`). ``tile``/``overlap``/``batch``: tiling and batch size.
    ``bands``/``sar_bands``: 1-based raster bands in the bundle's band order. ``nodata``: value
    for rasters that declare none (a float, or ``{"optical": v, "sar": v}``). ``task``:
    ``"semantic"`` (labels.tif + scores.tif) or ``"referring"`` (mask.tif, K = 2 or a single
    target logit). ``bundle_info`` is shown in the report. ``cog``: rewrite the rasters with the
    COG driver (None: when available). Outputs are committed atomically and ``done.json`` is
    written last (see :func:`rsvl_runtime.outputs.is_complete`). ``gdal_cache_mb`` caps GDAL's
    block cache (GDAL reads it once per process, so it applies when this is the first GDAL use;
    otherwise set ``GDAL_CACHEMAX`` in the environment); None keeps GDAL's default (5 % of RAM).
    """
    env = {} if gdal_cache_mb is None else {"GDAL_CACHEMAX": int(gdal_cache_mb) * 1024 * 1024}
    with rasterio.Env(**env):
        return _run_scene(predict_fn, optical, sar, out_dir, class_names=class_names, colors=colors,
                          optical_spec=optical_spec, sar_spec=sar_spec, tile=tile, overlap=overlap,
                          batch=batch, sar_units=sar_units, bands=bands, sar_bands=sar_bands,
                          nodata=nodata, progress=progress, write_scores=write_scores, task=task,
                          bundle_info=bundle_info, prefetch=prefetch, cog=cog, hash_inputs=hash_inputs,
                          window=window)


def _run_scene(predict_fn: PredictFn, optical: str | Path | None, sar: str | Path | None,
               out_dir: str | Path, *, class_names: Sequence[str],
               colors: Sequence[Sequence[int]] | None, optical_spec: Mapping[str, Any] | None,
               sar_spec: Mapping[str, Any] | None, tile: int, overlap: float, batch: int,
               sar_units: str | None, bands: Sequence[int] | None, sar_bands: Sequence[int] | None,
               nodata: NodataArg, progress: bool, write_scores: bool, task: str,
               bundle_info: Mapping[str, Any] | None, prefetch: int, cog: bool | None,
               hash_inputs: bool, window: str) -> SceneResult:
    t_start = time.perf_counter()
    palette = _check_args(task, class_names, colors, batch)
    sources = prepare_sources(optical, sar, optical_spec=optical_spec, sar_spec=sar_spec,
                              sar_units=sar_units, bands=bands, sar_bands=sar_bands, nodata=nodata)
    out_dir = Path(out_dir)
    spec = _OutputSpec(task, tuple(class_names), write_scores, cog)
    tiling = {"tile": tile, "overlap": overlap, "batch": batch}
    txn = OutputTransaction(out_dir)
    with rasterio.open(sources.reference.path) as ref:
        grid = TileGrid(ref.height, ref.width, tile, overlap)
        leftovers = txn.begin(out.estimate_output_bytes(grid.width, grid.height, spec.bands))
        try:
            sig = _signature(sources, spec, tiling, window, bundle_info)
            cp = _find_checkpoint(txn, leftovers, sig, lambda: _probe(predict_fn, sources, grid, batch))
            job = _open_job(txn, cp, sig, ref, grid, spec, batch)
            hasher = _InputHasher({m.modality: m.path for m in (sources.optical, sources.sar) if m is not None},
                                  hash_inputs)
            result = _run_job(job, predict_fn, sources, grid, batch, prefetch, window, ref, palette,
                              bundle_info, hasher, tiling, t_start, progress, out_dir)
        except BaseException as e:
            txn.abort(keep=isinstance(e, KeyboardInterrupt))
            if not isinstance(e, KeyboardInterrupt) and (is_no_space(e) or disk_full(txn.tmp.parent)):
                raise no_space_error(txn.out_dir, e) from e
            raise
        finally:
            txn.close()
    if progress:
        _print_summary(result)
    return result


def _run_job(job: _Job, predict_fn: PredictFn, sources: _Sources, grid: TileGrid, batch: int,
             prefetch: int, window: str, ref: Any, palette: list[tuple[int, int, int]],
             bundle_info: Mapping[str, Any] | None, hasher: _InputHasher, tiling: Mapping[str, Any],
             t_start: float, progress: bool, out_dir: Path) -> SceneResult:
    """Inference into the job's writers, finalised rasters, reports, then the swap."""
    class_names, task = list(job.spec.class_names), job.spec.task
    try:
        timings = _infer(predict_fn, sources, grid, batch, prefetch, window, job, pixel_area_m2(ref),
                         len(class_names), task, progress)
        resume.clear(job.txn.tmp)  # finalising is not resumable: a kill from here starts over
        t0 = time.perf_counter()
        for w in job.writers:
            w.close()
    except BaseException:
        for w in job.writers:
            w.abort()
        raise
    timings["rasters_finalize_s"] = time.perf_counter() - t0
    timings["resumed_at_row"] = float(job.plan.rows)
    crs = ref.crs.to_string() if ref.crs is not None else None
    return _finish(job, out_dir, sources, grid, class_names, palette, crs, ref, timings, t_start, task,
                   bundle_info, hasher, tiling)


def _infer(predict_fn: PredictFn, sources: _Sources, grid: TileGrid, batch: int, prefetch: int,
           window: str, job: _Job, row_areas: np.ndarray, n_classes: int, task: str,
           progress: bool) -> dict[str, float]:
    """The tile loop: prefetch, predict, blend, emit finished rows. Returns timings."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    read_stats = _ReadStats()
    valids: dict[int, np.ndarray] = {}
    acc: RowAccumulator | None = None
    sink: _Sink | None = None
    predict_s = blend_s = 0.0
    plan = job.plan
    bar = tqdm(total=grid.n_tiles, initial=plan.first_tile, unit="tile", desc="tiles",
               disable=not progress, leave=False)
    reader = Prefetcher(iter_scene_items(sources, grid, batch, read_stats, plan.first_tile), prefetch)
    try:
        for item in reader:
            if isinstance(item, _Strip):
                valids[item.row] = item.valid
                continue
            tp = time.perf_counter()
            raw = predict_fn(item.optical, item.sar)
            if acc is None:
                channels = _expected_channels(raw, n_classes, task)
                acc = RowAccumulator(grid, channels, blend_window(grid.tile, window), plan.first_row)
                sink = _Sink(job, row_areas, valids, grid.width, channels)
            logits = _check_logits(raw, len(item.tiles), acc.channels, grid.tile)
            job.record_probe(logits)
            predict_s += time.perf_counter() - tp
            for i, t in enumerate(item.tiles):
                if t.row < plan.first_row:  # computed only to keep the batches of the full run
                    continue
                tb = time.perf_counter()
                acc.add(t, logits[i], sink.emit)  # type: ignore[union-attr]
                blend_s += time.perf_counter() - tb
            bar.update(len(item.tiles))
        if acc is None or sink is None:
            raise RuntimeError("the scene produced no tiles")
        blend_s -= sink.postprocess_s + sink.write_s  # emitted from inside acc.add
        sink.emit(acc.finish())
    finally:
        reader.close()
        bar.close()
    total = time.perf_counter() - t0
    return {"inference_s": total, "read_s": read_stats.seconds, "predict_s": predict_s,
            "blend_s": blend_s, "postprocess_s": sink.postprocess_s,
            "write_s": sink.write_s}


def _finish(job: _Job, out_dir: Path, sources: _Sources, grid: TileGrid,
            class_names: Sequence[str], palette: list[tuple[int, int, int]],
            crs: str | None, ref: Any, timings: dict[str, float], t_start: float, task: str,
            bundle_info: Mapping[str, Any] | None, hasher: _InputHasher,
            tiling: Mapping[str, Any]) -> SceneResult:
    """Class table, preview and report into the stage, commit them in the temporary folder,
    done.json, then swap the folder in."""
    t0 = time.perf_counter()
    stage, stats = job.stage, job.stats
    table = stats.table(class_names, palette)
    out.write_classes_json(stage.temp(out.CLASSES), table, stats, crs)
    raster_name = out.MASK if task == "referring" else out.LABELS
    labels_tmp = stage.path(raster_name)
    png = out.write_preview(labels_tmp, stage.temp(out.PREVIEW), palette, class_names,
                            [c["fraction"] for c in table])
    inputs = hasher.records()
    seconds = time.perf_counter() - t_start
    timings = {**timings, "total_s": seconds,
               "tiles_per_s": grid.n_tiles / seconds if seconds > 0 else 0.0,
               "megapixels_per_s": grid.width * grid.height / 1e6 / seconds if seconds > 0 else 0.0}
    raster = {"size": f"{grid.width} x {grid.height} px", "crs": crs or "none",
              "transform": list(ref.transform)[:6], "task": task, **tiling, "tiles": grid.n_tiles}
    out.write_report(stage.temp(out.REPORT), title=f"rsvl — {Path(sources.reference.path).name}",
                     preview_png=png, table=table, timings=timings,
                     inputs={k: v["path"] for k, v in inputs.items()}, raster=raster,
                     bundle_info=bundle_info)
    timings["reports_s"] = time.perf_counter() - t0
    committed = stage.commit()
    out.write_done(stage.out_dir, committed, {"task": task, "timings": timings, "inputs": inputs,
                                              "raster": raster, "class_names": list(class_names)})
    job.txn.commit()
    outputs = {name: out_dir / name for name in committed}
    return SceneResult(out_dir=out_dir, outputs={**outputs, out.DONE: out_dir / out.DONE}, classes=table,
                       tiles=grid.n_tiles, seconds=time.perf_counter() - t_start, width=grid.width,
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
