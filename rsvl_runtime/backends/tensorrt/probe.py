"""What this machine has for TensorRT: the NVIDIA GPU (name, compute capability) and version
numbers. The one home of GPU probing and version parsing in rsvl (torch-free, no TensorRT needed).

GPU probing asks cuda-python (``cuda.bindings.runtime``, the ``cuda-bindings`` package) first and
the CUDA driver library through ctypes second (a machine with a driver but without cuda-python);
both answer "no GPU" rather than raise. Results are cached per process: probing loads the driver.
"""

from __future__ import annotations

import ctypes
import functools
import re
from dataclasses import dataclass
from typing import Any

# CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR of the driver API
_CC_MAJOR, _CC_MINOR = 75, 76


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device: its name and compute capability ``"major.minor"``."""

    name: str
    compute_capability: str

    def __str__(self) -> str:
        return f"{self.name} (compute capability {self.compute_capability})"


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> ``(10, 13, 0, 35)``: the leading digits of each dot-separated part, up to
    the first part that starts without one (``"10.13.0rc1.x"`` -> ``(10, 13, 0)``)."""
    out: list[int] = []
    for part in str(version).split("."):
        m = re.match(r"\d+", part)
        if m is None:
            break
        out.append(int(m.group()))
        if m.end() < len(part):  # "0rc1": a pre-release suffix ends the version number
            break
    return tuple(out)


def versions_match(built: str, installed: str) -> bool:
    """Same release: the version components present in both are equal
    ("10.13.0" matches "10.13.0.35"; "10.13.0" does not match "10.13.2" or "10.9.0")."""
    a, b = version_tuple(built), version_tuple(installed)
    n = min(len(a), len(b))
    return n > 0 and a[:n] == b[:n]


def cudart() -> Any | None:
    """cuda-python's runtime module (``cuda.bindings.runtime``, or the older ``cuda.cudart``), or None."""
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart as runtime  # type: ignore[no-redef]  # older cuda-python

        return runtime
    except ImportError:
        return None


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


def _cudart_gpu(device: int) -> GpuInfo | None:
    rt = cudart()
    if rt is None:
        return None
    try:
        err, props = rt.cudaGetDeviceProperties(device)
        if int(err) != 0:
            return None
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return GpuInfo(name.rstrip("\x00").strip(), f"{props.major}.{props.minor}")
    except Exception:  # noqa: BLE001 - a broken CUDA setup means: no GPU
        return None


def _driver_gpu(device: int) -> GpuInfo | None:
    cuda = _libcuda()
    if cuda is None:
        return None
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or device >= count.value:
        return None
    major, minor, name = ctypes.c_int(0), ctypes.c_int(0), ctypes.create_string_buffer(256)
    if cuda.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device) != 0:
        return None
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device)
    cuda.cuDeviceGetName(name, 256, device)
    return GpuInfo(name.value.decode(errors="replace") or "NVIDIA GPU", f"{major.value}.{minor.value}")


@functools.lru_cache(maxsize=8)
def gpu_info(device: int = 0) -> GpuInfo | None:
    """The CUDA device ``device`` of this machine, or None without a usable GPU/driver."""
    return _cudart_gpu(device) or _driver_gpu(device)


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Number of CUDA devices (0 without a driver)."""
    rt = cudart()
    if rt is not None:
        try:
            err, n = rt.cudaGetDeviceCount()
            if int(err) == 0:
                return int(n)
        except Exception:  # noqa: BLE001
            pass
    cuda = _libcuda()
    if cuda is None:
        return 0
    n = ctypes.c_int(0)
    return n.value if cuda.cuDeviceGetCount(ctypes.byref(n)) == 0 else 0


def describe_machine(device: int = 0) -> str:
    """``"NVIDIA H200 (compute capability 9.0)"`` or ``"no NVIDIA GPU"``, for messages."""
    gpu = gpu_info(device)
    return str(gpu) if gpu else "no NVIDIA GPU"


__all__ = ["GpuInfo", "cuda_device_count", "cudart", "describe_machine", "gpu_info", "version_tuple",
           "versions_match"]
