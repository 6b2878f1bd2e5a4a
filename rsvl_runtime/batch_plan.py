"""Planning a batch: the scene records of ``--inputs`` (the first step of plan -> run -> summary).

Scenes come from a manifest or from folders:

- a **manifest** (``.csv``, or ``.json``: a list of objects or ``{"scenes": [...]}``) with the
  columns ``id, optical, sar`` (``sar`` or ``optical`` may be empty for single-modality
  bundles; ``id`` defaults to the optical file's stem). Relative paths are resolved against the
  manifest's folder; a URL or ``/vsi*`` path (``https://``, ``s3://``, ``/vsicurl/`` ...) is kept
  as written, and is not checked here (its run reports a missing one).
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
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .batch_summary import SUMMARY_CSV, SUMMARY_PARQUET
from .raster_io import is_gdal_path

log = logging.getLogger("rsvl.batch")

PathLike = str | os.PathLike[str]
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
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


def as_records(records: Iterable[SceneRecord | Mapping[str, Any]]) -> list[SceneRecord]:
    """Records given as :class:`SceneRecord` or as their dicts."""
    return [r if isinstance(r, SceneRecord) else SceneRecord.from_dict(r) for r in records]


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
                       if p and not is_gdal_path(p) and not Path(p).is_file()]
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
        if is_gdal_path(str(v).strip()):
            return str(v).strip()
        q = Path(os.path.expanduser(str(v).strip()))
        return str(q if q.is_absolute() else (base / q))

    records = []
    for i, row in enumerate(rows):
        optical, sar = resolve(row.get("optical")), resolve(row.get("sar"))
        sid = str(row.get("id") or "").strip()
        if not sid:
            first = optical or sar
            stem = Path(first.split("?")[0] if is_gdal_path(first) else first).stem if first else ""
            sid = _strip_modality(stem) if stem else f"scene{i + 1:04d}"
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
