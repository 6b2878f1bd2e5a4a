"""Hashing and coordinate-based noise: every value is a function of the seed and the global pixel.

Smooth fields (value noise and its fractal sum) hash an integer lattice, so any window of a
field is the same whatever block it is computed in. Per-pixel noise (:func:`pixel_noise`) is
drawn from random generators seeded per fixed :data:`NOISE_TILE` x :data:`NOISE_TILE` tile, for
the same reason.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = [
    "NOISE_TILE",
    "fbm_block",
    "fbm_points",
    "hash_keys",
    "mix64",
    "noise_block",
    "noise_points",
    "pixel_noise",
    "sub_seed",
    "unit",
]

#: Side of the fixed tiles the per-pixel noise is drawn in (pixels).
NOISE_TILE = 256

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> _S30)
    x = x * _M1
    x = x ^ (x >> _S27)
    x = x * _M2
    return x ^ (x >> _S31)


def hash_keys(seed: int, *keys: np.ndarray | int) -> np.ndarray:
    """Hash integer keys (broadcast together) with a seed -> uint64 array."""
    with np.errstate(over="ignore"):
        h = np.atleast_1d(np.asarray(seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64))
        for k in keys:
            k64 = np.atleast_1d(np.asarray(k)).astype(np.int64).astype(np.uint64)
            h = mix64(h ^ (k64 + _GOLDEN))
        return h


def unit(h: np.ndarray) -> np.ndarray:
    """uint64 hash -> float64 uniform in [0, 1)."""
    return (h >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)


def sub_seed(seed: int, name: str) -> int:
    """A stream seed derived from the scene seed and a field name."""
    return int(hash_keys(seed, zlib.crc32(name.encode()))[0])


def _axis_coords(start: int, n: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    t = (np.arange(n, dtype=np.float64) + start + 0.5) / scale
    i = np.floor(t).astype(np.int64)
    f = t - i
    return i, (f * f * (3.0 - 2.0 * f)).astype(np.float32)


def noise_block(y0: int, x0: int, h: int, w: int, scale: float, seed: int) -> np.ndarray:
    """Smooth value noise in [0, 1) on the window ``[y0:y0+h, x0:x0+w]`` (global pixels)."""
    iy, fy = _axis_coords(y0, h, scale)
    ix, fx = _axis_coords(x0, w, scale)
    ly, lx = iy - iy[0], ix - ix[0]
    lat_y = np.arange(iy[0], iy[-1] + 2)
    lat_x = np.arange(ix[0], ix[-1] + 2)
    grid = unit(hash_keys(seed, lat_y[:, None], lat_x[None, :])).astype(np.float32)
    gx = grid[:, lx] * (1.0 - fx) + grid[:, lx + 1] * fx  # (ny, w)
    return gx[ly] * (1.0 - fy)[:, None] + gx[ly + 1] * fy[:, None]


def noise_points(y: np.ndarray, x: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """The same value noise evaluated at arbitrary (global pixel) coordinates."""
    ty = (np.asarray(y, dtype=np.float64) + 0.5) / scale
    tx = (np.asarray(x, dtype=np.float64) + 0.5) / scale
    iy, ix = np.floor(ty).astype(np.int64), np.floor(tx).astype(np.int64)
    fy, fx = ty - iy, tx - ix
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    g00 = unit(hash_keys(seed, iy, ix))
    g01 = unit(hash_keys(seed, iy, ix + 1))
    g10 = unit(hash_keys(seed, iy + 1, ix))
    g11 = unit(hash_keys(seed, iy + 1, ix + 1))
    top = g00 * (1 - fx) + g01 * fx
    bot = g10 * (1 - fx) + g11 * fx
    return top * (1 - fy) + bot * fy


def fbm_block(y0: int, x0: int, h: int, w: int, scale: float, seed: int, octaves: int = 3) -> np.ndarray:
    """Fractal sum of :func:`noise_block` octaves (halving scale and amplitude), in [0, 1)."""
    total = np.zeros((h, w), dtype=np.float32)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        total += np.float32(amp) * noise_block(y0, x0, h, w, scale / 2**o, seed + o)
        norm += amp
        amp *= 0.5
    return total / np.float32(norm)


def fbm_points(y: np.ndarray, x: np.ndarray, scale: float, seed: int, octaves: int = 3) -> np.ndarray:
    """:func:`fbm_block` evaluated at arbitrary (global pixel) coordinates."""
    total = np.zeros(np.broadcast(y, x).shape, dtype=np.float64)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        total += amp * noise_points(y, x, scale / 2**o, seed + o)
        norm += amp
        amp *= 0.5
    return total / norm


def _draw(rng: np.random.Generator, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal(shape, dtype=np.float32)
    if kind == "gamma4":
        return rng.standard_gamma(4.0, shape, dtype=np.float32) * np.float32(0.25)
    if kind == "exp":
        return rng.standard_exponential(shape, dtype=np.float32)
    raise ValueError(f"noise kind must be 'normal', 'gamma4' or 'exp', got {kind!r}")


def pixel_noise(
    window: tuple[int, int, int, int], seed: int, stream: str, kind: str, channels: int = 0
) -> np.ndarray:
    """Per-pixel random numbers on ``window = (y0, x0, h, w)`` (global pixels), drawn per fixed
    :data:`NOISE_TILE` tile so that they do not depend on the block size.

    ``kind``: ``"normal"`` (standard normal), ``"gamma4"`` (Gamma(4)/4, mean 1: 4-look speckle),
    ``"exp"`` (Exp(1)). ``channels > 0`` gives ``[channels, h, w]``.
    """
    y0, x0, h, w = window
    s = sub_seed(seed, stream) & 0xFFFFFFFF
    shape = (channels, h, w) if channels else (h, w)
    out = np.empty(shape, dtype=np.float32)
    t = NOISE_TILE
    for ty in range(y0 // t, (y0 + h - 1) // t + 1):
        for tx in range(x0 // t, (x0 + w - 1) // t + 1):
            rng = np.random.default_rng([s, ty + (1 << 30), tx + (1 << 30)])
            tile = _draw(rng, kind, (channels, t, t) if channels else (t, t))
            ya, yb = max(y0, ty * t), min(y0 + h, (ty + 1) * t)
            xa, xb = max(x0, tx * t), min(x0 + w, (tx + 1) * t)
            out[..., ya - y0 : yb - y0, xa - x0 : xb - x0] = tile[
                ..., ya - ty * t : yb - ty * t, xa - tx * t : xb - tx * t
            ]
    return out
