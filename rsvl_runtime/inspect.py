"""Human-readable view of a bundle (``rsvl-export inspect DIR`` and ``rsvl-infer --inspect``),
printed from the typed manifest (``Bundle.meta``, :class:`rsvl_runtime.manifest.Manifest`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .bundle import Bundle
from .manifest import EngineEntry, GraphEntry, TensorSpec


def _profile_summary(profiles: Mapping[str, Any]) -> str:
    """``optical B 1..8, text_emb K 1..64``: the dynamic axes of each input's profile."""
    parts = []
    for name, p in (profiles or {}).items():
        ranges = [f"{lo}..{hi}" for lo, hi in zip(p["min"], p["max"]) if lo != hi]
        if ranges:
            parts.append(f"{name} {' '.join(ranges)}")
    return ", ".join(parts) or "static"


def engine_tables(b: Bundle) -> list[Any]:
    """One key/value table per engine: flavour, version, targets, profiles, size, build time, sha256,
    and whether it is valid on this machine (``get_engine_validity`` where the flavour has it) and
    why not."""
    from rich.table import Table

    from .backends.tensorrt import check_engine

    tables = []
    for eng in b.meta.engines:
        check = check_engine(b.path(eng.file), eng.to_dict())
        t = Table(title=f"TensorRT engine {eng.file}", show_header=False)
        t.add_column("key", style="bold")
        t.add_column("value")
        for key, value in (*_engine_rows(eng), ("valid here", "yes" if check.ok else f"[yellow]no[/yellow]: {check.reason}")):
            t.add_row(key, value)
        tables.append(t)
    if not tables:
        t = Table(title="TensorRT engines", show_header=False)
        t.add_row("none", "build them: rsvl-export rebuild-engine BUNDLE --engine tensorrt-rtx")
        tables.append(t)
    return tables


def _engine_rows(eng: EngineEntry) -> list[tuple[str, str]]:
    """The key/value rows of one engine's table (validity excepted)."""
    return [
        ("graph / precision", f"{eng.graph} / {eng.precision}"),
        ("flavour", f"{eng.flavour} {eng.version}"),
        ("targets", "compute capability " + ("/".join(eng.targets) or "unknown")),
        ("built on", f"{eng.built_on} in {eng.extra.get('build_seconds', '?')} s"),
        ("profiles", _profile_summary(eng.profiles)),
        ("size", f"{(eng.bytes or 0) / 2**20:.1f} MB, sha256 {(eng.sha256 or '')[:16]}… (verified)"),
    ]


def _tensors(specs: Mapping[str, TensorSpec]) -> str:
    """``optical float32['B', 3, 64, 64]; ...``: a graph's inputs or outputs."""
    return "; ".join(f"{n} {t.dtype}{list(t.shape)}" for n, t in specs.items())


def ort_variant_row(name: str, graph: GraphEntry) -> tuple[str, ...] | None:
    """One row of the ``ONNX Runtime CPU variants`` table (None: the graph has no ``.ort`` file):
    graph, file, variant, INT8 weights, the CPU it was validated on, whether it runs here."""
    if not graph.ort:
        return None
    from .backends import int8_refusal

    rep = graph.ort_report or {}
    variant = str(rep.get("variant", "?"))
    cpu = rep.get("cpu") or {}
    if variant.startswith("int8"):
        weights = f"{rep.get('weights', 's8')}{' 7-bit' if rep.get('reduce_range') else ''}"
    else:
        weights = "-"
    checked = f"{cpu.get('model', '?')}, {'VNNI' if cpu.get('vnni') else 'no VNNI'}" if cpu else "?"
    why = int8_refusal(graph)
    here = "yes" if why is None else f"[red]no[/red]: {why}; the runtime uses {graph.fp32}"
    return name, graph.ort, variant, weights, checked, here


def print_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Verify ``path`` (every file's sha256) and print its manifest as tables."""
    from rich.console import Console
    from rich.table import Table

    b = Bundle.load(path)
    m = b.meta
    con = Console()
    t = Table(title=f"rsvl bundle {b.root}", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    on_disk = b.manifest.get("format_version")
    rows = [
        ("model", f"{m.model} ({m.architecture}, task {m.task}, head {m.head})"),
        ("format", str(m.format_version) if on_disk == m.format_version
         else f"{on_disk} (read as {m.format_version})"),
        ("digest", b.digest),
        ("precision / opset", f"{m.precision} / {m.opset}"),
        ("modes", ", ".join(m.modes)),
        ("tile", f"{m.tile.size} px, overlap {m.tile.overlap}"),
        ("embedding dim", str(m.embedding_dim)),
        ("tokenizer", f"{m.text.tokenizer} (max length {m.text.max_length}, {m.text.encoder})"),
        ("templates", " | ".join(m.text.templates) or "-"),
        ("default vocabulary", ", ".join(m.class_names) or "-"),
        ("fixed K", str(m.fixed_vocabulary_size or "no (open vocabulary)")),
        ("limits", f"batch ≤ {m.limits.max_batch}, K ≤ {m.limits.max_vocab}"),
        ("weights", f"{m.weights.source} (trained: {m.weights.trained})"),
        ("versions", ", ".join(f"{k} {v}" for k, v in m.versions.items())),
        ("created", str(m.created)),
    ]
    for k, v in rows:
        t.add_row(k, v)
    con.print(t)

    g = Table(title="graphs")
    for col in ("graph", "files", "inputs", "outputs", "exporter"):
        g.add_column(col)
    for gname, graph in m.graphs.items():
        files = ", ".join(f for f in (graph.fp32, graph.fp16) if f)
        g.add_row(gname, files, _tensors(graph.inputs), _tensors(graph.outputs), graph.exporter or "")
    con.print(g)

    rows = [r for r in (ort_variant_row(n, gr) for n, gr in m.graphs.items()) if r is not None]
    if rows:
        v = Table(title="ONNX Runtime CPU variants (--ort-optimize)")
        for col in ("graph", "file", "variant", "INT8 weights", "validated on", "used on this CPU"):
            v.add_column(col)
        for r in rows:
            v.add_row(*r)
        con.print(v)

    for table in engine_tables(b):
        con.print(table)

    parity = b.read_parity()
    if parity:
        p = Table(title="parity vs PyTorch eager")
        for col in ("graph", "precision", "B", "K", "output", "max|Δ|/range", "cosine", "argmax", "pass"):
            p.add_column(col)
        for c in parity.get("cases", []):
            mt = c.get("metrics", {})
            p.add_row(c.get("graph", ""), c.get("precision", ""), str(c.get("batch")), str(c.get("vocab_size")),
                      c.get("output", ""), f"{mt.get('max_abs_rel_to_range', float('nan')):.2e}",
                      f"{mt.get('cosine', float('nan')):.6f}",
                      f"{mt['argmax_agreement']:.4f}" if mt.get("argmax_agreement") is not None else "-",
                      "yes" if c.get("passed") else "[red]NO[/red]")
        con.print(p)

    f = Table(title="files (sha256 verified)")
    for col in ("file", "bytes", "sha256"):
        f.add_column(col)
    for rel, entry in m.files.items():
        f.add_row(rel, f"{entry.bytes:,}", entry.sha256[:16] + "…")
    con.print(f)
    return b
