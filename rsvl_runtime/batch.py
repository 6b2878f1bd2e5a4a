"""Running a batch: the per-scene step and the local runner (plan -> **run** -> summary).

The plan is :mod:`rsvl_runtime.batch_plan` (scene records from ``--inputs``), the summary
:mod:`rsvl_runtime.batch_summary`; their names are re-exported here, so
``from rsvl_runtime.batch import discover_records, run_local, read_summary`` keeps working.

:func:`run_local` runs the records in this process with one loaded
:class:`~rsvl_runtime.segmenter.Segmenter` (described by a :class:`ModelSpec`); the Ray runner
(:mod:`rsvl_runtime.ray_runner`) calls the same :func:`process_scene` in its actors. Each
scene is written to ``out_dir/<id>/`` exactly as ``rsvl-infer`` writes a single scene; a scene
whose folder is already complete (``done.json``, see :func:`rsvl_runtime.outputs.is_complete`)
with the same vocabulary is skipped, so rerunning an interrupted job finishes it. Per-scene
failures (a misregistered pair, an unreadable raster) are caught and reported.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from . import outputs as out
from .batch_plan import (
    RASTER_SUFFIXES,
    RESERVED_IDS,
    BatchInputError,
    PathLike,
    SceneRecord,
    as_records,
    discover_records,
    records_from_folders,
    records_from_manifest,
    records_from_pattern,
)
from .batch_summary import (
    AREA_PREFIX,
    STATUSES,
    SUMMARY_COLUMNS,
    SUMMARY_CSV,
    SUMMARY_PARQUET,
    BatchResult,
    read_summary,
    summary_columns,
    write_summary,
)

__all__ = ["AREA_PREFIX", "RASTER_SUFFIXES", "RESERVED_IDS", "STATUSES", "SUMMARY_COLUMNS", "SUMMARY_CSV",
           "SUMMARY_PARQUET", "BatchInputError", "BatchResult", "ModelSpec", "SceneRecord", "discover_records",
           "load_segmenter", "process_scene", "read_summary", "records_from_folders", "records_from_manifest",
           "records_from_pattern", "run_local", "scene_out_dir", "should_skip", "summary_columns",
           "write_summary"]

log = logging.getLogger("rsvl.batch")


@dataclass(frozen=True)
class ModelSpec:
    """The model every scene of a batch runs with: the bundle (path or loaded
    :class:`~rsvl_runtime.bundle.Bundle`), the vocabulary (None: the bundle's default), the
    engine (``backend``, ``precision``, ``batch``, ``threads``) and the pinned digest."""

    bundle: Any
    vocab: Any = None
    backend: str = "auto"
    precision: str = "auto"
    batch: int | None = None
    threads: int | None = None
    expect_digest: str | None = None

    @classmethod
    def of(cls, bundle: Any, **kwargs: Any) -> ModelSpec:
        """``bundle`` as a spec (a :class:`ModelSpec` is changed by ``kwargs``); unknown keywords
        are a TypeError."""
        unknown = sorted(set(kwargs) - _MODEL_FIELDS)
        if unknown:
            raise TypeError(f"unknown model option(s) {', '.join(unknown)}; known: {', '.join(sorted(_MODEL_FIELDS))}")
        if isinstance(bundle, ModelSpec):
            from dataclasses import replace

            return replace(bundle, **kwargs)
        return cls(bundle, **kwargs)

    def load(self) -> Any:
        """The loaded :class:`~rsvl_runtime.segmenter.Segmenter` (:func:`load_segmenter`)."""
        return load_segmenter(self)


_MODEL_FIELDS = frozenset(f.name for f in fields(ModelSpec)) - {"bundle"}


# ============================================================================ the per-scene step
def scene_out_dir(out_dir: PathLike, record: SceneRecord) -> Path:
    return Path(out_dir) / record.id


def _class_names(seg: Any) -> list[str]:
    return [c.name for c in getattr(seg, "classes", [])]


def _area_columns(table: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    return {f"{AREA_PREFIX}{c['name']}": float(c["area_m2"]) for c in table}


def _row(record: SceneRecord, status: str, folder: Path | None, error: str = "", **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"scene": record.id, "status": status, "error": error, "tiles": None, "seconds": None,
                           "width": None, "height": None, "optical": record.optical or "", "sar": record.sar or "",
                           "out_dir": str(folder) if folder is not None else ""}
    row.update(extra)
    return row


def _completed_row(record: SceneRecord, folder: Path) -> dict[str, Any]:
    """Summary row of an already complete output folder (read back from done.json/classes.json)."""
    extra: dict[str, Any] = {}
    try:
        done = json.loads((folder / out.DONE).read_text(encoding="utf-8"))
        raster = done.get("raster", {})
        extra["tiles"] = raster.get("tiles")
        size = str(raster.get("size", ""))
        m = re.match(r"(\d+) x (\d+)", size)
        if m:
            extra["width"], extra["height"] = int(m.group(1)), int(m.group(2))
        classes = json.loads((folder / out.CLASSES).read_text(encoding="utf-8"))
        extra.update(_area_columns(classes.get("classes", [])))
    except (OSError, ValueError, AttributeError):
        pass
    return _row(record, "skipped", folder, seconds=0.0, **extra)


def _done_class_names(folder: Path) -> list[str] | None:
    try:
        return list(json.loads((folder / out.DONE).read_text(encoding="utf-8")).get("class_names") or [])
    except (OSError, ValueError, AttributeError):
        return None


def should_skip(seg: Any, record: SceneRecord, out_dir: PathLike) -> bool:
    """True when the scene's output folder is complete and was made with the current vocabulary."""
    folder = scene_out_dir(out_dir, record)
    if not out.is_complete(folder):
        return False
    names = _done_class_names(folder)
    want = _class_names(seg)
    return not want or names is None or names == want


def process_scene(seg: Any, record: SceneRecord | Mapping[str, Any], out_dir: PathLike,
                  options: Mapping[str, Any] | None = None, *, resume: bool = True) -> dict[str, Any]:
    """Run one scene with a loaded :class:`~rsvl_runtime.segmenter.Segmenter` into
    ``out_dir/<id>/``; never raises for a per-scene failure (the error goes into the row).

    Returns the summary row: ``scene, status, error, tiles, seconds, width, height, optical, sar,
    out_dir`` and ``area_m2:<class>`` per class. ``status`` is ``skipped`` when the folder is
    already complete (``resume``), ``error`` when the record or the run failed.
    """
    rec = record if isinstance(record, SceneRecord) else SceneRecord.from_dict(record)
    if rec.error:
        return _row(rec, "error", None, rec.error)
    folder = scene_out_dir(out_dir, rec)
    if resume and should_skip(seg, rec, out_dir):
        log.info("%s: complete, skipped", rec.id)
        return _completed_row(rec, folder)
    t0 = time.perf_counter()
    try:
        opts = {"progress": False, **dict(options or {})}
        result = seg.predict_raster(rec.optical, rec.sar, folder, **opts)
    except Exception as e:  # noqa: BLE001 - one bad scene never stops the job
        msg = _error_message(e, rec)
        log.warning("%s: failed: %s", rec.id, msg)
        return _row(rec, "error", folder, msg, seconds=round(time.perf_counter() - t0, 3))
    log.info("%s: %s", rec.id, result.summary() if hasattr(result, "summary") else "done")
    return _row(rec, "ok", folder, tiles=int(result.tiles), seconds=round(float(result.seconds), 3),
                width=int(result.width), height=int(result.height), **_area_columns(result.classes))


def _error_message(e: BaseException, rec: SceneRecord) -> str:
    """``Type: message`` of a per-scene failure, with the scene's files when the message names none."""
    msg = f"{type(e).__name__}: {e}"
    files = [f"{m} {p}" for m, p in (("optical", rec.optical), ("sar", rec.sar)) if p]
    if files and not any(str(p) in msg for p in (rec.optical, rec.sar) if p):
        msg += f" (scene {rec.id}: {', '.join(files)})"
    return msg


def load_segmenter(model: Any, **kwargs: Any) -> Any:
    """Load the bundle's :class:`Segmenter` once and set the vocabulary (None: the bundle's default).

    ``model``: a :class:`ModelSpec`, or a bundle with the spec's fields as keywords (``vocab``,
    ``backend``, ``precision``, ``batch``, ``threads``, ``expect_digest``: pins the bundle, see
    :func:`rsvl_runtime.segmenter.open_bundle`).
    """
    from .segmenter import Segmenter, open_bundle

    spec = ModelSpec.of(model, **kwargs)
    b = open_bundle(spec.bundle, spec.expect_digest)
    if b.task != "semantic":
        raise ValueError(f"{b.root} is a {b.task} bundle; batch runs support semantic (TSMNet) bundles")
    seg = Segmenter.load(b, backend=spec.backend, precision=spec.precision, batch=spec.batch, threads=spec.threads)
    if spec.vocab is not None:
        seg.set_vocabulary(spec.vocab)
    return seg


# ============================================================================ local runs
def run_local(records: Iterable[SceneRecord | Mapping[str, Any]], bundle: Any, out_dir: PathLike, *,
              options: Mapping[str, Any] | None = None, resume: bool = True, segmenter: Any = None,
              on_row: Callable[[dict[str, Any]], None] | None = None, **model: Any) -> BatchResult:
    """Run every record in this process with one loaded model.

    ``bundle``: path, :class:`Bundle` or :class:`ModelSpec`; ``model``: the spec's fields
    (``vocab``: classes, None: the bundle's default; ``backend``, ``precision``, ``batch``,
    ``threads``; ``expect_digest`` pins the bundle). ``options``: ``predict_raster`` options
    (``bands``, ``nodata``, ``sar_units``, ``write_scores``, ...). ``resume=False`` reruns
    complete scenes; ``segmenter``: an already loaded model. Writes ``out_dir/<id>/`` per scene
    and ``summary.csv`` / ``summary.parquet`` (also when interrupted, with the scenes done so far).
    """
    t0 = time.perf_counter()
    spec = ModelSpec.of(bundle, **model)
    recs = as_records(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    seg = segmenter
    try:
        for rec in recs:
            if seg is None and not rec.error:
                seg = spec.load()
            row = process_scene(seg, rec, out_dir, options, resume=resume)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    finally:
        csv_path, pq_path = write_summary(out_dir, rows)
    res = BatchResult(rows, out_dir, time.perf_counter() - t0, csv_path, pq_path, {"runner": "local"})
    log.info("%s", res.summary_line())
    return res
