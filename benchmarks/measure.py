"""Timing and memory measurement for ``rsvl-bench``.

* :func:`measure` runs a zero-argument callable: ``warmup`` untimed calls, then timed calls
  until both ``min_iters`` are done and ``budget_s`` is spent (or ``max_iters`` reached).
  On CUDA each call is timed with CUDA events and synchronised (no host-side timing of async
  work); on CPU with ``time.perf_counter``. Returns a :class:`Timing` with p50/p90/p99 and
  throughput in tiles/s and megapixels/s.
* :class:`PeakMemory` records the host RSS high-water mark over a block (Linux: ``VmHWM``
  after resetting it through ``/proc/self/clear_refs``; elsewhere a sampling thread) and,
  when torch sees a GPU, ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np


# --------------------------------------------------------------------------- statistics
def percentile(samples: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default); monotone in ``q``."""
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def _sig(x: float, digits: int = 6) -> float:
    """``x`` rounded to ``digits`` significant digits (small throughputs keep their precision)."""
    return float(f"{x:.{digits}g}") if math.isfinite(x) else x


@dataclass
class Timing:
    """Latency samples of one measurement (milliseconds) and what they mean per tile."""

    samples_ms: list[float]
    batch: int = 1
    pixels_per_item: int = 0  # tile * tile (0: not an image measurement)
    warmup: int = 0
    timer: str = "perf_counter"
    stopped_by: str = "budget"  # "budget" | "max_iters"

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    @property
    def p50(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p90(self) -> float:
        return percentile(self.samples_ms, 90)

    @property
    def p99(self) -> float:
        return percentile(self.samples_ms, 99)

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples_ms))

    @property
    def min(self) -> float:
        return float(np.min(self.samples_ms))

    @property
    def std(self) -> float:
        return float(np.std(self.samples_ms))

    @property
    def items_per_s(self) -> float:
        """Tiles (or prompts) per second at the median latency."""
        return self.batch / (self.p50 / 1e3) if self.p50 > 0 else math.inf

    @property
    def megapixels_per_s(self) -> float:
        return self.items_per_s * self.pixels_per_item / 1e6

    def summary(self) -> dict[str, Any]:
        """The numbers that go into bench.json (samples included, rounded)."""
        return {
            "p50_ms": round(self.p50, 4), "p90_ms": round(self.p90, 4), "p99_ms": round(self.p99, 4),
            "mean_ms": round(self.mean, 4), "min_ms": round(self.min, 4), "std_ms": round(self.std, 4),
            "iterations": self.n, "warmup": self.warmup, "timer": self.timer, "stopped_by": self.stopped_by,
            "tiles_per_s": _sig(self.items_per_s),
            "megapixels_per_s": _sig(self.megapixels_per_s) if self.pixels_per_item else None,
            "samples_ms": [round(s, 4) for s in self.samples_ms],
        }


@dataclass
class Budget:
    """How long to measure one configuration."""

    warmup: int = 2
    min_iters: int = 5
    max_iters: int = 200
    budget_s: float = 10.0

    @classmethod
    def quick(cls) -> Budget:
        return cls(warmup=1, min_iters=3, max_iters=30, budget_s=2.0)


def _cuda_sync_fn(device: str | None) -> tuple[Callable[[], None] | None, Any]:
    if not device or not str(device).startswith("cuda"):
        return None, None
    import torch

    return torch.cuda.synchronize, torch


def measure(fn: Callable[[], Any], budget: Budget, batch: int = 1, pixels_per_item: int = 0,
            device: str | None = None) -> Timing:
    """Time ``fn()`` (see the module docstring). ``device`` "cuda[:i]" switches to CUDA events.

    The first ``budget.warmup`` calls are not timed (caches, lazy allocation, autotuning);
    at least ``min_iters`` calls are timed even past the budget, so a slow configuration still
    gets a median of several samples.
    """
    sync, torch = _cuda_sync_fn(device)
    for _ in range(max(0, budget.warmup)):
        fn()
    if sync:
        sync()
    samples: list[float] = []
    t_end = time.perf_counter() + budget.budget_s
    stopped = "budget"
    while True:
        if sync:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(float(start.elapsed_time(end)))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        if len(samples) >= budget.max_iters:
            stopped = "max_iters"
            break
        if len(samples) >= budget.min_iters and time.perf_counter() >= t_end:
            break
    return Timing(samples, batch=batch, pixels_per_item=pixels_per_item, warmup=budget.warmup,
                  timer="cuda_event" if sync else "perf_counter", stopped_by=stopped)


