"""Sensor presets: the bands and the scaling of known optical products (``--sensor NAME``).

A preset names, for a stacked multi-band GeoTIFF of a product, which raster bands are the
bundle's red, green and blue (1-based, in the bundle's band order) and how its digital numbers
become reflectance (``dn * scale + offset``, :class:`rsvl_runtime.normalization.OpticalScaling`).
It fills what the caller did not give: ``--bands`` wins over the preset's bands, ``--scale``
(with its ``--offset``, default 0) over its scaling, and ``--offset`` alone replaces its offset
(:func:`resolve_scaling`, :func:`preset_bands`). Messages name the preset's band names.

The stack orders assumed (the common "one file, all bands" exports):

- ``sentinel2-l2a``: Sentinel-2 L2A surface reflectance x 10000 (uint16), bands
  ``B1 B2 B3 B4 B5 B6 B7 B8 B8A B9 B11 B12`` (12 bands, L2A has no B10; a 13-band stack with
  B10, in the L1C order, has B2..B4 at the same places): red, green, blue = bands 4,3,2
  (B4, B3, B2); scale 0.0001, offset 0 (processing baseline < 04.00).
- ``sentinel2-l2a-pb04``: the same for processing baseline >= 04.00 (products since
  25 January 2022, and the reprocessed archive), whose DNs carry ``BOA_ADD_OFFSET`` -1000:
  scale 0.0001, offset -0.1.
- ``landsat-c2-l2``: Landsat 8/9 Collection 2 Level-2 surface reflectance (uint16), bands
  ``SR_B1 .. SR_B7``: red, green, blue = bands 4,3,2 (SR_B4, SR_B3, SR_B2); scale 2.75e-05,
  offset -0.2 (the USGS C2 L2 scaling).

:func:`suggest_presets` names the presets a raster looks like (band count and data type), for
the band hint of :func:`rsvl_runtime.raster_io.select_bands`.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .normalization import OpticalScaling


@dataclass(frozen=True)
class SensorPreset:
    """One product: its stack order, the raster bands of red/green/blue and its scaling."""

    name: str
    title: str
    stack: tuple[str, ...]  # band names of the stacked file, band 1 first
    rgb: tuple[str, ...]  # the bands used, in the bundle's order (red, green, blue)
    scale: float
    offset: float
    dtype: str  # the data type of the product's files
    counts: tuple[int, ...]  # band counts of files that look like this product

    @property
    def bands(self) -> tuple[int, ...]:
        """1-based raster bands of :attr:`rgb` in the stacked file."""
        return tuple(self.stack.index(b) + 1 for b in self.rgb)

    def describe_bands(self) -> str:
        """``"4,3,2 (B4, B3, B2)"``."""
        return f"{','.join(map(str, self.bands))} ({', '.join(self.rgb)})"


_S2_STACK = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")
_S2_RGB = ("B4", "B3", "B2")

PRESETS: dict[str, SensorPreset] = {p.name: p for p in (
    SensorPreset("sentinel2-l2a", "Sentinel-2 L2A (processing baseline < 04.00)", _S2_STACK, _S2_RGB,
                 1e-4, 0.0, "uint16", (12, 13)),
    SensorPreset("sentinel2-l2a-pb04", "Sentinel-2 L2A (processing baseline >= 04.00, BOA_ADD_OFFSET -1000)",
                 _S2_STACK, _S2_RGB, 1e-4, -0.1, "uint16", (12, 13)),
    SensorPreset("landsat-c2-l2", "Landsat 8/9 Collection 2 Level-2 surface reflectance",
                 ("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7"), ("SR_B4", "SR_B3", "SR_B2"),
                 2.75e-05, -0.2, "uint16", (7,)),
)}

#: The ``--sensor`` choices.
SENSOR_NAMES = tuple(PRESETS)


def get_preset(name: str) -> SensorPreset:
    """The preset called ``name``; an unknown name is a ValueError listing the known ones."""
    key = str(name).strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    close = difflib.get_close_matches(key, SENSOR_NAMES, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ValueError(f"--sensor {name!r} is not a known sensor preset{hint}; choose one of "
                     f"{', '.join(SENSOR_NAMES)} or give --bands and --scale/--offset yourself")


def preset_bands(sensor: str | None, bands: Sequence[int] | None) -> tuple[int, ...] | None:
    """The bands to read: the caller's ``bands``, else the preset's, else None (the raster's)."""
    if bands is not None:
        return tuple(int(b) for b in bands)
    return get_preset(sensor).bands if sensor else None


def resolve_scaling(sensor: str | None, scale: float | None, offset: float | None,
                    stretch: Sequence[float] | None) -> OpticalScaling | None:
    """The optical scaling of a run: the caller's ``scale``/``offset``/``stretch``, the preset
    filling ``scale`` and ``offset`` where the caller gave none; None without any of them (the
    bundle's own ``dn / scale + offset`` applies)."""
    if sensor is None and scale is None and offset is None and stretch is None:
        return None
    preset = get_preset(sensor) if sensor else None
    if preset is not None:
        if scale is None:
            scale, offset = preset.scale, preset.offset if offset is None else offset
        elif offset is None:
            offset = 0.0
    st = None if stretch is None else (float(stretch[0]), float(stretch[1]))
    return OpticalScaling(scale=None if scale is None else float(scale),
                          offset=None if offset is None else float(offset), stretch=st,
                          sensor=preset.name if preset else None)


def scaling_of(options: Any) -> OpticalScaling | None:
    """:func:`resolve_scaling` of an :class:`~rsvl_runtime.options.InputOptions`."""
    return resolve_scaling(options.sensor, options.scale, options.offset, options.stretch)


def suggest_presets(count: int, dtype: str) -> list[SensorPreset]:
    """The presets a raster of ``count`` bands of ``dtype`` looks like."""
    return [p for p in PRESETS.values() if count in p.counts and dtype == p.dtype]


def suggestion(count: int, dtype: str) -> str:
    """``"; it looks like a Sentinel-2 L2A stack: --sensor sentinel2-l2a (bands 4,3,2 (B4, B3, B2)) ..."``
    for the band hint, or ``""``."""
    found = suggest_presets(count, dtype)
    if not found:
        return ""
    opts = " or ".join(f"--sensor {p.name} ({p.title}: bands {p.describe_bands()}, "
                       f"scale {p.scale:g}, offset {p.offset:g})" for p in found)
    return f"; it looks like a {count}-band {dtype} product stack: {opts}"
