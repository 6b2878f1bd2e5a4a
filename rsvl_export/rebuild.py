"""``rsvl-export rebuild-engine BUNDLE``: (re)build the image engine on this GPU machine and
record it in the manifest (for a bundle exported on a machine without TensorRT, or an engine
built for another TensorRT version or GPU)."""

from __future__ import annotations

import logging
from pathlib import Path

from rsvl_runtime.bundle import Bundle, write_manifest

from .engines import build_image_engine

log = logging.getLogger("rsvl.export")


def rebuild_engine(bundle_dir: Path, precision: str | None = None) -> Path:
    b = Bundle.load(bundle_dir)
    m = dict(b.manifest)
    precision = precision or m.get("precision", "fp16")
    limits = m.get("limits", {})
    meta = build_image_engine(b.graph_file("image", precision), b.root, precision, m["graphs"]["image"]["inputs"],
                              limits.get("max_batch", 32), limits.get("max_vocab", 256), required=True)
    assert meta is not None
    m["engines"] = [e for e in m.get("engines", []) if e.get("file") != meta["file"]] + [meta]
    write_manifest(b.root, m)
    log.info("engine %s built (TensorRT %s, sm %s)", meta["file"], meta.get("tensorrt_version"),
             meta.get("compute_capability"))
    return b.root / meta["file"]
