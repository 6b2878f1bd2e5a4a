"""The batch summary (the last step of plan -> run -> summary): ``summary.csv`` and
``summary.parquet`` (when pyarrow is installed), one row per scene, and :class:`BatchResult`.

Columns: ``scene, status (ok | skipped | error), error, tiles, seconds, width, height, optical,
sar, out_dir`` and ``area_m2:<class>`` per class.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import outputs as out

log = logging.getLogger("rsvl.batch")

PathLike = str | os.PathLike[str]
SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
#: Fixed summary columns (per-class ``area_m2:<name>`` columns follow).
SUMMARY_COLUMNS = ("scene", "status", "error", "tiles", "seconds", "width", "height", "optical", "sar", "out_dir")
AREA_PREFIX = "area_m2:"
STATUSES = ("ok", "skipped", "error")


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
