"""Deflate of one 512 x 512 uint8 tile as a zlib stream (TIFF DEFLATE), with the fastest codec
installed: ISA-L's igzip for the fast levels, libdeflate above, zlib without them (see
:mod:`rsvl_runtime.cog` for the measurements)."""

from __future__ import annotations

import zlib

import numpy as np

try:  # pragma: no cover - exercised where installed
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover
    _isal = None
try:  # pragma: no cover - exercised where installed
    import deflate as _libdeflate
except ImportError:  # pragma: no cover
    _libdeflate = None

__all__ = ["FAST_LEVEL", "deflate_tile"]

#: Deflate levels up to this one are "fast": igzip level 1 where ``isal`` is installed.
FAST_LEVEL = 2


def deflate_tile(data: bytes | np.ndarray, level: int) -> bytes:
    """One tile as a zlib stream (TIFF DEFLATE): igzip level 1 for ``level <= FAST_LEVEL`` when
    ``isal`` is installed, else libdeflate (the ``deflate`` package) at ``level``, else zlib."""
    if level <= FAST_LEVEL and _isal is not None:
        return bytes(_isal.compress(data, 1))
    if _libdeflate is not None:
        return bytes(_libdeflate.zlib_compress(data, level))
    return zlib.compress(data, level)
