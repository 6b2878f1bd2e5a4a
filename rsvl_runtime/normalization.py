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

Optical: ``(dn / scale + offset - mean) / std`` with the spec's ``scale`` (255.0) and
``offset`` (0.0; a bundle trained on reflectance declares e.g. ``dtype`` uint16, ``scale``
10000). An :class:`OpticalScaling` given by the caller (``--scale S --offset O``, a
``--sensor`` preset, ``--stretch p2,p98``) replaces ``dn / scale + offset``:

- ``--scale S [--offset O]``: ``x = dn * S + O``;
- ``--stretch pLOW,pHIGH``: ``x = clip((v - low) / (high - low), 0, 1)`` per band, ``v`` the
  scaled values (``dn * S + O``, or the DNs without a scale), ``low``/``high`` their percentiles
  computed **once per scene** from a decimated read (:func:`stretch_limits`), never per tile.

SAR: linear intensity is turned into dB first when the caller says the raster is linear
(``units="linear"``), then ``(db - mean) / std``.
Pure numpy: ``rsvl_runtime`` never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .manifest import ModalitySpec as _Spec

#: What the functions here take: the typed spec or its dict form.
ModalitySpec = _Spec | Mapping[str, Any]

#: Smallest linear intensity before the dB conversion (avoids log10(0)).
LINEAR_FLOOR = 1e-6

OPTICAL_DTYPES = ("uint8", "uint16")
#: Optical data types accepted when the caller gives a scaling (:class:`OpticalScaling`).
SCALED_OPTICAL_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
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


@dataclass(frozen=True)
class OpticalScaling:
    """The caller's scaling of optical values, in place of the bundle's ``dn / scale + offset``.

    ``scale``/``offset``: ``x = v * scale + offset`` (None: no linear scaling; an offset needs a
    scale). ``stretch``: ``(low, high)`` percentiles; ``low``/``high`` their per-band values
    (in the scaled units), filled once per scene by :meth:`with_limits`. ``sensor``: the
    ``rsvl_runtime.sensors`` preset the values came from (for messages and records).
    """

    scale: float | None = None
    offset: float | None = None
    stretch: tuple[float, float] | None = None
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None
    sensor: str | None = None

    @property
    def needs_limits(self) -> bool:
        """A stretch whose per-band limits are not computed yet."""
        return self.stretch is not None and self.low is None

    def linear(self, values: np.ndarray) -> np.ndarray:
        """``values * scale + offset`` as float32 (the values themselves without a scale)."""
        x = values.astype(np.float32)
        if self.scale is not None:
            x = x * np.float32(self.scale) + np.float32(self.offset or 0.0)
        return x

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Optical values ``[..., C, H, W]`` -> the bundle's 0..1 range, float32."""
        x = self.linear(values)
        if self.stretch is None:
            return x
        if self.low is None or self.high is None:
            raise ValueError("the --stretch limits are not computed yet; call with_limits() once per scene")
        low = np.asarray(self.low, np.float32).reshape(-1, 1, 1)
        span = np.asarray(self.high, np.float32).reshape(-1, 1, 1) - low
        span = np.where(span > 0, span, np.float32(1.0))  # a constant band maps to 0
        return np.clip((x - low) / span, 0.0, 1.0).astype(np.float32)

    def with_limits(self, values: np.ndarray, valid: np.ndarray) -> OpticalScaling:
        """This scaling with its stretch limits computed from ``values [C, h, w]`` (a decimated
        read of the scene; ``valid [h, w]``: False at nodata) by :func:`stretch_limits`."""
        if self.stretch is None:
            return self
        low, high = stretch_limits(self.linear(values), valid, self.stretch)
        return replace(self, low=low, high=high)

    def record(self) -> dict[str, Any]:
        """What the run's ``done.json``/report records about the scaling."""
        rec: dict[str, Any] = {"sensor": self.sensor, "scale": self.scale, "offset": self.offset}
        if self.stretch is not None:
            rec["stretch"] = {"percentiles": list(self.stretch), "low": list(self.low or ()),
                              "high": list(self.high or ())}
        return rec


def stretch_limits(values: np.ndarray, valid: np.ndarray,
                   percentiles: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band ``(low, high)`` percentiles of ``values [C, h, w]`` over the ``valid [h, w]``
    pixels that are finite in every band; no such pixel is a ValueError."""
    ok = valid & np.isfinite(values).all(axis=0)
    if not ok.any():
        raise ValueError("--stretch: the optical raster has no valid pixel to compute percentiles from; "
                         "check its nodata (--nodata) or use --scale instead")
    lo, hi = float(percentiles[0]), float(percentiles[1])
    bands = [np.percentile(values[c][ok].astype(np.float64), [lo, hi]) for c in range(values.shape[0])]
    return tuple(float(b[0]) for b in bands), tuple(float(b[1]) for b in bands)


def _standardise(x: np.ndarray, spec: _Spec, out: np.ndarray | None, owned: bool) -> np.ndarray:
    """``(x - mean) / std`` per band as float32, into ``out`` (a float32 array or strided view of
    ``x``'s shape), else in place when ``x`` is a float32 temporary of ours (``owned``), else into a
    new array. ``x`` is made float32 first and the same float32 operations run in the same order
    as the plain expression, so the bits are the same, without its temporaries; a caller's array
    is never changed."""
    mean, std = band_stats(spec, x.shape[-3])
    if x.dtype != np.float32:
        x, owned = x.astype(np.float32), True
    if out is None:
        out = x if owned else np.empty(x.shape, np.float32)
    np.subtract(x, mean, out=out)
    np.divide(out, std, out=out)
    return out


def normalize_optical(dn: np.ndarray, spec: ModalitySpec, scaling: OpticalScaling | None = None,
                      out: np.ndarray | None = None) -> np.ndarray:
    """Optical values ``[..., C, H, W]`` -> normalised float32: ``dn / scale + offset`` as the
    bundle declares (or the caller's ``scaling``), then ``(x - mean) / std``; written into ``out``
    when given (a float32 array or view of the same shape)."""
    s = _Spec.coerce(spec)
    if scaling is None:
        x = np.divide(dn, np.float32(s.optical_scale), dtype=np.float32,
                      out=out if out is not None else np.empty(dn.shape, np.float32))
        if s.optical_offset:
            np.add(x, np.float32(s.optical_offset), out=x)
    else:
        x = scaling.apply(dn)  # a new array
    return _standardise(x, s, out, owned=True)


def normalize_sar(values: np.ndarray, spec: ModalitySpec, units: str | None = None,
                  out: np.ndarray | None = None) -> np.ndarray:
    """SAR ``[..., 1, H, W]`` in dB (default) or linear intensity -> normalised float32, written
    into ``out`` when given."""
    s = _Spec.coerce(spec)
    units = units.lower() if units else s.sar_units
    if units not in SAR_UNITS:
        raise ValueError(f"SAR units must be one of {SAR_UNITS}, got {units!r}")
    if units == "linear":
        return _standardise(linear_to_db(values), s, out, owned=True)
    return _standardise(values, s, out, owned=False)


def normalize(modality: str, values: np.ndarray, spec: ModalitySpec, **kwargs: Any) -> np.ndarray:
    """Dispatch on the modality name (``"optical"`` or ``"sar"``)."""
    if modality == "optical":
        return normalize_optical(values, spec)
    if modality == "sar":
        return normalize_sar(values, spec, **kwargs)
    raise ValueError(f"unknown modality {modality!r}; expected 'optical' or 'sar'")
