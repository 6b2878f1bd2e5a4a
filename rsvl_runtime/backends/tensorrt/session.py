"""Run one serialized engine with numpy arrays in and out (the runtime's ``Session`` protocol).

Before deserialising, :func:`~.validity.require_engine` checks flavour, version and GPU and
refuses in one line. Device memory and streams go through cuda-python (``cuda-bindings``).
With TensorRT-RTX the session also

* keeps the runtime (JIT) cache in the rsvl cache directory, next to the vocabulary cache
  (``<cache>/tensorrt-rtx/<engine sha256>.cache``), loaded at start and saved at close, so a
  second launch skips kernel compilation;
* asks for whole-graph CUDA-graph capture (``CudaGraphStrategy.WHOLE_GRAPH_CAPTURE``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...bundle import BundleError
from . import probe
from .flavours import TENSORRT_RTX, TensorRTUnavailable, import_flavour
from .profiles import check_shape_in_profile, rebuild_hint
from .validity import EngineMismatchError, require_engine

log = logging.getLogger("rsvl.tensorrt")


class CudaMemory:
    """Device memory and streams through cuda-python's runtime API."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt

    def _call(self, res: Any, what: str) -> Any:
        err, *rest = res if isinstance(res, tuple) else (res,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA error in {what}: {getattr(err, 'name', err)}")
        return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)

    def set_device(self, device: int) -> None:
        self._call(self.rt.cudaSetDevice(device), "cudaSetDevice")

    def malloc(self, nbytes: int) -> int:
        return int(self._call(self.rt.cudaMalloc(max(1, nbytes)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._call(self.rt.cudaFree(ptr), "cudaFree")

    def stream(self) -> int:
        return int(self._call(self.rt.cudaStreamCreate(), "cudaStreamCreate"))

    def destroy_stream(self, stream: int) -> None:
        self._call(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def h2d(self, dst: int, src: np.ndarray, stream: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream), "cudaMemcpyAsync H2D")

    def d2h(self, dst: np.ndarray, src: int, stream: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream), "cudaMemcpyAsync D2H")

    def sync(self, stream: int) -> None:
        self._call(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")


def device_memory() -> CudaMemory:
    """cuda-python's runtime, or :class:`TensorRTUnavailable` naming the package to install."""
    rt = probe.cudart()
    if rt is None:
        raise TensorRTUnavailable("the TensorRT backend needs CUDA device memory from cuda-python: "
                                  "`pip install cuda-bindings` (installed by `pip install 'rsvl[tensorrt-rtx]'`)")
    return CudaMemory(rt)


def runtime_cache_path(meta: Mapping[str, Any], directory: str | os.PathLike[str] | None = None) -> Path:
    """Where the TensorRT-RTX runtime cache of this engine lives: ``tensorrt-rtx/`` in the rsvl cache
    directory, next to the vocabulary cache (``$RSVL_CACHE_DIR``, see ``bundle.cache_root``)."""
    if directory is None:
        from ...files import cache_root

        directory = cache_root() / "tensorrt-rtx"
    key = str(meta.get("sha256") or meta.get("file", "engine"))[:32]
    return Path(directory) / f"{key}.cache"


class TensorRTSession:
    """One engine of the bundle; ``engine_meta`` is its entry in ``manifest["engines"]``."""

    def __init__(self, engine_path: str | os.PathLike[str], engine_meta: Mapping[str, Any], device: int = 0,
                 cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.engine_path = Path(engine_path)
        self.meta = dict(engine_meta)
        if not self.engine_path.is_file():
            raise BundleError(f"{self.engine_path}: engine file not found; rebuild it with "
                              + rebuild_hint(self.engine_path, self.meta))
        self.check = require_engine(self.engine_path, self.meta, device)   # before deserialising
        trt = import_flavour(self.check.flavour)
        self._trt = trt
        self._mem = device_memory()
        self._mem.set_device(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise EngineMismatchError(f"{self.check.describe()}: {self.check.flavour} could not deserialise it "
                                      "(corrupt file, or built for another setup despite the manifest); rebuild it "
                                      "with " + rebuild_hint(self.engine_path, self.meta))
        self._cache_file: Path | None = None
        self._runtime_cache: Any = None
        self.context = self._create_context(cache_dir)
        if self.context is None:
            raise RuntimeError(f"could not create an execution context for {self.engine_path} (out of GPU memory?)")
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self._dtypes: dict[str, np.dtype] = {}
        self._profiles: dict[str, tuple[list[int], list[int], list[int]]] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            self._dtypes[name] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.input_names.append(name)
                mn, opt, mx = self.engine.get_tensor_profile_shape(name, 0)
                self._profiles[name] = (list(mn), list(opt), list(mx))
            else:
                self.output_names.append(name)
        self.name = f"{self.check.flavour}:{self.engine_path.name}"
        self._stream = self._mem.stream()
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (ptr, capacity bytes)

    # ---------------------------------------------------------------- TensorRT-RTX runtime config
    def _create_context(self, cache_dir: str | os.PathLike[str] | None) -> Any:
        if self.check.flavour != TENSORRT_RTX.name or not hasattr(self.engine, "create_runtime_config"):
            return self.engine.create_execution_context()
        trt = self._trt
        config = self.engine.create_runtime_config()
        if hasattr(trt, "CudaGraphStrategy"):
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        cache = config.create_runtime_cache()
        if cache is not None:
            self._cache_file = runtime_cache_path(self.meta, cache_dir)
            if self._cache_file.is_file():
                loaded = cache.deserialize(self._cache_file.read_bytes())
                log.info("TensorRT-RTX runtime cache %s %s", self._cache_file,
                         "loaded" if loaded else "does not match this GPU/driver; compiling afresh")
            config.set_runtime_cache(cache)
            self._runtime_cache = cache
        return self.engine.create_execution_context(config)

    def save_runtime_cache(self) -> Path | None:
        """Write the TensorRT-RTX runtime cache (atomically); None when there is none."""
        if self._runtime_cache is None or self._cache_file is None:
            return None
        from .build import write_bytes_atomic

        write_bytes_atomic(self._cache_file, self._runtime_cache.serialize())
        return self._cache_file

    # ---------------------------------------------------------------- running
    @property
    def profiles(self) -> dict[str, dict[str, list[int]]]:
        """The engine's optimisation profile 0 per input."""
        return {n: {"min": p[0], "opt": p[1], "max": p[2]} for n, p in self._profiles.items()}

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if nbytes > cap:
            if ptr:
                self._mem.free(ptr)
            cap = max(nbytes, 256)
            ptr = self._mem.malloc(cap)
            self._buffers[name] = (ptr, cap)
        return ptr

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Set the input shapes for this call (checked against the profile), run, return all outputs."""
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise ValueError(f"{self.name}: inputs must be exactly {self.input_names}; "
                             f"missing {missing}, unexpected {extra}")
        host_inputs: dict[str, np.ndarray] = {}
        for name in self.input_names:
            arr = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
            check_shape_in_profile(name, arr.shape, self._profiles[name])
            if not self.context.set_input_shape(name, tuple(arr.shape)):
                raise ValueError(f"TensorRT rejected shape {list(arr.shape)} for input {name!r} "
                                 f"(profile min {self._profiles[name][0]} .. max {self._profiles[name][2]})")
            host_inputs[name] = arr
        for name, arr in host_inputs.items():
            ptr = self._buffer(name, arr.nbytes)
            self._mem.h2d(ptr, arr, self._stream)
            self.context.set_tensor_address(name, ptr)
        outputs: dict[str, np.ndarray] = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"{self.name}: output {name!r} shape {shape} is unresolved after setting the "
                                   "input shapes")
            out = np.empty(shape, dtype=self._dtypes[name])
            self.context.set_tensor_address(name, self._buffer(name, out.nbytes))
            outputs[name] = out
        if not self.context.execute_async_v3(self._stream):
            raise RuntimeError(f"{self.name}: execute_async_v3 failed (see the TensorRT log above)")
        for name, out in outputs.items():
            self._mem.d2h(out, self._buffers[name][0], self._stream)
        self._mem.sync(self._stream)
        return {n: (o.astype(np.float32) if o.dtype == np.float16 else o) for n, o in outputs.items()}

    def close(self) -> None:
        """Save the runtime cache, free device buffers and the stream (also done at garbage collection)."""
        mem = getattr(self, "_mem", None)
        if mem is None:
            return
        try:
            self.save_runtime_cache()
        except Exception as e:  # noqa: BLE001 - a cache that cannot be saved costs time, not results
            log.warning("could not save the TensorRT-RTX runtime cache: %s", e)
        self._runtime_cache = None
        for ptr, _ in getattr(self, "_buffers", {}).values():
            try:
                mem.free(ptr)
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
        self._buffers = {}
        stream = getattr(self, "_stream", None)
        if stream:
            try:
                mem.destroy_stream(stream)
            except Exception:  # noqa: BLE001
                pass
            self._stream = 0

    def __del__(self) -> None:  # pragma: no cover - depends on GC timing
        self.close()


__all__ = ["CudaMemory", "TensorRTSession", "device_memory", "runtime_cache_path"]
