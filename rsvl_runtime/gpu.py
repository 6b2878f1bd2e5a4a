"""GPU discovery without torch (NVML through nvidia-smi, or the CUDA driver through ctypes)."""

from __future__ import annotations

import ctypes
import functools


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 when there is no driver)."""
    for lib in ("libcuda.so.1", "libcuda.so"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        if cuda.cuInit(0) != 0:
            return 0
        n = ctypes.c_int(0)
        return n.value if cuda.cuDeviceGetCount(ctypes.byref(n)) == 0 else 0
    return 0


@functools.lru_cache(maxsize=8)
def compute_capability(device: int = 0) -> str | None:
    """``"major.minor"`` of a CUDA device, or None without a driver."""
    for lib in ("libcuda.so.1", "libcuda.so"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        if cuda.cuInit(0) != 0:
            return None
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, MINOR = 76
        if cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device) != 0:
            return None
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)
        return f"{major.value}.{minor.value}"
    return None
