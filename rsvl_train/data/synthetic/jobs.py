"""Scene jobs for the batch runner: :func:`write_scene_job` (good scenes plus one misregistered
pair, listed in a ``scenes.csv``), used by ``benchmarks/scaleout.py`` and the batch tests, and
:func:`write_misregistered_pair` (a scene whose SAR does not line up with its optical image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from .constants import SAR_NODATA
from .geotiff import SceneFiles, from_origin, write_scene, write_tif

__all__ = ["write_misregistered_pair", "write_scene_job"]


def write_misregistered_pair(
    out_dir: str | Path,
    kind: Literal["crs", "resolution", "shift"] = "crs",
    height: int = 128,
    width: int = 128,
    seed: int = 0,
) -> SceneFiles:
    """A scene whose ``sar.tif`` does not line up with ``optical.tif``.

    ``kind``: ``"crs"`` (SAR in EPSG:32634 instead of EPSG:32633), ``"resolution"`` (SAR at
    20 m instead of 10 m, so half the rows/columns), ``"shift"`` (SAR grid moved by 3.5
    pixels east and 2 pixels south). ``SceneFiles.extra`` records the SAR CRS and transform.
    """
    import rasterio
    files = write_scene(out_dir, height, width, seed)
    origin = (500000.0, 4600000.0)
    with rasterio.open(files.sar) as src:
        data = src.read(1)
    if kind == "crs":
        crs, transform = "EPSG:32634", from_origin(*origin, 10.0, 10.0)
    elif kind == "resolution":
        data = data[::2, ::2].copy()
        crs, transform = "EPSG:32633", from_origin(*origin, 20.0, 20.0)
    elif kind == "shift":
        crs, transform = "EPSG:32633", from_origin(origin[0] + 35.0, origin[1] - 20.0, 10.0, 10.0)
    else:
        raise ValueError(f"kind must be 'crs', 'resolution' or 'shift', got {kind!r}")
    write_tif(files.sar, data, transform, crs=crs, nodata=SAR_NODATA)
    files.extra = {"kind": kind, "sar_crs": crs, "sar_transform": tuple(transform)[:6]}
    return files


def write_scene_job(
    root: str | Path,
    n_good: int,
    height: int,
    width: int,
    seed: int = 10,
    bad_kind: Literal["crs", "resolution", "shift"] = "crs",
    bad_index: int | None = None,
) -> Path:
    """A batch job: ``n_good`` co-registered scenes (``root/sceneNN/``) plus one misregistered pair
    (``root/bad/``), listed in ``root/scenes.csv`` (``id,optical,sar``, paths relative to ``root``;
    the bad pair at ``bad_index``, default last). Returns the manifest path."""
    import csv

    root = Path(root)
    rows = []
    for i in range(n_good):
        name = f"scene{i}"
        write_scene(root / name, height, width, seed=seed + i, workers=1)
        rows.append({"id": name, "optical": f"{name}/optical.tif", "sar": f"{name}/sar.tif"})
    write_misregistered_pair(root / "bad", kind=bad_kind, height=height, width=width, seed=seed - 7)
    bad = {"id": "bad", "optical": "bad/optical.tif", "sar": "bad/sar.tif"}
    rows.insert(len(rows) if bad_index is None else bad_index, bad)
    manifest = root / "scenes.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "optical", "sar"])
        w.writeheader()
        w.writerows(rows)
    return manifest
