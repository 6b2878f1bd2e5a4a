"""Streamed GeoTIFF writing of synthetic scenes: :func:`write_scene` renders a
:class:`~rsvl_train.data.synthetic.scene.SyntheticScene` window by window into co-registered
``optical.tif`` / ``sar.tif`` / ``labels.tif`` files with bounded memory, and
:func:`write_tif` writes one small raster (dataset tiles, misregistered SAR).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .constants import (
    CLASS_NAMES,
    DEFAULT_PREPROCESS,
    IGNORE_INDEX,
    OPTICAL_SCALE,
    SAR_NODATA,
)
from .scene import SceneBlock, SyntheticScene

__all__ = ["SceneFiles", "from_origin", "write_scene", "write_tif"]


@dataclass
class SceneFiles:
    """Paths and metadata of a scene written by :func:`write_scene`."""

    optical: Path
    sar: Path
    labels: Path
    height: int
    width: int
    seed: int
    crs: str
    transform: tuple[float, float, float, float, float, float]
    resolution: float
    optical_dtype: str
    optical_scale: float
    optical_nodata: float | None
    sar_units: str
    sar_nodata: float
    label_nodata: int = IGNORE_INDEX
    class_names: tuple[str, ...] = CLASS_NAMES
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def preprocess(self) -> dict[str, dict[str, Any]]:
        """Modality specs matching these files (the synthetic statistics, this dtype/units)."""
        opt = dict(DEFAULT_PREPROCESS["optical"], dtype=self.optical_dtype, scale=self.optical_scale)
        sar = dict(DEFAULT_PREPROCESS["sar"], units=self.sar_units)
        return {"optical": opt, "sar": sar}


def _profile(
    height: int, width: int, count: int, dtype: str, crs: Any, transform: Any, nodata: float | None
) -> dict[str, Any]:
    prof: dict[str, Any] = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 3 if dtype.startswith("float") else 2,
        "num_threads": "ALL_CPUS",
        "BIGTIFF": "IF_SAFER",
    }
    if count > 1:
        prof["interleave"] = "pixel"
    if nodata is not None:
        prof["nodata"] = nodata
    return prof


def from_origin(west: float, north: float, xres: float, yres: float) -> Any:
    """``rasterio.transform.from_origin`` without its Affine-multiplication deprecation warning."""
    from affine import Affine

    return Affine(float(xres), 0.0, float(west), 0.0, -float(yres), float(north))


def _encode_optical(block: SceneBlock, optical_dtype: str, nodata: bool) -> np.ndarray:
    rgb = block.optical
    if optical_dtype == "uint8":
        out = np.rint(rgb).astype(np.uint8)
    else:
        out = np.rint(rgb * np.float32(OPTICAL_SCALE["uint16"] / 255.0)).astype(np.uint16)
    if nodata:
        np.maximum(out, 1, out=out)
        out[:, ~block.valid] = 0
    return out


def _encode_sar(block: SceneBlock, sar_units: str) -> np.ndarray:
    if sar_units == "db":
        out = block.sar_db.copy()
    else:
        out = np.power(np.float32(10.0), block.sar_db / np.float32(10.0)).astype(np.float32)
    out[~block.valid] = SAR_NODATA
    return out


def write_scene(
    out_dir: str | Path,
    height: int,
    width: int,
    seed: int,
    crs: str = "EPSG:32633",
    resolution: float = 10.0,
    origin: tuple[float, float] = (500000.0, 4600000.0),
    block: int = 1024,
    nodata_fraction: float = 0.0,
    optical_dtype: Literal["uint8", "uint16"] = "uint8",
    sar_units: Literal["db", "linear"] = "db",
    river: bool | None = True,
    workers: int = 2,
    prefix: str = "",
) -> SceneFiles:
    """Write a co-registered ``optical.tif``, ``sar.tif`` and ``labels.tif`` scene, streamed.

    The scene is rendered and written ``block x block`` window by window (``workers`` threads
    render ahead of the writer; at most ``2 * workers`` blocks are held), so memory stays
    bounded (about 40 bytes per block pixel per held block) whatever the scene size.

    Files (tiled 256x256, deflate, north-up ``from_origin(origin[0], origin[1], res, res)``):

    - ``optical.tif``: 3 bands RGB, uint8 (or uint16 with ``dn = reflectance * 10000``);
      nodata 0 declared only when ``nodata_fraction > 0`` (valid pixels are then >= 1).
    - ``sar.tif``: 1 band float32, dB (or linear intensity); nodata -9999 always declared.
    - ``labels.tif``: 1 band uint8 class ids (:data:`CLASS_NAMES`), nodata 255 declared.

    Args:
        out_dir: folder to write into (created).
        height, width: scene size in pixels.
        seed: random seed (same seed -> identical files).
        crs, resolution, origin: georeferencing (origin = upper-left corner, map units).
        block: rendering window size in pixels (the output does not depend on it).
        nodata_fraction: fraction of the scene outside the footprint (north-west corner).
        optical_dtype: ``"uint8"`` or ``"uint16"``.
        sar_units: ``"db"`` or ``"linear"``.
        river: see :class:`SyntheticScene`.
        workers: rendering threads.
        prefix: file-name prefix (``f"{prefix}optical.tif"``...).
    """
    import rasterio
    if optical_dtype not in OPTICAL_SCALE:
        raise ValueError(f"optical_dtype must be one of {tuple(OPTICAL_SCALE)}, got {optical_dtype!r}")
    if sar_units not in ("db", "linear"):
        raise ValueError(f"sar_units must be 'db' or 'linear', got {sar_units!r}")
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scene = SyntheticScene(seed, height, width, nodata_fraction=nodata_fraction, river=river)
    transform = from_origin(origin[0], origin[1], resolution, resolution)
    opt_nodata = 0.0 if nodata_fraction > 0 else None
    paths = (out / f"{prefix}optical.tif", out / f"{prefix}sar.tif", out / f"{prefix}labels.tif")
    profiles = (
        _profile(height, width, 3, optical_dtype, crs, transform, opt_nodata),
        _profile(height, width, 1, "float32", crs, transform, SAR_NODATA),
        _profile(height, width, 1, "uint8", crs, transform, IGNORE_INDEX),
    )
    windows = list(scene.windows(block))
    from rasterio.windows import Window

    with (
        rasterio.Env(GDAL_CACHEMAX=128),  # MB; GDAL's default (5% of RAM) would hold blocks
        rasterio.open(paths[0], "w", **profiles[0]) as dst_o,
        rasterio.open(paths[1], "w", **profiles[1]) as dst_s,
        rasterio.open(paths[2], "w", **profiles[2]) as dst_l,
    ):
        dst_l.update_tags(CLASS_NAMES=",".join(CLASS_NAMES))
        dst_s.update_tags(UNITS=sar_units)
        dst_o.update_tags(SCALE=str(OPTICAL_SCALE[optical_dtype]))
        dst_o.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                             rasterio.enums.ColorInterp.blue]

        def job(win: tuple[int, int, int, int]) -> tuple[Window, np.ndarray, np.ndarray, np.ndarray]:
            r, c, hh, ww = win
            b = scene.render(r, c, hh, ww)
            return (
                Window(c, r, ww, hh),
                _encode_optical(b, optical_dtype, nodata_fraction > 0),
                _encode_sar(b, sar_units),
                b.labels,
            )

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            pending: list[Any] = []
            it = iter(windows)
            for win in it:
                pending.append(pool.submit(job, win))
                if len(pending) >= 2 * max(1, workers):
                    break
            while pending:
                window, o, s, lab = pending.pop(0).result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(job, nxt))
                dst_o.write(o, window=window)
                dst_s.write(s, 1, window=window)
                dst_l.write(lab, 1, window=window)
    return SceneFiles(
        optical=paths[0],
        sar=paths[1],
        labels=paths[2],
        height=height,
        width=width,
        seed=seed,
        crs=str(crs),
        transform=tuple(transform)[:6],  # type: ignore[arg-type]
        resolution=float(resolution),
        optical_dtype=optical_dtype,
        optical_scale=OPTICAL_SCALE[optical_dtype],
        optical_nodata=opt_nodata,
        sar_units=sar_units,
        sar_nodata=SAR_NODATA,
        seconds=time.perf_counter() - t0,
    )


def write_tif(path: Path, array: np.ndarray, transform: Any = None, crs: str | None = "EPSG:32633",
              nodata: float | None = None) -> None:
    """One small deflate GeoTIFF of ``array`` (``[h, w]`` or ``[bands, h, w]``); default grid
    ``from_origin(500000, 4600000, 10, 10)``."""
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = array if array.ndim == 3 else array[None]
    prof: dict[str, Any] = {
        "driver": "GTiff", "height": arr.shape[1], "width": arr.shape[2], "count": arr.shape[0],
        "dtype": arr.dtype.name, "crs": crs, "compress": "deflate",
        "transform": transform if transform is not None else from_origin(500000, 4600000, 10, 10),
    }
    if nodata is not None:
        prof["nodata"] = nodata
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(arr)
