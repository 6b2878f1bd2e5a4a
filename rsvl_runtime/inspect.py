"""Human-readable view of a bundle (``rsvl-export inspect DIR`` and ``rsvl-infer --inspect``)."""

from __future__ import annotations

import os
from typing import Any

from .bundle import Bundle


def _profile_summary(profiles: dict) -> str:
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
    for eng in b.manifest.get("engines") or []:
        check = check_engine(b.path(eng["file"]), eng)
        t = Table(title=f"TensorRT engine {eng['file']}", show_header=False)
        t.add_column("key", style="bold")
        t.add_column("value")
        for key, value in (
                ("graph / precision", f"{eng.get('graph', 'image')} / {eng.get('precision')}"),
                ("flavour", f"{eng.get('flavour', 'tensorrt')} {eng.get('version') or eng.get('tensorrt_version')}"),
                ("targets", "compute capability " + "/".join(eng.get("targets") or [str(eng.get("compute_capability"))])),
                ("built on", f"{eng.get('built_on', eng.get('gpu'))} in {eng.get('build_seconds', '?')} s"),
                ("profiles", _profile_summary(eng.get("profiles") or {})),
                ("size", f"{eng.get('bytes', 0) / 2**20:.1f} MB, sha256 {str(eng.get('sha256', ''))[:16]}… (verified)"),
                ("valid here", "yes" if check.ok else f"[yellow]no[/yellow]: {check.reason}")):
            t.add_row(key, value)
        tables.append(t)
    if not tables:
        t = Table(title="TensorRT engines", show_header=False)
        t.add_row("none", "build them: rsvl-export rebuild-engine BUNDLE --engine tensorrt-rtx")
        tables.append(t)
    return tables


def print_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Verify ``path`` (every file's sha256) and print its manifest as tables."""
    from rich.console import Console
    from rich.table import Table

    b = Bundle.load(path)
    m = b.manifest
    con = Console()
    t = Table(title=f"rsvl bundle {b.root}", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    vocab = m.get("default_vocabulary") or []
    rows = [
        ("model", f"{m['model']} ({m.get('architecture')}, task {m['task']}, head {m.get('head')})"),
        ("format", str(m["format_version"])),
        ("digest", b.digest),
        ("precision / opset", f"{m.get('precision')} / {m.get('opset')}"),
        ("modes", ", ".join(b.modes)),
        ("tile", f"{b.tile_size} px, overlap {b.overlap}"),
        ("embedding dim", str(m.get("embedding_dim"))),
        ("tokenizer", f"{m['text'].get('tokenizer')} (max length {m['text'].get('max_length')}, "
                      f"{m['text'].get('encoder')})"),
        ("templates", " | ".join(m["text"].get("templates") or []) or "-"),
        ("default vocabulary", ", ".join(c["name"] for c in vocab) or "-"),
        ("fixed K", str(m.get("fixed_vocabulary_size") or "no (open vocabulary)")),
        ("limits", f"batch ≤ {m.get('limits', {}).get('max_batch')}, K ≤ {m.get('limits', {}).get('max_vocab')}"),
        ("weights", f"{m.get('weights', {}).get('source')} (trained: {m.get('weights', {}).get('trained')})"),
        ("versions", ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())),
        ("created", str(m.get("created"))),
    ]
    for k, v in rows:
        t.add_row(k, v)
    con.print(t)

    for name in ("graphs",):
        g = Table(title="graphs")
        for col in ("graph", "files", "inputs", "outputs", "exporter"):
            g.add_column(col)
        for gname, meta in m[name].items():
            files = ", ".join(meta[p] for p in ("fp32", "fp16") if p in meta)
            ins = "; ".join(f"{n} {v['dtype']}{v['shape']}" for n, v in meta.get("inputs", {}).items())
            outs = "; ".join(f"{n} {v['dtype']}{v['shape']}" for n, v in meta.get("outputs", {}).items())
            g.add_row(gname, files, ins, outs, str(meta.get("exporter", "")))
        con.print(g)

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
    for rel, meta in m["files"].items():
        f.add_row(rel, f"{meta['bytes']:,}", meta["sha256"][:16] + "…")
    con.print(f)
    return b
