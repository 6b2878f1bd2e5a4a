"""Shared by test_batch.py, test_ray.py and test_triton.py: small scenes with one bad pair.

The bundle is the session fixture ``tiny_bundle`` of tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

#: Scene size: 96 x 128 px -> 6 tiles of 64 px at overlap 0.25.
SCENE_HW = (96, 128)


def write_scenes(root: Path, n_good: int = 3) -> Path:
    """``n_good`` co-registered scenes + one misregistered pair (``bad``, second in ``scenes.csv``).
    Returns the manifest path."""
    from rsvl_train.data.synthetic import write_scene_job

    return write_scene_job(root, n_good, *SCENE_HW, seed=10, bad_kind="crs", bad_index=1)
