"""Batch inference over many scenes: scene records, the per-scene step, local runs and summaries.

Scenes come from a manifest or from folders:

- a **manifest** (``.csv``, or ``.json``: a list of objects or ``{"scenes": [...]}``) with the
  columns ``id, optical, sar`` (``sar`` or ``optical`` may be empty for single-modality
  bundles; ``id`` defaults to the optical file's stem). Relative paths are resolved against the
  manifest's folder.
- a **folder** with ``optical/`` and ``sar/`` subfolders, files paired by name
  (``optical/a.tif`` + ``sar/a.tif``; a trailing ``_optical`` / ``_sar`` in the stem is ignored
  when pairing);
- a folder of scene folders ``DIR/<id>/optical.tif`` + ``DIR/<id>/sar.tif`` (what
  ``rsvl_train.data.synthetic.write_scene`` writes);
- a **pattern** with ``{modality}`` (replaced by ``optical`` / ``sar``) and optionally ``{id}``
  and ``*`` wildcards: ``"scenes/{id}_{modality}.tif"``, ``"tiles/*/{modality}.tif"``.

A scene that cannot be paired (or whose file is missing) becomes a record with an ``error``;
it is reported in the summary and never stops the job. Files that find no partner while others
are paired are listed in one warning (they run as single-modality scenes when the bundle allows
it). Scene ids equal to the batch's own files (``summary.csv``, ``summary.parquet``) are
refused. A CSV row with more fields than the header, or a JSON value that is not a path, refuses
the manifest with the file and line named.

:func:`run_local` runs the records in this process with one loaded :class:`Segmenter`; the Ray
runner (:mod:`rsvl_runtime.ray_runner`) calls the same :func:`process_scene` in its actors. Each
scene is written to ``out_dir/<id>/`` exactly as ``rsvl-infer`` writes a single scene; a scene
whose folder is already complete (``done.json``, see :func:`rsvl_runtime.outputs.is_complete`)
with the same vocabulary is skipped, so rerunning an interrupted job finishes it. Per-scene
failures (a misregistered pair, an unreadable raster) are caught and reported.

``summary.csv`` (and ``summary.parquet`` when pyarrow is installed) has one row per scene:
``scene, status (ok | skipped | error), error, tiles, seconds, width, height, optical, sar,
out_dir`` and ``area_m2:<class>`` per class.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import outputs as out

log = logging.getLogger("rsvl.batch")

PathLike = str | os.PathLike[str]
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
#: Fixed summary columns (per-class ``area_m2:<name>`` columns follow).
SUMMARY_COLUMNS = ("scene", "status", "error", "tiles", "seconds", "width", "height", "optical", "sar", "out_dir")
AREA_PREFIX = "area_m2:"
STATUSES = ("ok", "skipped", "error")
_ID_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]*$")
#: Names of the batch's own files in the output folder: never a scene id (case-insensitive).
RESERVED_IDS = (SUMMARY_CSV, SUMMARY_PARQUET)


class BatchInputError(ValueError):
    """The batch input (manifest, folder or pattern) cannot be read at all."""


@dataclass
class SceneRecord:
    """One scene of a batch: an id (its output folder name) and its input rasters."""

    id: str
    optical: str | None = None
    sar: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SceneRecord:
        return cls(id=str(d["id"]), optical=d.get("optical") or None, sar=d.get("sar") or None,
                   error=d.get("error") or None)


# ============================================================================ scene records
def _mode_of(optical: Any, sar: Any) -> str:
    return "optical+sar" if optical and sar else ("optical" if optical else "sar")


def _finish_records(records: list[SceneRecord], modes: Sequence[str] | None) -> list[SceneRecord]:
    """Check ids (valid folder names, unique), files (exist) and modes; mark problems as errors."""
    modes = tuple(modes or ("optical+sar",))
    seen: set[str] = set()
    for r in records:
        if r.error:
            pass
        elif not _ID_OK.match(r.id) or r.id in (".", ".."):
            r.error = (f"scene id {r.id!r} cannot be a folder name: use letters, digits and . _ - + = @ "
                       "(no slashes or spaces)")
        elif r.id.lower() in RESERVED_IDS:
            r.error = (f"scene id {r.id!r} is reserved: it is the name of a batch output file "
                       f"({', '.join(RESERVED_IDS)}); give the scene another id (the manifest's id column, "
                       "or rename its files)")
        elif r.id in seen:
            r.error = f"duplicate scene id {r.id!r}: every scene needs its own id (its output folder)"
        elif not r.optical and not r.sar:
            r.error = "no input raster: give optical and/or sar"
        else:
            missing = [f"{m} file not found: {p}" for m, p in (("optical", r.optical), ("sar", r.sar))
                       if p and not Path(p).is_file()]
            if missing:
                r.error = "; ".join(missing)
            elif _mode_of(r.optical, r.sar) not in modes:
                have = "optical" if r.optical else "SAR"
                lack = "sar" if r.optical else "optical"
                r.error = (f"unpaired scene: only a {have} raster was found (no matching {lack} file) and "
                           f"the bundle needs {' or '.join(modes)} input")
        seen.add(r.id)
    return records


def _csv_rows(p: Path) -> list[dict[str, str]]:
    """Rows of a CSV manifest, keys lower-cased; a row with more fields than the header is refused."""
    with p.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [c.strip().lower() for c in (reader.fieldnames or [])]
        if not set(header) & {"optical", "sar"}:
            raise BatchInputError(f"{p}: a manifest needs the columns id, optical, sar "
                                  f"(found {sorted(header) or 'none'})")
        rows = []
        for row in reader:
            extra = row.pop(None, None)  # DictReader's key for fields beyond the header
            if extra:
                raise BatchInputError(
                    f"{p} line {reader.line_num}: {len(header) + len(extra)} fields but the header has "
                    f"{len(header)} ({', '.join(header)}); extra value(s) {extra}. Quote paths that contain "
                    "commas, or remove the extra fields")
            rows.append({(k or "").strip().lower(): (v or "").strip() for k, v in row.items()})
    return rows


def _check_row_values(p: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Refuse manifest values that are not file paths or ids (JSON lists, objects, numbers)."""
    for i, row in enumerate(rows):
        for key in ("id", "optical", "sar"):
            v = row.get(key)
            if v is not None and not isinstance(v, str) and not (key == "id" and isinstance(v, int)):
                raise BatchInputError(f"{p} scene {i + 1}: {key!r} is {type(v).__name__} {v!r}; give "
                                      f"{'an id' if key == 'id' else 'a file path'} as a string")


