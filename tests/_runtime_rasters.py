"""Tiny synthetic GeoTIFFs and a per-pixel fake model for the runtime tests (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin

from rsvl_runtime.normalization import normalize_optical, normalize_sar

CRS = "EPSG:32633"
ORIGIN = (500000.0, 4100000.0)
RES = 10.0

OPTICAL_SPEC: dict[str, Any] = {"bands": ["red", "green", "blue"], "dtype": "uint8", "scale": 255.0,
                                "mean": [0.35, 0.38, 0.33], "std": [0.20, 0.18, 0.18]}
SAR_SPEC: dict[str, Any] = {"bands": ["vv"], "dtype": "float32", "units": "db",
                            "mean": [-12.0], "std": [5.0]}


def write_tif(path: Path, data: np.ndarray, *, crs: str | None = CRS, origin: tuple[float, float] = ORIGIN,
              res: float | tuple[float, float] = RES, nodata: float | None = None, **extra: Any) -> Path:
    """Write ``data [C, H, W]`` as a GeoTIFF on a north-up grid."""
    rx, ry = (res, res) if isinstance(res, (int, float)) else res
    c, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype=data.dtype.name,
                       crs=crs, transform=from_origin(origin[0], origin[1], rx, ry), nodata=nodata,
                       **extra) as ds:
        ds.write(data)
    return path


def optical_array(h: int, w: int, seed: int = 0, bands: int = 3, dtype: str = "uint8") -> np.ndarray:
    """Smooth-ish random DNs (a gradient plus noise) so that classes form regions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(xx / 9.0 + k) + np.cos(yy / 7.0 - k) for k in range(bands)])
    arr = 128 + 50 * base + rng.normal(0, 20, (bands, h, w))
    top = 255 if dtype == "uint8" else 4000
    return np.clip(arr * (top / 255.0), 1, top).astype(dtype)


def sar_array(h: int, w: int, seed: int = 1) -> np.ndarray:
    """Float32 dB backscatter."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return (-12 + 4 * np.sin((xx + yy) / 11.0) + rng.normal(0, 2, (h, w))).astype(np.float32)[None]


class LinearModel:
    """A fake ``predict_fn``: per-pixel linear map of the normalised bands (+ bias), K classes.

    Missing modalities are zeros (as the real graphs). Records the batch sizes it was called with.
    """

    def __init__(self, k: int, seed: int = 3, fail_after: int | None = None,
                 error: type[BaseException] = KeyboardInterrupt) -> None:
        rng = np.random.default_rng(seed)
        self.k = k
        self.weights = rng.normal(0, 1.5, (k, 4)).astype(np.float32)
        self.bias = rng.normal(0, 0.5, k).astype(np.float32)
        self.calls: list[int] = []
        self.fail_after = fail_after
        self.error = error

    def apply(self, optical: np.ndarray | None, sar: np.ndarray | None) -> np.ndarray:
        """Logits ``[..., K, H, W]`` from normalised ``[..., 3, H, W]`` and ``[..., 1, H, W]``."""
        ref = optical if optical is not None else sar
        assert ref is not None
        shape = ref.shape[:-3]
        opt = optical if optical is not None else np.zeros(shape + (3,) + ref.shape[-2:], np.float32)
        s = sar if sar is not None else np.zeros(shape + (1,) + ref.shape[-2:], np.float32)
        x = np.concatenate([opt, s], axis=-3)
        logits = np.einsum("kc,...chw->...khw", self.weights, x)
        return (logits + self.bias[:, None, None]).astype(np.float32)

    def __call__(self, optical: np.ndarray | None, sar: np.ndarray | None) -> np.ndarray:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise self.error("interrupted by the test")
        ref = optical if optical is not None else sar
        assert ref is not None
        self.calls.append(int(ref.shape[0]))
        return self.apply(optical, sar)


def whole_image_logits(model: LinearModel, optical: np.ndarray | None, sar: np.ndarray | None,
                       valid: np.ndarray) -> np.ndarray:
    """The model applied to the whole normalised scene at once (invalid pixels zeroed)."""
    opt = normalize_optical(optical, OPTICAL_SPEC) if optical is not None else None
    with np.errstate(invalid="ignore"):
        s = normalize_sar(sar, SAR_SPEC) if sar is not None else None
    for a in (opt, s):
        if a is not None:
            a[:, ~valid] = 0
    return model.apply(opt, s)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)
