"""``rsvl-bench compare OLD/bench.json NEW/bench.json``: did anything get slower?

Rows are matched by key — image rows by (runner, batch), text rows by (runner, prompts),
scene rows by (engine runner, scene, batch) — and compared at the median latency
(``p50_ms``; scene rows by ``seconds``). A row whose new latency is more than ``--threshold``
(default 10 %) above the old one is flagged; the exit code is 1 when any row is flagged, 0
otherwise, 2 for unreadable input. Rows present on one side only are listed, never flagged.

    rsvl-bench compare bench_a/bench.json bench_b/bench.json [--threshold 0.10]
    python -m benchmarks.compare A B
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Default: a row more than 10 % slower is a regression.
DEFAULT_THRESHOLD = 0.10


@dataclass(frozen=True)
class RowDiff:
    """One matched row: old and new latency (ms) and new / old."""

    section: str
    key: str
    old_ms: float
    new_ms: float

    @property
    def ratio(self) -> float:
        return self.new_ms / self.old_ms if self.old_ms > 0 else float("inf")

    def slower(self, threshold: float) -> bool:
        return self.ratio > 1.0 + threshold


def _rows(doc: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    """(section, key) -> latency in ms, for every successful row of a bench.json."""
    out: dict[tuple[str, str], float] = {}
    for r in doc.get("image") or []:
        if r.get("status") == "ok" and r.get("p50_ms") is not None:
            out[("image", f"{r['runner']} B={r['batch']}")] = float(r["p50_ms"])
    for r in doc.get("text") or []:
        if r.get("status") == "ok" and r.get("p50_ms") is not None:
            out[("text", f"{r['runner']} K={r.get('prompts')}")] = float(r["p50_ms"])
    for r in doc.get("scene") or []:
        if r.get("status") == "ok" and r.get("seconds") is not None:
            out[("scene", f"{r['engine_runner']} {r.get('scene')} B={r['batch']}")] = float(r["seconds"]) * 1e3
    return out


def compare_docs(old: Mapping[str, Any], new: Mapping[str, Any]
                 ) -> tuple[list[RowDiff], list[str], list[str]]:
    """Matched rows (in the new file's order), and the keys only in the old / only in the new."""
    a, b = _rows(old), _rows(new)
    matched = [RowDiff(sec, key, a[(sec, key)], ms) for (sec, key), ms in b.items() if (sec, key) in a]
    only_old = [f"{s}: {k}" for (s, k) in a if (s, k) not in b]
    only_new = [f"{s}: {k}" for (s, k) in b if (s, k) not in a]
    return matched, only_old, only_new


def format_table(diffs: Sequence[RowDiff], threshold: float) -> str:
    """A markdown table of old/new/ratio with the flagged rows marked."""
    lines = ["| section | row | old ms | new ms | new/old | |", "|---|---|---|---|---|---|"]
    for d in diffs:
        flag = f"**SLOWER > {threshold:.0%}**" if d.slower(threshold) else ""
        lines.append(f"| {d.section} | {d.key} | {d.old_ms:.3f} | {d.new_ms:.3f} | {d.ratio:.3f} | {flag} |")
    return "\n".join(lines)


def _load(path: str) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "bench.json"
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{p}: no such file; give a bench.json written by rsvl-bench (or its folder)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not JSON ({e.msg} at line {e.lineno}); give a bench.json written by rsvl-bench"
                         ) from None
    if not isinstance(doc, dict) or "image" not in doc:
        raise ValueError(f"{p}: not an rsvl-bench report (no 'image' rows); give a bench.json written by rsvl-bench")
    return doc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rsvl-bench compare",
                                description="Match the rows of two bench.json files and flag every row more than "
                                            "--threshold slower (exit code 1 when any is).")
    p.add_argument("old", help="the baseline bench.json (or its folder)")
    p.add_argument("new", help="the bench.json to check (or its folder)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="flag rows whose latency grew by more than this fraction (default 0.10 = 10 %%)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.threshold >= 0:
        print(f"rsvl-bench compare: error: --threshold must be >= 0, got {args.threshold}", file=sys.stderr)
        return 2
    try:
        old, new = _load(args.old), _load(args.new)
    except ValueError as e:
        print(f"rsvl-bench compare: error: {e}", file=sys.stderr)
        return 2
    diffs, only_old, only_new = compare_docs(old, new)
    print(format_table(diffs, args.threshold))
    for label, keys in (("only in old", only_old), ("only in new", only_new)):
        if keys:
            print(f"\n{label}: " + ", ".join(keys))
    flagged = [d for d in diffs if d.slower(args.threshold)]
    if flagged:
        print(f"\n{len(flagged)} of {len(diffs)} rows more than {args.threshold:.0%} slower: "
              + ", ".join(f"{d.section} {d.key} ({d.ratio:.2f}x)" for d in flagged))
        return 1
    print(f"\nno row more than {args.threshold:.0%} slower ({len(diffs)} compared)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