def records_from_manifest(path: PathLike, modes: Sequence[str] | None = None) -> list[SceneRecord]:
    """Scene records from a CSV or JSON manifest with ``id, optical, sar`` (relative paths are
    resolved against the manifest's folder)."""
    p = Path(path)
    if not p.is_file():
        raise BatchInputError(f"manifest not found: {p}")
    base = p.parent
    if p.suffix.lower() == ".json":
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except ValueError as e:
            raise BatchInputError(f"{p} is not valid JSON: {e}") from e
        rows = doc.get("scenes") if isinstance(doc, dict) else doc
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise BatchInputError(f"{p}: expected a list of {{\"id\", \"optical\", \"sar\"}} objects "
                                  "(or {\"scenes\": [...]})")
    else:
        rows = _csv_rows(p)
    _check_row_values(p, rows)

    def resolve(v: Any) -> str | None:
        if v is None or str(v).strip() == "":
            return None
        q = Path(os.path.expanduser(str(v).strip()))
        return str(q if q.is_absolute() else (base / q))

    records = []
    for i, row in enumerate(rows):
        optical, sar = resolve(row.get("optical")), resolve(row.get("sar"))
        sid = str(row.get("id") or "").strip()
        if not sid:
            first = optical or sar
            sid = _strip_modality(Path(first).stem) if first else f"scene{i + 1:04d}"
        records.append(SceneRecord(sid, optical, sar))
    return _finish_records(records, modes)


_MODALITY_TOKENS = re.compile(r"[_.-](optical|opt|sar)$", re.IGNORECASE)


def _strip_modality(stem: str) -> str:
    return _MODALITY_TOKENS.sub("", stem) or stem


def _rasters(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)


def records_from_folders(optical_dir: PathLike, sar_dir: PathLike,
                         modes: Sequence[str] | None = None) -> list[SceneRecord]:
    """Pair ``optical_dir/*.tif`` with ``sar_dir/*.tif`` by file name; unpaired files become
    records with an error (unless the bundle's ``modes`` accept a single modality)."""
    opt = {_strip_modality(p.stem): p for p in _rasters(Path(optical_dir))} if Path(optical_dir).is_dir() else {}
    sar = {_strip_modality(p.stem): p for p in _rasters(Path(sar_dir))} if Path(sar_dir).is_dir() else {}
    if not opt and not sar:
        raise BatchInputError(f"no rasters ({', '.join(RASTER_SUFFIXES)}) in {optical_dir} or {sar_dir}")
    records = []
    for sid in sorted(set(opt) | set(sar)):
        o, s = opt.get(sid), sar.get(sid)
        records.append(SceneRecord(sid, str(o) if o else None, str(s) if s else None))
    return _warn_unpaired(_finish_records(records, modes), f"{optical_dir} and {sar_dir}",
                          "by file name (a trailing _optical/_opt/_sar in the stem is ignored)")


