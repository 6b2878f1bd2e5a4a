"""``rsvl-export rebuild-engine BUNDLE``: (re)build the bundle's engines on this machine and
record them in the manifest (for a bundle exported without engines, or with engines built for
another TensorRT flavour, version or GPU). Old engines are replaced only after every new one
is built, so a failed rebuild leaves the bundle as it was."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rsvl_runtime.bundle import Bundle, write_manifest

from .engines import build_bundle_engines

log = logging.getLogger("rsvl.export")


def rebuild_engine(bundle_dir: Path, precision: str | None = None, engine: str = "auto",
                   targets: Sequence[str] | None = None, workspace_gb: float | None = None) -> list[Path]:
    """Build the engines with ``engine`` (``auto`` | ``tensorrt`` | ``tensorrt-rtx``) and return their paths."""
    if not Path(bundle_dir).is_dir():
        raise ValueError(f"{bundle_dir} is not a bundle folder (a zip bundle is read-only: unzip it, rebuild the "
                         "engines in the folder, and zip it again)")
    b = Bundle.load(bundle_dir)
    m = dict(b.manifest)
    precision = precision or m.get("precision", "fp16")
    limits = m.get("limits", {})
    with tempfile.TemporaryDirectory(dir=b.root, prefix=".rebuild-") as tmp:
        work = Path(tmp)
        graphs = m["graphs"]
        for g in graphs.values():             # build from the bundle's (verified) ONNX files
            for key in ("fp32", "fp16"):
                if key in g and not (work / g[key]).exists():
                    (work / g[key]).symlink_to(b.path(g[key]))
        entries = build_bundle_engines(work, graphs, precision, engine, int(limits.get("max_batch", 32)),
                                       int(limits.get("max_vocab", 256)), targets=targets,
                                       workspace_gb=workspace_gb)
        if not entries:
            raise ValueError("no TensorRT flavour can build engines here: `pip install 'rsvl[tensorrt-rtx]'`")
        for old in m.get("engines") or []:
            if old.get("file") not in {e["file"] for e in entries}:
                (b.root / old["file"]).unlink(missing_ok=True)
        for e in entries:
            shutil.move(str(work / e["file"]), b.root / e["file"])
    m["engines"] = entries
    write_manifest(b.root, m)
    for e in entries:
        log.info("engine %s built (%s %s, runs on compute capability %s)", e["file"], e["flavour"], e["version"],
                 "/".join(e["targets"]))
    return [b.root / e["file"] for e in entries]
