"""Writing the results: ``bench.json`` (everything), ``bench.md`` (tables with ratios against
eager FP32, achieved GFLOP/s and % of the machine's measured GEMM ceiling, the ceilings with the
CPU model and flags, the ONNX Runtime per-op-type profile), ``bench.png`` (throughput vs batch
per backend, and % of the matching ceiling per row) and a rich table on the terminal."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rsvl_runtime.files import atomic_open, atomic_write_text


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item") and callable(o.item):  # numpy scalars
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return "nan" if math.isnan(o) else ("inf" if o > 0 else "-inf")
    return o


def write_all(doc: dict[str, Any], out: Path) -> dict[str, Path]:
    out = Path(out)
    paths = {"json": out / "bench.json", "md": out / "bench.md", "png": out / "bench.png"}
    atomic_write_text(paths["json"], json.dumps(_jsonable(doc), indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths["md"], markdown(doc))
    plot(doc, paths["png"])
    print_rich(doc)
    return paths


# --------------------------------------------------------------------------- formatting
def _f(v: Any, nd: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:,.{nd}f}"


def _agree(a: dict[str, Any] | None) -> tuple[str, str, str]:
    if not a:
        return "–", "–", "–"
    cos = a.get("cosine")
    arg = a.get("argmax_agreement")
    rel = a.get("max_abs_rel_to_range")
    return (f"{cos:.6f}" if cos is not None else "–", f"{arg:.4f}" if arg is not None else "–",
            f"{rel:.1e}" if rel is not None else "–")


def image_table_rows(doc: dict[str, Any]) -> list[list[str]]:
    """One row per (runner, batch): the shared table of bench.md and the terminal."""
    rows = []
    for r in doc.get("image", []):
        if r.get("status") != "ok":
            continue
        cos, arg, rel = _agree(r.get("agreement"))
        mem = r.get("memory") or {}
        peak = mem.get("cuda_peak_mb") if r.get("device", "").startswith("cuda") and mem.get("cuda_peak_mb") else \
            mem.get("peak_rss_mb")
        rows.append([r["label"], str(r["batch"]), r["precision"], _f(r["p50_ms"]), _f(r["p90_ms"]), _f(r["p99_ms"]),
                     _f(r["tiles_per_s"]), _f(r.get("megapixels_per_s"), 3),
                     (_f(r.get("speedup_vs_eager")) + "×") if r.get("speedup_vs_eager") else "–",
                     _f(r.get("gflops_per_s"), 1), _pct(r), _f(peak, 0), cos, arg, rel,
                     _f(r.get("compile_s"), 1) if r.get("compile_s") is not None else ""])
    return rows


def _pct(r: dict[str, Any]) -> str:
    """``12.3 % fp32`` (% of the matching measured ceiling and its class), or –."""
    p = r.get("percent_of_peak")
    if p is None:
        return "–"
    return f"{p:.1f} % {r.get('ceiling_class', '')}".strip()


IMAGE_HEADER = ["backend", "B", "precision", "p50 ms", "p90 ms", "p99 ms", "tiles/s", "MP/s", "× eager",
                "GFLOP/s", "% peak", "peak MB", "cosine", "argmax", "maxabs/range", "compile s"]


def roofline_lines(doc: dict[str, Any]) -> list[str]:
    """The ceilings section of bench.md: CPU model and flags, every measured GEMM ceiling."""
    rf = doc.get("roofline")
    if not rf:
        return []
    cpu = rf.get("cpu", {})
    lines = ["## Machine ceilings (dense GEMM, measured in this run)", "",
             (f"- CPU: {cpu.get('model')}; VNNI: {'yes' if cpu.get('vnni') else 'no'}; "
              f"SIMD flags: {' '.join(cpu.get('simd_flags', [])) or '–'}; threads {rf.get('threads')}"),
             (f"- FLOPs per tile: {_f(doc.get('model', {}).get('gflops_per_tile'), 3)} GFLOP "
              f"(source: {doc.get('model', {}).get('flops_source')}); each row's `% peak` = its GFLOP/s over the "
              "best ceiling of its class (INT8 rows vs INT8, CUDA FP16/AMP/TensorRT rows vs FP16, others vs FP32)"),
             "", _md_table(["ceiling", "class", "device", "engine", "n", "GFLOP/s", "status"],
                           [[k, c.get("class", ""), c.get("device", ""), c.get("engine", ""), str(c.get("n", "")),
                             _f(c.get("gflops"), 1), c.get("status", "") if c.get("status") == "ok"
                             else f"{c.get('status')}: {c.get('reason', '')}"]
                            for k, c in rf.get("ceilings", {}).items()]), ""]
    room = doc.get("headroom") or []
    if room:
        classes = [c for c in ("fp32", "int8", "fp16") if any(c in h["bounds"] for h in room)]
        lines += ["**Headroom**: the most × eager an engine of each precision can reach here = its best ceiling "
                  "over eager's achieved GFLOP/s (same FLOPs); a target above it cannot be met at that precision "
                  "on this machine.", "",
                  _md_table(["graph", "B / prompts", "eager GFLOP/s", *[f"max × eager ({c})" for c in classes]],
                            [[h["graph"], str(h["batch"]), _f(h["eager_gflops_per_s"], 1),
                              *[(_f(h["bounds"][c]["max_speedup_vs_eager"]) + "×") if c in h["bounds"] else "–"
                                for c in classes]] for h in room]), ""]
    return lines


def profile_lines(doc: dict[str, Any]) -> list[str]:
    """The per-op-type ONNX Runtime profile section of bench.md."""
    prof = doc.get("ort_profile")
    if not prof:
        return []
    lines = ["## Where the ONNX Runtime image graph spends its time (B=1, per-op-type kernel time)", ""]
    for name, p in prof.items():
        if p.get("error"):
            lines += [f"- {name}: profiling failed: {p['error']}", ""]
            continue
        lines += [(f"**{name}**: {_f(p.get('total_ms_per_run'))} ms of kernels per run ({p.get('runs')} runs, "
                   "profiling on)"), "",
                  _md_table(["op type", "ms/run", "%", "nodes"],
                            [[o["op_type"], _f(o["ms_per_run"], 3), _f(o["percent"], 1), str(o["nodes"])]
                             for o in p.get("ops", [])]), ""]
    return lines


def markdown(doc: dict[str, Any]) -> str:
    mc = doc.get("machine", {})
    opts = doc.get("options", {})
    model = doc.get("model", {})
    gpu = mc.get("gpu")
    lines = [f"# rsvl-bench — {model.get('name')} ({model.get('task')}), tile {doc.get('bundle', {}).get('tile')}",
             "",
             f"- machine: {mc.get('cpu')}, {mc.get('cpu_affinity') or mc.get('cpu_count')} cores"
             + (f", GPU {gpu['name']}" if gpu else ", no GPU")
             + f"; load average at start {mc.get('load_average')}, at end {mc.get('load_average_end')}"
             + (f"; env {mc.get('env')}" if mc.get("env") else ""),
             "- versions: " + ", ".join(f"{k} {v}" for k, v in mc.get("versions", {}).items()),
             (f"- threads {opts.get('threads')}, batches {opts.get('batches')}, vocabulary K={model.get('vocab_size')}"
             f" ({model.get('prompts')} prompts), {'--quick, ' if opts.get('quick') else ''}"
             f"budget {opts.get('budget', {}).get('budget_s')} s per measurement"),
             (f"- model: {model.get('parameters_m')} M parameters, "
             f"{_f(model.get('gflops_per_tile'), 2)} GFLOP per tile (image graph, torch FlopCounterMode; "
             f"{model.get('flops_source') or 'not counted'})"
             f"; weights {doc.get('bundle', {}).get('weights')} (trained: {doc.get('bundle', {}).get('trained')})"),
             f"- bundle: {doc.get('bundle', {}).get('path')} ({doc.get('bundle', {}).get('source')})",
             *_load_warning(mc),
             "", "## Image graph", "",
             ("Latency per call of the whole batch; throughput at the median. `× eager` = eager FP32 p50 / p50 at "
             "the same batch. Agreement is against eager FP32 on the same inputs (cosine of the flattened logits, "
             "fraction of pixels with the same argmax class, max-abs error / logit range). Peak MB = process RSS "
             "high-water during the measurement (includes the loaded reference model), or torch's CUDA peak."),
             "", _md_table(IMAGE_HEADER, image_table_rows(doc)), "", *roofline_lines(doc), *profile_lines(doc)]
    skipped = [r for r in doc.get("image", []) if r.get("status") != "ok"]
    skipped_runners = [(k, v) for k, v in doc.get("runners", {}).items() if v.get("status") != "ok"]
    if skipped or skipped_runners:
        lines += ["Not measured:", ""]
        for k, v in skipped_runners:
            lines.append(f"- `{k}` ({v.get('label')}): {v.get('status')} — {v.get('reason')}")
        for r in skipped:
            lines.append(f"- `{r['runner']}` B={r['batch']}: {r['status']} — {r.get('reason')}")
        lines.append("")
    best = doc.get("summary", {}).get("best_by_batch", {})
    if best:
        lines += ["Best backend per batch (among those passing cosine ≥ 0.999 and argmax ≥ 0.995):", ""]
        for b, v in best.items():
            lines.append(f"- B={b}: **{v['label']}** {v['p50_ms']:.2f} ms, "
                         f"{_f(v.get('speedup_vs_eager'))}× eager FP32")
        lines.append("")
    ort = doc.get("ort_optimize")
    if ort:
        lines += ["## image.ort.onnx (rsvl_export.ort_optimize)", ""]
        if ort.get("error"):
            lines.append(f"failed: {ort['error']}")
        else:
            fus = ort.get("fusion", {})
            lines.append(f"- variant shipped: **{ort.get('variant')}**; source {_f(ort.get('latency_ms', {}).get('source'))}"
                         f" ms -> {_f(ort.get('latency_ms', {}).get(ort.get('variant')))} ms at the check "
                         f"input ({_f(ort.get('speedup'))}× over image.onnx on ORT)")
            if fus and not fus.get("error"):
                lines.append(f"- fusion ({fus.get('model_type')}, opt_level {fus.get('opt_level')}): "
                             f"{fus.get('fused_ops')}, nodes {fus.get('nodes_before')} -> {fus.get('nodes_after')}, "
                             f"parity {fus.get('parity', {}).get('passed')}")
            elif fus.get("error"):
                lines.append(f"- fusion failed: {fus['error']}")
            for a in ort.get("attempts", []):
                p = a.get("parity", {})
                low = (f" (lower bound {_f(p['argmax_agreement_lower'], 4)} at {p.get('argmax_confidence', 0.95):.0%} "
                       f"over {int(p.get('tiles', 0))} tiles)" if p.get("argmax_agreement_lower") is not None else "")
                lines.append(f"- {a['name']}: {a.get('nodes')} nodes, cosine {_f(p.get('cosine'), 6)}, argmax "
                             f"{_f(p.get('argmax_agreement'), 4)}{low}, {_f(a.get('latency_ms'))} ms — {a.get('result')}")
        lines.append("")
    text = doc.get("text")
    if text:
        lines += ["## Text graph (vocabulary change)", "",
                  _md_table(["path", "prompts", "p50 ms", "p90 ms", "prompts/s", "× eager", "GFLOP/s", "% peak",
                             "min cosine"],
                            [[r["label"], str(r["prompts"]), _f(r.get("p50_ms")), _f(r.get("p90_ms")),
                              _f(r.get("prompts_per_s"), 1),
                              (_f(r.get("speedup_vs_eager")) + "×") if r.get("speedup_vs_eager") else "–",
                              _f(r.get("gflops_per_s"), 1), _pct(r),
                              _f((r.get("agreement") or {}).get("min_vector_cosine"), 6)]
                             if r.get("status") == "ok" else [r["label"], str(r["prompts"]), "error", "", "", "",
                                                              "", "", r.get("reason", "")] for r in text]), ""]
    scene = doc.get("scene")
    if scene:
        lines += ["## End-to-end tiled scene (`predict_raster`: read, normalise, infer, blend, write)", ""]
        rows, stage_rows = [], []
        for r in scene:
            if r.get("status") != "ok":
                rows.append([r["engine_runner"], r.get("scene", ""), str(r["batch"]), "error", r.get("reason", ""),
                             "", "", "", ""])
                continue
            peak = (r.get("memory") or {}).get("peak_rss_mb")
            rows.append([r["engine_runner"], r["scene"], str(r["batch"]), str(r["tiles"]), _f(r["seconds"]),
                         _f(r["tiles_per_s"]), _f(r.get("engine_tiles_per_s")),
                         _f(r.get("end_to_end_over_engine"), 3), _f(peak, 0)])
            st = r.get("stages_s") or r.get("timings", {})
            stage_rows.append([r["engine_runner"], r["scene"]] + [_f(st.get(k)) for k, _ in SCENE_STAGES])
        lines += [_md_table(["engine", "scene", "B", "tiles", "seconds", "tiles/s", "engine tiles/s",
                             "end-to-end / engine", "peak RSS MB"], rows), "",
                  ("`end-to-end / engine` < 1 is the cost of IO, normalisation, blending and writing "
                  "(tiles overlap, so a scene has more tiles than area / tile²)."), ""]
        if stage_rows:
            lines += ["Where the time went (seconds; with a CPU engine the serial pipeline runs read, "
                      "normalise, blend, class decision and write between engine calls, split over every "
                      "core; with a GPU engine the overlap pipeline runs them in a reader and a writer "
                      "thread beside it, and `wait` is the engine's thread waiting for the writer; "
                      "`overviews`: the levels reduced while writing (a COG; part of `write`); `COG`: the "
                      "one encode of each raster):", "",
                      _md_table(["engine", "scene"] + [h for _, h in SCENE_STAGES], stage_rows), ""]
    return "\n".join(lines) + "\n"


#: The stage columns of the scene table: done.json timing key -> column.
SCENE_STAGES = (("read_s", "read"), ("normalise_s", "normalise"), ("batch_s", "batch"), ("predict_s", "infer"),
                ("blend_s", "blend"), ("postprocess_s", "postprocess"), ("write_s", "write"), ("hash_s", "hash"),
                ("sink_wait_s", "wait"),
                ("overviews_s", "overviews"), ("cog_write_s", "COG"), ("rasters_finalize_s", "finalise"),
                ("reports_s", "reports"), ("total_s", "total"))


def _load_warning(mc: dict[str, Any]) -> list[str]:
    """A warning line when other processes loaded the machine during the run."""
    loads = [(mc.get(k) or [0])[0] for k in ("load_average", "load_average_end")]
    ncpu = mc.get("cpu_affinity") or mc.get("cpu_count") or 1
    if max(loads) <= ncpu * 1.25:
        return []
    line = (f"- **shared machine**: 1-min load average up to {max(loads):.1f} on {ncpu} cores while measuring — "
            "absolute numbers are inflated and noisy; compare ratios measured back to back")
    return [line, ""]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------- plot
def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    labels: dict[str, str] = {}
    for r in doc.get("image", []):
        if r.get("status") == "ok":
            series.setdefault(r["runner"], []).append((r["batch"], r["tiles_per_s"]))
            labels[r["runner"]] = r["label"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    _peak_bars(doc, ax2)
    markers = "os^vD<>pPX*h"
    for i, (k, pts) in enumerate(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)], label=labels[k])
    batches = sorted({r["batch"] for r in doc.get("image", [])})
    if len(batches) > 1:
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches)
        ax.set_xticklabels([str(b) for b in batches])
    ax.set_xlabel("batch size (tiles per call)")
    ax.set_ylabel("throughput (tiles/s, at p50)")
    mc = doc.get("machine", {})
    where = (mc.get("gpu") or {}).get("name") or f"{mc.get('cpu')}, {doc.get('options', {}).get('threads')} threads"
    title = (f"{doc.get('model', {}).get('name')} image graph, {doc.get('bundle', {}).get('tile')}px tiles — {where}")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if series:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no successful measurement", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)


def _peak_bars(doc: dict[str, Any], ax: Any) -> None:
    """Bar chart: % of the matching measured ceiling per (backend, batch) row."""
    rows = [r for r in doc.get("image", []) if r.get("status") == "ok" and r.get("percent_of_peak") is not None]
    if not rows:
        ax.text(0.5, 0.5, "no roofline (no FLOP count or no ceiling)", ha="center", va="center",
                transform=ax.transAxes, fontsize=8)
        ax.set_axis_off()
        return
    labels = [f"{r['runner']} B={r['batch']}" for r in rows]
    vals = [float(r["percent_of_peak"]) for r in rows]
    colours = {"fp32": "tab:blue", "int8": "tab:orange", "fp16": "tab:green"}
    cols = [colours.get(str(r.get("ceiling_class", "fp32")), "tab:gray") for r in rows]
    y = list(range(len(rows)))
    ax.barh(y, vals, color=cols)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("% of the matching GEMM ceiling (blue FP32, orange INT8, green FP16)")
    ax.set_title("achieved GFLOP/s / measured ceiling", fontsize=9)
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.1f}%", va="center", fontsize=7)
    ax.grid(True, axis="x", alpha=0.3)


# --------------------------------------------------------------------------- terminal
def print_rich(doc: dict[str, Any]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        print(markdown(doc))
        return
    con = Console(stderr=False)
    if not con.is_terminal:
        con = Console(stderr=False, width=190)  # logs and pipes: do not squeeze the table to 80 columns
    t = Table(title=f"rsvl-bench: {doc.get('model', {}).get('name')} image graph "
                    f"({doc.get('bundle', {}).get('tile')}px, K={doc.get('model', {}).get('vocab_size')})")
    for i, h in enumerate(IMAGE_HEADER):
        t.add_column(h, justify="left" if i in (0, 2) else "right", no_wrap=i != 0)
    prev = None
    for row in image_table_rows(doc):
        if prev is not None and row[1] != prev:
            t.add_section()
        prev = row[1]
        t.add_row(*row)
    con.print(t)
    for k, v in doc.get("runners", {}).items():
        if v.get("status") != "ok":
            con.print(f"[dim]{k}: {v.get('status')} — {v.get('reason')}[/]")
    for r in doc.get("image", []):
        if r.get("status") != "ok":
            con.print(f"[dim]{r['runner']} B={r['batch']}: {r['status']} — {r.get('reason')}[/]")
    text = [r for r in doc.get("text", []) if r.get("status") == "ok"]
    if text:
        tt = Table(title=f"text graph: {text[0]['prompts']} prompts (vocabulary change)")
        for h in ("path", "p50 ms", "prompts/s", "× eager"):
            tt.add_column(h, justify="right" if h != "path" else "left")
        for r in text:
            tt.add_row(r["label"], _f(r["p50_ms"]), _f(r["prompts_per_s"], 1),
                       (_f(r.get("speedup_vs_eager")) + "×") if r.get("speedup_vs_eager") else "–")
        con.print(tt)
    scene = [r for r in doc.get("scene", []) if r.get("status") == "ok"]
    if scene:
        ts = Table(title="end-to-end tiled scene vs pure engine")
        for h in ("engine", "scene", "B", "tiles", "s", "tiles/s", "engine tiles/s", "e2e/engine"):
            ts.add_column(h, justify="right" if h not in ("engine", "scene") else "left")
        for r in scene:
            ts.add_row(r["engine_runner"], r["scene"], str(r["batch"]), str(r["tiles"]), _f(r["seconds"]),
                       _f(r["tiles_per_s"]), _f(r.get("engine_tiles_per_s")), _f(r.get("end_to_end_over_engine"), 3))
        con.print(ts)
        tst = Table(title="end-to-end tiled scene: seconds per stage")
        for h in ("engine", "scene", *(h for _, h in SCENE_STAGES)):
            tst.add_column(h, justify="right" if h not in ("engine", "scene") else "left")
        for r in scene:
            st = r.get("stages_s") or r.get("timings", {})
            tst.add_row(r["engine_runner"], r["scene"], *(_f(st.get(k)) for k, _ in SCENE_STAGES))
        con.print(tst)
    best = doc.get("summary", {}).get("best_by_batch", {})
    for b, v in best.items():
        con.print(f"B={b}: best [bold]{v['label']}[/] {v['p50_ms']:.2f} ms = {_f(v.get('speedup_vs_eager'))}× eager FP32")