def _warn_unpaired(records: list[SceneRecord], where: str, how: str) -> list[SceneRecord]:
    """Log one warning listing the files that found no partner, when the input pairs files at all
    (some scenes have both modalities): they run as single-modality scenes (or fail, when the
    bundle needs both). Returns ``records``."""
    single = [r for r in records if bool(r.optical) != bool(r.sar)]
    if not single or not any(r.optical and r.sar for r in records):
        return records
    files = ", ".join(f"{r.optical or r.sar} (no {'sar' if r.optical else 'optical'} partner)" for r in single)
    log.warning("%d unpaired file(s) in %s, paired %s: %s. They run as single-modality scenes when the bundle "
                "allows it; rename them to pair them", len(single), where, how, files)
    return records


def _pattern_regex(pattern: str) -> tuple[re.Pattern[str], bool]:
    """Regex for a ``{id}``/``{modality}``/``*`` pattern; ``{id}`` and each ``*`` are captured."""
    parts, has_id, n = [], False, 0
    for tok in re.split(r"(\{id\}|\{modality\}|\*\*|\*|\?)", pattern):
        if tok == "{id}":
            parts.append(r"(?P<id>[^/]+?)")
            has_id = True
        elif tok == "{modality}":
            parts.append(r"(?P<modality>optical|sar)")
        elif tok in ("*", "**"):
            parts.append(rf"(?P<w{n}>{'.*?' if tok == '**' else '[^/]*?'})")
            n += 1
        elif tok == "?":
            parts.append("[^/]")
        else:
            parts.append(re.escape(tok))
    return re.compile("^" + "".join(parts) + "$"), has_id


def records_from_pattern(pattern: str, modes: Sequence[str] | None = None) -> list[SceneRecord]:
    """Scenes matched by a pattern with ``{modality}`` (and ``{id}``, ``*``):
    ``"data/{id}_{modality}.tif"``, ``"scenes/*/{modality}.tif"``. Without ``{id}``, the id is
    made of the parts the wildcards matched."""
    import glob

    pattern = os.path.expanduser(pattern)
    if "{modality}" not in pattern:
        raise BatchInputError(f"pattern {pattern!r} needs {{modality}} (replaced by 'optical' and 'sar'), "
                              "e.g. 'scenes/{id}_{modality}.tif'")
    rx, has_id = _pattern_regex(Path(pattern).as_posix())
    found: dict[str, dict[str, str]] = {}
    for modality in ("optical", "sar"):
        g = pattern.replace("{modality}", modality).replace("{id}", "*")
        for path in sorted(glob.glob(g, recursive="**" in g)):
            m = rx.match(Path(path).as_posix())
            if not m:
                continue
            if has_id:
                sid = m.group("id")
            else:
                sid = "_".join(v.strip("/").replace("/", "_") for k, v in sorted(m.groupdict().items())
                               if k.startswith("w") and v) or Path(path).stem
            found.setdefault(sid, {})[modality] = path
    if not found:
        raise BatchInputError(f"no files match {pattern!r}")
    records = [SceneRecord(sid, d.get("optical"), d.get("sar")) for sid, d in sorted(found.items())]
    return _warn_unpaired(_finish_records(records, modes), repr(pattern),
                          "by the scene id the pattern matches ({id} or the * wildcards)")


def discover_records(inputs: PathLike, modes: Sequence[str] | None = None) -> list[SceneRecord]:
    """Records from ``--inputs``: a manifest (.csv/.json), a folder (``optical/`` + ``sar/``
    subfolders, or ``<id>/optical.tif`` scene folders) or a ``{modality}`` pattern."""
    s = str(inputs)
    if "{modality}" in s or any(c in s for c in "*?["):
        return records_from_pattern(s, modes)
    p = Path(s)
    if p.is_file():
        if p.suffix.lower() not in (".csv", ".json", ".txt", ".tsv"):
            raise BatchInputError(f"{p}: --inputs takes a manifest (.csv or .json), a folder or a pattern; "
                                  "for a single scene use --optical/--sar")
        return records_from_manifest(p, modes)
    if p.is_dir():
        if (p / "optical").is_dir() or (p / "sar").is_dir():
            return records_from_folders(p / "optical", p / "sar", modes)
        subdirs = sorted(d for d in p.iterdir() if d.is_dir())
        if any(_rasters(d) for d in subdirs):
            return records_from_pattern(str(p / "{id}" / "{modality}.tif"), modes)
        raise BatchInputError(f"{p}: expected optical/ and sar/ subfolders (files paired by name) or "
                              "scene folders <id>/optical.tif + <id>/sar.tif")
    raise BatchInputError(f"--inputs {s}: no such manifest, folder or matching pattern")


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


