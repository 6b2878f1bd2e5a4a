"""The one synthetic-tile generator: normalised model inputs with realistic class layouts.

It feeds the export's parity gate and ORT variant (``rsvl_export/pipeline.py``), ORT
calibration from a bundle (``rsvl_export/ort_optimize.py``), the benchmark
(``benchmarks/suite.py``) and the engine parity check (``benchmarks/engine_parity.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .scene import SyntheticScene

__all__ = ["MODALITIES", "synthetic_tiles"]

#: The image modalities the generator renders, in feed order.
MODALITIES = ("optical", "sar")
# Landscape offset between consecutive tiles (pixels), so tiles do not repeat each other.
_TILE_OFFSET = 4096


def _optical_scale(spec: Any) -> float:
    """The spec's optical ``scale`` (255 when absent), from a plain dict or a typed spec object."""
    value = spec.get("scale") if isinstance(spec, Mapping) else getattr(spec, "scale", None)
    return 255.0 if value is None else float(value)


def synthetic_tiles(
    preprocess: Mapping[str, Any],
    batch: int,
    tile: int,
    seed: int,
    modalities: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """``batch`` normalised ``tile x tile`` tiles per modality, as the runtime feeds a model.

    Tile ``i`` is a whole :class:`~rsvl_train.data.synthetic.scene.SyntheticScene` (seed
    ``seed + i``, a river in about half of them, its own landscape offset), so a batch holds
    varied scenes. Optical digital numbers use the spec's ``scale`` (255 for uint8 data); SAR
    is rendered in dB and normalised as dB.

    Args:
        preprocess: modality specs (``{"optical": spec, "sar": spec}``: a model config's
            ``preprocess`` or a bundle manifest's ``modalities``; a spec is what
            :mod:`rsvl_runtime.normalization` accepts).
        batch, tile: number of tiles and their side in pixels.
        seed: random seed (same seed -> identical tiles).
        modalities: the modalities to return; default every one of :data:`MODALITIES` in
            ``preprocess``.

    Returns:
        ``{"optical": float32 [batch, 3, tile, tile], "sar": float32 [batch, 1, tile, tile]}``
        (the requested keys, in :data:`MODALITIES` order).
    """
    from rsvl_runtime.normalization import normalize_optical, normalize_sar

    wanted = [m for m in MODALITIES if m in preprocess] if modalities is None else list(modalities)
    unknown = [m for m in wanted if m not in MODALITIES or m not in preprocess]
    if unknown:
        raise ValueError(f"synthetic_tiles: no modality spec for {unknown} (have {sorted(preprocess)}); "
                         f"the generator renders {list(MODALITIES)}")
    if batch <= 0 or tile <= 0:
        raise ValueError(f"batch and tile must be positive, got batch={batch}, tile={tile}")
    blocks = [SyntheticScene(seed + i, tile, tile, river=None, origin_px=(_TILE_OFFSET * i, 0)).render(0, 0, tile, tile)
              for i in range(batch)]
    out: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        if m not in wanted:
            continue
        spec = preprocess[m]
        if m == "optical":
            gain = np.float32(_optical_scale(spec) / 255.0)
            dn = np.stack([np.rint(b.optical * gain) for b in blocks])
            out[m] = normalize_optical(dn, spec)
        else:
            out[m] = normalize_sar(np.stack([b.sar_db[None] for b in blocks]), spec, units="db")
    return out
