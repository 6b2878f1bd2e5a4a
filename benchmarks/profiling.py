"""Where an ONNX Runtime graph spends its time: a per-op-type summary for ``rsvl-bench``.

:func:`profile_ort` runs a graph a few times with ``SessionOptions.enable_profiling`` and
:func:`summarize_profile` reads ONNX Runtime's Chrome-trace JSON: every ``Node`` event's
duration (``<node>_kernel_time``), summed per op type (``args.op_name``), as ms per run and
share of the total kernel time, top op types first. The bench puts it next to the image-graph
rows so that a row far from the roofline shows which ops hold it back.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def summarize_profile(events: Sequence[Mapping[str, Any]], runs: int = 1, top: int = 12) -> dict[str, Any]:
    """Per-op-type kernel time from ONNX Runtime profile ``events`` (the parsed JSON list).

    Returns ``{"runs", "total_ms_per_run", "ops": [{"op_type", "ms_per_run", "percent",
    "nodes", "calls"}, ...]}`` sorted by time, the first ``top`` op types (the rest summed
    into ``other``)."""
    per_op: dict[str, float] = {}
    nodes: dict[str, set[str]] = {}
    calls: dict[str, int] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        op = str((e.get("args") or {}).get("op_name", "?"))
        per_op[op] = per_op.get(op, 0.0) + float(e.get("dur", 0)) / 1e3  # us -> ms
        nodes.setdefault(op, set()).add(str(e["name"])[: -len("_kernel_time")])
        calls[op] = calls.get(op, 0) + 1
    runs = max(int(runs), 1)
    total = sum(per_op.values())
    ranked = sorted(per_op.items(), key=lambda kv: kv[1], reverse=True)
    ops = [{"op_type": op, "ms_per_run": round(ms / runs, 4),
            "percent": round(100.0 * ms / total, 2) if total else 0.0,
            "nodes": len(nodes[op]), "calls": calls[op]} for op, ms in ranked[:top]]
    rest = ranked[top:]
    if rest:
        ms = sum(v for _, v in rest)
        ops.append({"op_type": "other", "ms_per_run": round(ms / runs, 4),
                    "percent": round(100.0 * ms / total, 2) if total else 0.0,
                    "nodes": sum(len(nodes[k]) for k, _ in rest), "calls": sum(calls[k] for k, _ in rest)})
    return {"runs": runs, "total_ms_per_run": round(total / runs, 4), "ops": ops}


def profile_ort(path: str | os.PathLike[str], feeds: Mapping[str, np.ndarray], threads: int | None = None,
                runs: int = 5, top: int = 12) -> dict[str, Any]:
    """Profile ``path`` on the CPU provider: one warm-up run (not counted), then ``runs`` runs."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="rsvl-prof-") as tmp:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        feed = {k: v for k, v in feeds.items() if k in names}
        sess.run(None, feed)
        for _ in range(runs):
            sess.run(None, feed)
        trace = sess.end_profiling()
        events = json.loads(Path(trace).read_text(encoding="utf-8"))
    # drop the warm-up run: ORT writes each run's "model_run" event after that run's node events
    ends = [i for i, e in enumerate(events) if e.get("name") == "model_run"]
    if len(ends) > runs:
        events = events[ends[0] + 1:]
    out = summarize_profile(events, runs=runs, top=top)
    out["file"] = Path(path).name
    return out
