"""Synthetic bad inputs that only the tests write (the generator itself is
``rsvl_train/data/synthetic/``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rsvl_train.data.synthetic.geotiff import from_origin


def write_corrupt_tif(path: str | Path, seed: int = 0, size: int = 64, keep_fraction: float = 0.5) -> Path:
    """Write a valid single-band float32 GeoTIFF, then truncate it to ``keep_fraction`` of its bytes."""
    import rasterio

    p = Path(path)
    rng = np.random.default_rng(seed)
    data = rng.normal(-12.0, 5.0, (size, size)).astype(np.float32)
    p.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        p, "w", driver="GTiff", height=size, width=size, count=1, dtype="float32",
        crs="EPSG:32633", transform=from_origin(500000, 4600000, 10, 10),
    ) as dst:
        dst.write(data, 1)
    raw = p.read_bytes()
    p.write_bytes(raw[: max(16, int(len(raw) * keep_fraction))])
    return p
