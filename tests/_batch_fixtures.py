"""Shared by test_batch.py, test_ray.py and test_triton.py: a small exported bundle and scenes.

Exporting tsmnet-tiny takes minutes on a 2-core machine, so the bundle is exported once and kept
in a cache folder keyed by the export options and the bundle format version. These tests need
*a* valid bundle, not one from the latest model code (export parity is tested elsewhere): a
cached bundle is reused when the current runtime loads it and segments a tile with it, and is
exported again otherwise. ``RSVL_TEST_BUNDLE=DIR`` uses an existing bundle instead;
``RSVL_TEST_CACHE`` moves the cache (default ``~/.cache/rsvl/test-bundles``).
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPORT = dict(model="tsmnet-tiny", tile=64, precision="fp32", engine="none", max_batch=8,
              include_weights=False)
#: Scene size: 96 x 128 px -> 6 tiles of 64 px at overlap 0.25.
SCENE_HW = (96, 128)
_CACHED: Path | None = None


def _cache_key() -> str:
    from rsvl_runtime.bundle import FORMAT_VERSION

    return hashlib.sha256(repr((sorted(EXPORT.items()), FORMAT_VERSION)).encode()).hexdigest()[:16]


def _usable(path: Path) -> bool:
    """The current runtime loads the bundle and segments a tile with it."""
    if not (path / "manifest.json").is_file():
        return False
    try:
        import numpy as np

        from rsvl_runtime import Segmenter

        seg = Segmenter.load(path, threads=1)
        t = seg.tile
        labels, _ = seg.predict(np.zeros((3, t, t), np.uint8), np.full((1, t, t), -12.0, np.float32))
        return labels.shape == (t, t)
    except Exception:  # noqa: BLE001 - anything wrong with an old bundle: export a new one
        return False


def exported_bundle() -> Path:
    """The test bundle (tsmnet-tiny, 64 px tiles, fp32, no engine), exported on first use."""
    global _CACHED
    env = os.environ.get("RSVL_TEST_BUNDLE")
    if env:
        return Path(env)
    if _CACHED is not None:
        return _CACHED
    cache = Path(os.environ.get("RSVL_TEST_CACHE", Path.home() / ".cache" / "rsvl" / "test-bundles"))
    cache.mkdir(parents=True, exist_ok=True)
    key = _cache_key()
    target = cache / f"tsmnet-tiny-t64-{key}"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one exporter at a time; the others wait and reuse
        if not _usable(target):
            from rsvl_export.pipeline import ExportOptions, export_bundle

            tmp = cache / f".tmp-{key}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            export_bundle(ExportOptions(out=str(tmp), **EXPORT))
            for old in cache.glob("tsmnet-tiny-t64-*"):  # keep the cache to one bundle
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, target)
    _CACHED = target
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
