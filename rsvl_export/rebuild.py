"""``rsvl-export rebuild-engine BUNDLE``: (re)build the bundle's engines on this machine and
record them in the manifest (for a bundle exported without engines, or with engines built for
another TensorRT flavour, version or GPU). Old engines are replaced only after every new one
is built, so a failed rebuild leaves the bundle as it was. The manifest is rewritten from the
typed ``Bundle.meta`` (``rsvl_runtime/manifest.py``), so a bundle of an older format version comes
out in the current one."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rsvl_runtime.bundle import Bundle, write_manifest
from rsvl_runtime.manifest import EngineEntry

from .engines import build_bundle_engines

log = logging.getLogger("rsvl.export")


def rebuild_engine(bundle_dir: Path, precision: str | None = None, engine: str = "auto",
                   targets: Sequence[str] | None = None, workspace_gb: float | None = None) -> list[Path]:
    """Build the engines with ``engine`` (``auto`` | ``tensorrt`` | ``tensorrt-rtx``) and return their paths."""
    if not Path(bundle_dir).is_dir():
        raise ValueError(f"{bundle_dir} is not a bundle folder (a zip bundle is read-only: unzip it, rebuild the "
                         "engines in the folder, and zip it again)")
    b = Bundle.load(bundle_dir)
    m = b.meta
    precision = precision or m.precision
    with tempfile.TemporaryDirectory(dir=b.root, prefix=".rebuild-") as tmp:
        work = Path(tmp)
        for g in m.graphs.values():           # build from the bundle's (verified) ONNX files
            for rel in (g.fp32, g.fp16):
                if rel and not (work / rel).exists():
                    (work / rel).symlink_to(b.path(rel))
        entries = [EngineEntry.from_dict(e, f"engines[{i}]") for i, e in enumerate(
            build_bundle_engines(work, m.graphs, precision, engine, m.limits.max_batch, m.limits.max_vocab,
                                 targets=targets, workspace_gb=workspace_gb))]
        if not entries:
            raise ValueError("no TensorRT flavour can build engines here: `pip install 'rsvl[tensorrt-rtx]'`")
        for old in m.engines:
            if old.file not in {e.file for e in entries}:
                (b.root / old.file).unlink(missing_ok=True)
        for e in entries:
            shutil.move(str(work / e.file), b.root / e.file)
    write_manifest(b.root, replace(m, engines=tuple(entries)))
    for e in entries:
        log.info("engine %s built (%s %s, runs on compute capability %s)", e.file, e.flavour, e.version,
                 "/".join(e.targets))
    return [b.root / e.file for e in entries]