def time_once(fn: Callable[[], Any], device: str | None = None) -> tuple[float, Any]:
    """Seconds taken by one call of ``fn`` (synchronised on CUDA) and its result."""
    sync, _ = _cuda_sync_fn(device)
    if sync:
        sync()
    t0 = time.perf_counter()
    out = fn()
    if sync:
        sync()
    return time.perf_counter() - t0, out


# --------------------------------------------------------------------------- memory
def _read_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_mb() -> float | None:
    kb = _read_status_kb("VmRSS")
    if kb is not None:
        return kb / 1024
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover
        return None


def _reset_hwm() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _read_status_kb("VmHWM") is not None
    except OSError:
        return False


@dataclass
class PeakMemory:
    """``with PeakMemory() as pm: ...`` -> ``pm.result()`` with the peak host RSS over the block
    (``peak_rss_mb``), the RSS when it started (``start_rss_mb``) and, on CUDA, the peak bytes
    allocated by torch (``cuda_peak_mb``; ONNX Runtime/TensorRT allocations are not seen by torch,
    so the device-wide ``cuda_used_mb`` from ``mem_get_info`` is reported beside it)."""

    cuda: bool = False
    start_rss_mb: float | None = None
    peak_rss_mb: float | None = None
    method: str = ""
    cuda_peak_mb: float | None = None
    cuda_used_mb: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _sampled: float = field(default=0.0, repr=False)

    def __enter__(self) -> Self:
        self.start_rss_mb = current_rss_mb()
        if _reset_hwm():
            self.method = "VmHWM"
        else:
            self.method = "sampled"
            self._sampled = self.start_rss_mb or 0.0
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            v = current_rss_mb()
            if v is not None:
                self._sampled = max(self._sampled, v)

    def __exit__(self, *exc: object) -> None:
        if self.method == "VmHWM":
            kb = _read_status_kb("VmHWM")
            self.peak_rss_mb = kb / 1024 if kb is not None else None
        else:
            self._stop.set()
            if self._thread:
                self._thread.join()
            self.peak_rss_mb = max(self._sampled, current_rss_mb() or 0.0)
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.cuda_peak_mb = torch.cuda.max_memory_allocated() / 2**20
            free, total = torch.cuda.mem_get_info()
            self.cuda_used_mb = (total - free) / 2**20

    def result(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("start_rss_mb", "peak_rss_mb", "method", "cuda_peak_mb", "cuda_used_mb")}
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in d.items()}


def machine_info() -> dict[str, Any]:
    """CPU model and cores, GPU, library versions (for bench.json)."""
    import importlib.metadata as md
    import platform

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(), "python": platform.python_version(),
        "memory_gb": None, "gpu": None, "load_average": None,
        "env": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                            "CUDA_VISIBLE_DEVICES") if k in os.environ},
    }
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        from rsvl_export.ort_optimize import cpu_flags

        info["cpu_flags"] = cpu_flags()
    except ImportError:
        info["cpu_flags"] = None
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = {"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                           "compute_capability": f"{p.major}.{p.minor}", "count": torch.cuda.device_count(),
                           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    except ImportError:
        pass
    versions = {}
    for pkg in ("rsvl", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "timm", "open_clip_torch",
                "transformers", "numpy", "tensorrt", "rasterio", "matplotlib"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    info["versions"] = versions
    try:
        import onnxruntime as ort

        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    return info


#: Dense FP16 tensor-core peak (TFLOP/s, no sparsity) by GPU name fragment, for "% of peak".
FP16_PEAK_TFLOPS: dict[str, float] = {
    "H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
    "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "A10G": 125.0, "A10": 125.0, "L40S": 362.0,
    "L40": 181.0, "L4": 121.0, "A30": 165.0, "V100": 125.0, "T4": 65.0, "RTX 4090": 165.0,
    "RTX 3090": 71.0, "RTX A6000": 155.0,
}


def fp16_peak_tflops(gpu_name: str) -> float | None:
    """Dense FP16 peak of ``gpu_name`` (longest matching fragment), None when unknown.

    H100 SXM and PCIe share the name "NVIDIA H100" on some drivers ("NVIDIA H100 80GB HBM3" is
    the SXM part): HBM3 is taken as SXM."""
    name = gpu_name.replace("NVIDIA ", "")
    if "H100" in name and "HBM3" in name and "NVL" not in name:
        return FP16_PEAK_TFLOPS["H100 SXM"]
    best = None
    for frag in sorted(FP16_PEAK_TFLOPS, key=len, reverse=True):
        if frag in name:
            best = FP16_PEAK_TFLOPS[frag]
            break
    return best
