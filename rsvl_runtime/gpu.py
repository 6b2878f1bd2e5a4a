"""GPU discovery without torch: the CUDA driver API through ctypes."""

from __future__ import annotations

import ctypes
import functools

# CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
_CC_MAJOR, _CC_MINOR = 75, 76


@functools.lru_cache(maxsize=1)
def _libcuda() -> ctypes.CDLL | None:
    """The initialised CUDA driver library, or None when there is no usable driver."""
    for lib in ("libcuda.so.1", "libcuda.so"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        return cuda if cuda.cuInit(0) == 0 else None
    return None


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 when there is no driver)."""
    cuda = _libcuda()
    if cuda is None:
        return 0
    n = ctypes.c_int(0)
    return n.value if cuda.cuDeviceGetCount(ctypes.byref(n)) == 0 else 0


@functools.lru_cache(maxsize=8)
def compute_capability(device: int = 0) -> str | None:
    """``"major.minor"`` of a CUDA device, or None without a driver."""
    cuda = _libcuda()
    if cuda is None:
        return None
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    if cuda.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device) != 0:
        return None
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device)
    return f"{major.value}.{minor.value}"