def load_segmenter(bundle: Any, vocab: Any = None, backend: str = "auto", precision: str = "auto",
                   batch: int | None = None, threads: int | None = None, expect_digest: str | None = None) -> Any:
    """Load the bundle's :class:`Segmenter` once and set the vocabulary (None: the bundle's default);
    ``expect_digest`` pins the bundle (see :func:`rsvl_runtime.segmenter.open_bundle`)."""
    from .segmenter import Segmenter, open_bundle

    b = open_bundle(bundle, expect_digest)
    if b.task != "semantic":
        raise ValueError(f"{b.root} is a {b.task} bundle; batch runs support semantic (TSMNet) bundles")
    seg = Segmenter.load(b, backend=backend, precision=precision, batch=batch, threads=threads)
    if vocab is not None:
        seg.set_vocabulary(vocab)
    return seg


# ============================================================================ summaries
@dataclass
class BatchResult:
    """Rows (one per record, in record order) and where the summary was written."""

    rows: list[dict[str, Any]]
    out_dir: Path
    seconds: float
    summary_csv: Path | None = None
    summary_parquet: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r["status"] == status)

    @property
    def ok(self) -> bool:
        """True when no scene failed."""
        return self.count("error") == 0

    def summary_line(self) -> str:
        return (f"{len(self.rows)} scenes: {self.count('ok')} ok, {self.count('skipped')} skipped, "
                f"{self.count('error')} failed in {self.seconds:.1f} s -> {self.out_dir}")


def summary_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols = list(SUMMARY_COLUMNS)
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def write_summary(out_dir: PathLike, rows: Sequence[Mapping[str, Any]]) -> tuple[Path, Path | None]:
    """Write ``summary.csv`` (always) and ``summary.parquet`` (when pyarrow imports), atomically."""
    import io

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = summary_columns(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
    csv_path = out_dir / SUMMARY_CSV
    out.atomic_write_text(csv_path, buf.getvalue())
    parquet = None
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        log.info("pyarrow not installed: %s only", SUMMARY_CSV)
    else:
        types = {"tiles": pa.int64(), "width": pa.int64(), "height": pa.int64(), "seconds": pa.float64()}
        arrays = {}
        for c in cols:
            vals = [r.get(c) for r in rows]
            t = types.get(c, pa.float64() if c.startswith(AREA_PREFIX) else pa.string())
            arrays[c] = pa.array(vals, type=t)
        parquet = out_dir / SUMMARY_PARQUET
        tmp = out.temp_path(parquet)
        try:
            pq.write_table(pa.table(arrays), tmp)
            os.replace(tmp, parquet)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return csv_path, parquet


def read_summary(out_dir: PathLike) -> list[dict[str, str]]:
    """``summary.csv`` rows as dicts of strings."""
    with (Path(out_dir) / SUMMARY_CSV).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _as_records(records: Iterable[SceneRecord | Mapping[str, Any]]) -> list[SceneRecord]:
    return [r if isinstance(r, SceneRecord) else SceneRecord.from_dict(r) for r in records]


# ============================================================================ local runs
def run_local(records: Iterable[SceneRecord | Mapping[str, Any]], bundle: Any, out_dir: PathLike,
              vocab: Any = None, backend: str = "auto", *, precision: str = "auto", batch: int | None = None,
              threads: int | None = None, options: Mapping[str, Any] | None = None, resume: bool = True,
              segmenter: Any = None, on_row: Callable[[dict[str, Any]], None] | None = None,
              expect_digest: str | None = None) -> BatchResult:
    """Run every record in this process with one loaded model.

    ``bundle``: path or :class:`Bundle`; ``vocab``: classes (None: the bundle's default);
    ``options``: ``predict_raster`` options (``bands``, ``nodata``, ``sar_units``, ``write_scores``,
    ...). ``resume=False`` reruns complete scenes; ``expect_digest`` pins the bundle. Writes ``out_dir/<id>/`` per scene and
    ``summary.csv`` / ``summary.parquet`` (also when interrupted, with the scenes done so far).
    """
    t0 = time.perf_counter()
    recs = _as_records(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    seg = segmenter
    try:
        for rec in recs:
            if seg is None and not rec.error:
                seg = load_segmenter(bundle, vocab, backend, precision, batch, threads, expect_digest)
            row = process_scene(seg, rec, out_dir, options, resume=resume)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    finally:
        csv_path, pq_path = write_summary(out_dir, rows)
    res = BatchResult(rows, out_dir, time.perf_counter() - t0, csv_path, pq_path, {"runner": "local"})
    log.info("%s", res.summary_line())
    return res
