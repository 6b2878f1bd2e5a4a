"""Shared by test_batch.py, test_ray.py and test_triton.py: small scenes with one bad pair.

The bundle is the session fixture ``tiny_bundle`` of tests/conftest.py.
"""

from __future__ import annotations

import csv
from pathlib import Path

#: Scene size: 96 x 128 px -> 6 tiles of 64 px at overlap 0.25.
SCENE_HW = (96, 128)


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
