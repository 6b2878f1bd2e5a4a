"""Human-readable view of a bundle (``rsvl-export inspect DIR`` and ``rsvl-infer --inspect``)."""

from __future__ import annotations

import os

from .bundle import Bundle


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

    e = Table(title="TensorRT engines")
    for col in ("file", "precision", "TensorRT", "GPU", "compute capability"):
        e.add_column(col)
    for eng in m.get("engines") or []:
        e.add_row(eng.get("file", ""), eng.get("precision", ""), str(eng.get("tensorrt_version")),
                  str(eng.get("gpu")), str(eng.get("compute_capability")))
    if not m.get("engines"):
        e.add_row("none", "-", "-", "-", "build on the GPU machine: rsvl-export rebuild-engine BUNDLE")
    con.print(e)

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
