"""Shared by test_batch.py, test_ray.py and test_triton.py: a small exported bundle and scenes.

Exporting tsmnet-tiny takes minutes on a 2-core machine, so the bundle is exported once and kept
in a cache folder keyed by a hash of the exporting code (``rsvl_export``, ``rsvl_train``, the
runtime's bundle module), the export options and the library versions: a change to any of
them exports again. ``RSVL_TEST_BUNDLE=DIR`` uses an existing bundle instead;
``RSVL_TEST_CACHE`` moves the cache (default ``~/.cache/rsvl/test-bundles``).
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import os
import shutil
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPORT = dict(model="tsmnet-tiny", tile=64, precision="fp32", engine="none", max_batch=8,
              include_weights=False)
#: Modules of rsvl_export that do not take part in exporting a bundle (not in the cache key).
_NOT_EXPORT = {"triton.py", "triton_cli.py", "cli.py", "demo.py"}
#: Scene size: 96 x 128 px -> 6 tiles of 64 px at overlap 0.25.
SCENE_HW = (96, 128)


def _cache_key() -> str:
    h = hashlib.sha256(repr(sorted(EXPORT.items())).encode())
    files = sorted([*(ROOT / "rsvl_export").rglob("*.py"), *(ROOT / "rsvl_train").rglob("*.py"),
                    *(ROOT / "rsvl_train" / "model_configs").glob("*.json"), ROOT / "rsvl_runtime" / "bundle.py"])
    for f in files:
        if "__pycache__" not in f.parts and f.name not in _NOT_EXPORT:
            h.update(f.relative_to(ROOT).as_posix().encode())
            h.update(f.read_bytes())
    for dist in ("torch", "onnx", "onnxscript", "transformers", "timm", "open_clip_torch", "tokenizers"):
        try:
            h.update(f"{dist}={metadata.version(dist)}".encode())
        except metadata.PackageNotFoundError:
            pass
    return h.hexdigest()[:16]


def exported_bundle() -> Path:
    """The test bundle (tsmnet-tiny, 64 px tiles, fp32, no engine), exported on first use."""
    env = os.environ.get("RSVL_TEST_BUNDLE")
    if env:
        return Path(env)
    cache = Path(os.environ.get("RSVL_TEST_CACHE", Path.home() / ".cache" / "rsvl" / "test-bundles"))
    cache.mkdir(parents=True, exist_ok=True)
    key = _cache_key()
    target = cache / f"tsmnet-tiny-t64-{key}"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one exporter at a time; the others wait and reuse
        if not (target / "manifest.json").is_file():
            from rsvl_export.pipeline import ExportOptions, export_bundle

            tmp = cache / f".tmp-{key}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            export_bundle(ExportOptions(out=str(tmp), **EXPORT))
            for old in cache.glob("tsmnet-tiny-t64-*"):  # keep the cache to one bundle
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, target)
    return target


def write_scenes(root: Path, n_good: int = 3) -> Path:
    """``n_good`` co-registered scenes + one misregistered pair (``bad``), and ``scenes.csv``
    listing them with paths relative to ``root``. Returns the manifest path."""
    from rsvl_train.data.synthetic import write_misregistered_pair, write_scene

    h, w = SCENE_HW
    rows = []
    for i in range(n_good):
        write_scene(root / f"scene{i}", h, w, seed=10 + i, workers=1)
        rows.append({"id": f"scene{i}", "optical": f"scene{i}/optical.tif", "sar": f"scene{i}/sar.tif"})
    write_misregistered_pair(root / "bad", kind="crs", height=h, width=w, seed=3)
    rows.insert(1, {"id": "bad", "optical": "bad/optical.tif", "sar": "bad/sar.tif"})
    manifest = root / "scenes.csv"
    with manifest.open("w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["id", "optical", "sar"])
        wr.writeheader()
        wr.writerows(rows)
    return manifest
