"""Band normalisation shared by training, export parity checks and the runtime.

The statistics travel with the model config and the bundle (the manifest's ``modalities``), so a
pixel is normalised the same way everywhere: never per-tile min-max.

A modality spec is a :class:`rsvl_runtime.manifest.ModalitySpec` (a bundle's
``bundle.meta.modalities[name]``) or the same as a plain dict (a model config's ``preprocess``
entry); its defaults (``scale`` 255.0, ``units`` "db") are that class's::

    {"bands": ["red", "green", "blue"], "dtype": "uint8", "scale": 255.0,
     "mean": [0.35, 0.38, 0.33], "std": [0.20, 0.18, 0.18]}

    {"bands": ["vv"], "dtype": "float32", "units": "db",
     "mean": [-12.0], "std": [5.0]}

Optical: ``(dn / scale - mean) / std``. SAR: linear intensity is turned into dB first when the
caller says the raster is linear (``units="linear"``), then ``(db - mean) / std``.
Pure numpy: ``rsvl_runtime`` never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .manifest import ModalitySpec as _Spec

#: What the functions here take: the typed spec or its dict form.
ModalitySpec = _Spec | Mapping[str, Any]

#: Smallest linear intensity before the dB conversion (avoids log10(0)).
LINEAR_FLOOR = 1e-6

OPTICAL_DTYPES = ("uint8", "uint16")
SAR_UNITS = ("db", "linear")


def linear_to_db(x: np.ndarray) -> np.ndarray:
    """Linear backscatter intensity -> decibels, ``10 * log10(max(x, 1e-6))``."""
    return (10.0 * np.log10(np.maximum(x.astype(np.float32), LINEAR_FLOOR))).astype(np.float32)


def band_stats(spec: ModalitySpec, n_bands: int) -> tuple[np.ndarray, np.ndarray]:
    """The spec's per-band ``mean`` and ``std`` as ``[n_bands, 1, 1]`` float32 (one value per band)."""
    s = _Spec.coerce(spec)
    mean = np.asarray(s.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(s.std, dtype=np.float32).reshape(-1, 1, 1)
    if mean.shape[0] != n_bands or std.shape[0] != n_bands:
        raise ValueError(
            f"normalisation has {mean.shape[0]} means / {std.shape[0]} stds for {n_bands} bands; "
            "the modality spec's 'mean' and 'std' need one value per band"
        )
    return mean, std


def normalize_optical(dn: np.ndarray, spec: ModalitySpec) -> np.ndarray:
    """Digital numbers ``[..., C, H, W]`` -> normalised float32, as the bundle declares."""
    s = _Spec.coerce(spec)
    x = dn.astype(np.float32) / np.float32(s.optical_scale)
    mean, std = band_stats(s, x.shape[-3])
    return ((x - mean) / std).astype(np.float32)


def normalize_sar(values: np.ndarray, spec: ModalitySpec, units: str | None = None) -> np.ndarray:
    """SAR ``[..., 1, H, W]`` in dB (default) or linear intensity -> normalised float32."""
    s = _Spec.coerce(spec)
    units = units.lower() if units else s.sar_units
    if units not in SAR_UNITS:
        raise ValueError(f"SAR units must be one of {SAR_UNITS}, got {units!r}")
    x = linear_to_db(values) if units == "linear" else values.astype(np.float32)
    mean, std = band_stats(s, x.shape[-3])
    return ((x - mean) / std).astype(np.float32)


def normalize(modality: str, values: np.ndarray, spec: ModalitySpec, **kwargs: Any) -> np.ndarray:
    """Dispatch on the modality name (``"optical"`` or ``"sar"``)."""
    if modality == "optical":
        return normalize_optical(values, spec)
    if modality == "sar":
        return normalize_sar(values, spec, **kwargs)
    raise ValueError(f"unknown modality {modality!r}; expected 'optical' or 'sar'")
