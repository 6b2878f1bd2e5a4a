"""TensorRT backend of the runtime: run a serialized engine listed in the bundle manifest.

No torch, and importable without TensorRT: ``tensorrt`` and the CUDA bindings are imported
inside functions. Device memory goes through cuda-python (``cuda.bindings.runtime``, or the
older ``cuda.cudart``) or, when that is absent, ``polygraphy.cuda``.

Before an engine is deserialised, :func:`check_engine_compatible` compares the TensorRT
version and the GPU compute capability recorded in the manifest (``engine_meta``) with the
installed ones: an engine only loads on the TensorRT version and GPU architecture it was
built for, and TensorRT's own error for a mismatch is obscure (or a crash). On mismatch it
raises :class:`EngineMismatchError` naming both and saying how to rebuild.

The pure helpers (:func:`trtexec_command`, :func:`check_shape_in_profile`, the version/GPU
probes) are shared with ``rsvl_export.tensorrt_build``.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import BundleError

log = logging.getLogger("rsvl.runtime")

#: Reason used everywhere a test or a caller finds tensorrt missing.
TENSORRT_MISSING = "tensorrt is not importable (no TensorRT on this machine)"

Shape = Sequence[int]
#: input name -> (min, opt, max) shapes, or -> {"min": [...], "opt": [...], "max": [...]}
Profiles = Mapping[str, Any]


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a CUDA GPU) is not available here; the message says how to get an engine."""


class EngineMismatchError(BundleError):
    """An engine was built for another TensorRT version or GPU architecture than this machine's."""


# --------------------------------------------------------------------------- probes
def import_tensorrt() -> Any:
    """``import tensorrt`` or raise :class:`TensorRTUnavailable` with the installation hint."""
    try:
        import tensorrt as trt
    except ImportError as e:  # also catches the index's download stub failing to import
        raise TensorRTUnavailable(
            f"{TENSORRT_MISSING}: {e}. Install it on a machine with an NVIDIA GPU "
            "(`pip install tensorrt`, or use an NGC TensorRT container), or run with "
            "`--backend onnxruntime`.") from e
    if not hasattr(trt, "Builder") and not hasattr(trt, "Runtime"):
        raise TensorRTUnavailable(f"{TENSORRT_MISSING}: the installed 'tensorrt' package is a stub without "
                                  "the TensorRT libraries; install the real wheel on a GPU machine")
    return trt


def installed_tensorrt_version() -> str:
    """``tensorrt.__version__`` (raises :class:`TensorRTUnavailable` when not importable)."""
    return str(import_tensorrt().__version__)


def _cudart() -> Any | None:
    """The cuda-python runtime module (new or old layout), or None."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        return cudart
    except ImportError:
        return None


def _nvidia_smi(device: int) -> tuple[str, str] | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap", "--format=csv,noheader", f"--id={device}"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    name, _, cc = out.stdout.strip().splitlines()[0].rpartition(",")
    return name.strip(), cc.strip()


def gpu_info(device: int = 0) -> dict[str, str] | None:
    """``{"name": ..., "compute_capability": "major.minor"}`` of a CUDA device, or None.

    Tries cuda-python (cudaGetDeviceProperties), then the driver through
    ``rsvl_runtime.gpu``, then ``nvidia-smi``. Never imports torch."""
    cudart = _cudart()
    if cudart is not None:
        try:
            err, props = cudart.cudaGetDeviceProperties(device)
            if int(err) == 0:
                name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
                return {"name": name.rstrip("\x00").strip(), "compute_capability": f"{props.major}.{props.minor}"}
        except Exception:  # noqa: BLE001 - any failure means: try the next probe
            pass
    cc: str | None = None
    try:
        from ..gpu import compute_capability

        cc = compute_capability(device)
    except Exception:  # noqa: BLE001
        cc = None
    smi = _nvidia_smi(device)
    if smi is not None:
        return {"name": smi[0], "compute_capability": cc or smi[1]}
    if cc is not None:
        return {"name": "unknown NVIDIA GPU", "compute_capability": cc}
    return None


def current_compute_capability(device: int = 0) -> str | None:
    """Compute capability ``"major.minor"`` of ``device``, or None without a GPU."""
    info = gpu_info(device)
    return None if info is None else info["compute_capability"]


def _version_key(v: str) -> tuple[int, ...]:
    parts: list[int] = []
    for p in str(v).split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def versions_match(built: str, installed: str) -> bool:
    """Same TensorRT release: the version components present in both are equal
    ("10.13.0" matches "10.13.0.35"; "10.13.0" does not match "10.13.2" or "10.9.0")."""
    a, b = _version_key(built), _version_key(installed)
    n = min(len(a), len(b))
    return n > 0 and a[:n] == b[:n]


# --------------------------------------------------------------------------- shapes & commands
def _profile_triplet(p: Any) -> tuple[list[int], list[int], list[int]]:
    if isinstance(p, Mapping):
        return list(p["min"]), list(p["opt"]), list(p["max"])
    mn, opt, mx = p
    return list(mn), list(opt), list(mx)


def normalize_profiles(profiles: Profiles) -> dict[str, dict[str, list[int]]]:
    """``{input: {"min": [...], "opt": [...], "max": [...]}}`` from either accepted form, validated."""
    out: dict[str, dict[str, list[int]]] = {}
    for name, p in profiles.items():
        mn, opt, mx = (list(map(int, s)) for s in _profile_triplet(p))
        if not (len(mn) == len(opt) == len(mx)):
            raise ValueError(f"profile of {name!r}: min/opt/max ranks differ: {mn} / {opt} / {mx}")
        if any(not (a <= b <= c) for a, b, c in zip(mn, opt, mx)):
            raise ValueError(f"profile of {name!r}: need min <= opt <= max per axis, got {mn} / {opt} / {mx}")
        if any(a < 0 for a in mn):
            raise ValueError(f"profile of {name!r}: negative size in {mn}")
        out[name] = {"min": mn, "opt": opt, "max": mx}
    return out


def check_shape_in_profile(name: str, shape: Shape, profile: Any) -> None:
    """Raise ``ValueError`` (both shapes in the message) if ``shape`` is outside ``profile``."""
    mn, _, mx = _profile_triplet(profile)
    shape = [int(s) for s in shape]
    if len(shape) != len(mn) or any(s < a or s > b for s, a, b in zip(shape, mn, mx)):
        raise ValueError(f"input {name!r} has shape {shape}, outside the engine's optimisation profile "
                         f"min {list(mn)} .. max {list(mx)}: split the batch/vocabulary into chunks inside the "
                         "profile, or rebuild the engine with larger --max-batch/--max-vocab")


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def trtexec_command(onnx_path: str | os.PathLike[str], profiles: Profiles, fp16: bool = True,
                    engine_path: str | os.PathLike[str] | None = None,
                    timing_cache: str | os.PathLike[str] | None = None,
                    workspace_gb: float | None = None) -> str:
    """The ``trtexec`` command line that builds the same engine as ``build_engine``.

    ``--stronglyTyped``: precision comes from the ONNX graph (pass the FP16 ONNX for an FP16
    engine). It is required on TensorRT 10.12+ (weak typing deprecated) and a no-op on 11.x.
    On TensorRT < 10.12 replace it with ``--fp16`` and pass the FP32 ONNX.
    """
    onnx_path = Path(onnx_path)
    prof = normalize_profiles(profiles)
    if engine_path is None:
        stem = onnx_path.name[:-5] if onnx_path.name.endswith(".onnx") else onnx_path.name
        if fp16 and not stem.endswith(".fp16"):
            stem += ".fp16"
        engine_path = onnx_path.with_name(stem + ".engine")
    parts = ["trtexec", f"--onnx={shlex.quote(str(onnx_path))}", "--stronglyTyped"]
    for key, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
        if prof:
            parts.append(f"{flag}=" + ",".join(f"{n}:{_dims(p[key])}" for n, p in prof.items()))
    if workspace_gb:
        parts.append(f"--memPoolSize=workspace:{int(workspace_gb * 1024)}M")
    if timing_cache:
        parts.append(f"--timingCacheFile={shlex.quote(str(timing_cache))}")
    parts.append(f"--saveEngine={shlex.quote(str(engine_path))}")
    return " ".join(parts)


def rebuild_hint(engine_path: str | os.PathLike[str], engine_meta: Mapping[str, Any]) -> str:
    """How to rebuild an engine for this machine (rsvl-export, or the exact trtexec command)."""
    engine_path = Path(engine_path)
    bundle = engine_path.parent
    hint = f"`rsvl-export rebuild-engine {bundle}`"
    profiles = engine_meta.get("profiles")
    if profiles:
        precision = str(engine_meta.get("precision", "fp16"))
        onnx_name = engine_meta.get("onnx") or f"{engine_meta.get('graph', 'image')}.{precision}.onnx"
        try:
            cmd = trtexec_command(bundle / onnx_name, profiles, precision == "fp16", engine_path=engine_path)
            hint += f", or `{cmd}`"
        except (ValueError, KeyError, TypeError):
            pass
    return hint


def check_engine_compatible(engine_path: str | os.PathLike[str], engine_meta: Mapping[str, Any],
                            device: int = 0) -> tuple[str, str]:
    """Compare the manifest's TensorRT version and compute capability with this machine's.

    Returns (installed version, current compute capability). Raises
    :class:`TensorRTUnavailable` without tensorrt or a GPU, :class:`EngineMismatchError` on a
    mismatch (both versions and both GPUs named, with the rebuild command)."""
    built_ver = str(engine_meta.get("tensorrt_version") or "")
    built_cc = str(engine_meta.get("compute_capability") or "")
    if not built_ver or not built_cc:
        raise EngineMismatchError(f"{engine_path}: the manifest entry of this engine lacks tensorrt_version/"
                                  "compute_capability, so it cannot be checked before loading; rebuild it with "
                                  + rebuild_hint(engine_path, engine_meta))
    installed = installed_tensorrt_version()
    cc = current_compute_capability(device)
    if cc is None:
        raise TensorRTUnavailable(f"no CUDA GPU found (device {device}): a TensorRT engine needs an NVIDIA GPU; "
                                  "use `--backend onnxruntime` on this machine")
    problems = []
    if not versions_match(built_ver, installed):
        problems.append(f"TensorRT {built_ver} (installed here: {installed})")
    if built_cc != cc:
        here = gpu_info(device) or {}
        problems.append(f"compute capability {built_cc} ({engine_meta.get('gpu', 'unknown GPU')}) "
                        f"(this GPU: {cc}, {here.get('name', 'unknown')})")
    if problems:
        raise EngineMismatchError(
            f"{engine_path} was built for " + " and ".join(problems) + ". A TensorRT engine only loads on the "
            "TensorRT version and GPU architecture it was built for. Rebuild it on this machine with "
            + rebuild_hint(engine_path, engine_meta) + ", or run with `--backend onnxruntime`.")
    return installed, cc


# --------------------------------------------------------------------------- device memory
class _CudaRT:
    """Minimal device-memory API over cuda-python (cudaMalloc/cudaMemcpyAsync/streams)."""

    def __init__(self, cudart: Any) -> None:
        self.rt = cudart

    def _call(self, res: Any, what: str) -> Any:
        err, *rest = res if isinstance(res, tuple) else (res,)
        if int(err) != 0:
            name = getattr(err, "name", str(err))
            raise RuntimeError(f"CUDA error in {what}: {name}")
        return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)

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


class _PolygraphyCuda:
    """The same API over ``polygraphy.cuda`` (ctypes on libcudart)."""

    def __init__(self) -> None:
        from polygraphy import cuda

        self.cuda = cuda
        self.w = cuda.wrapper()

    def malloc(self, nbytes: int) -> int:
        return int(self.w.malloc(max(1, nbytes)))

    def free(self, ptr: int) -> None:
        self.w.free(ptr)

    def stream(self) -> int:
        return int(self.w.create_stream())

    def destroy_stream(self, stream: int) -> None:
        self.w.destroy_stream(stream)

    def h2d(self, dst: int, src: np.ndarray, stream: int) -> None:
        self.w.memcpy(dst, src.ctypes.data, src.nbytes, self.cuda.MemcpyKind.HostToDevice, stream)

    def d2h(self, dst: np.ndarray, src: int, stream: int) -> None:
        self.w.memcpy(dst.ctypes.data, src, dst.nbytes, self.cuda.MemcpyKind.DeviceToHost, stream)

    def sync(self, stream: int) -> None:
        self.w.stream_synchronize(stream)


def device_memory() -> _CudaRT | _PolygraphyCuda:
    """cuda-python if importable, else polygraphy; :class:`TensorRTUnavailable` if neither."""
    cudart = _cudart()
    if cudart is not None:
        return _CudaRT(cudart)
    try:
        return _PolygraphyCuda()
    except ImportError as e:
        raise TensorRTUnavailable("the TensorRT backend needs CUDA device memory from cuda-python "
                                  "(`pip install cuda-python`) or polygraphy (`pip install polygraphy`); "
                                  "neither is importable") from e


# --------------------------------------------------------------------------- session
class TensorRTSession:
    """One TensorRT engine, run with numpy arrays in and out (the runtime's ``Session`` protocol).

    ``engine_meta`` is the engine's entry in ``manifest["engines"]`` (``tensorrt_version``,
    ``compute_capability``, ``gpu``, ``profiles``, ``precision``, ``graph``)."""

    def __init__(self, engine_path: str | os.PathLike[str], engine_meta: Mapping[str, Any], device: int = 0) -> None:
        self.engine_path = Path(engine_path)
        self.meta = dict(engine_meta)
        if not self.engine_path.is_file():
            raise BundleError(f"{self.engine_path}: engine file not found; rebuild it with "
                              + rebuild_hint(self.engine_path, self.meta))
        # 1. compatibility BEFORE deserialising (a mismatched engine fails obscurely or crashes)
        self.tensorrt_version, self.compute_capability = check_engine_compatible(self.engine_path, self.meta, device)
        trt = import_tensorrt()
        self._trt = trt
        self._set_device(device)
        self._mem = device_memory()
        # 2. deserialise
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise EngineMismatchError(f"TensorRT {self.tensorrt_version} could not deserialise {self.engine_path} "
                                      "(corrupt file, or built by another TensorRT/GPU despite the manifest); rebuild "
                                      "it with " + rebuild_hint(self.engine_path, self.meta))
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"could not create an execution context for {self.engine_path} (out of GPU memory?)")
        # 3. I/O description
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
        self.name = f"tensorrt:{self.engine_path.name}"
        self._stream = self._mem.stream()
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (ptr, capacity bytes)

    @staticmethod
    def _set_device(device: int) -> None:
        """Make ``device`` current for this thread (cuda-python; polygraphy uses the default device)."""
        cudart = _cudart()
        if cudart is not None:
            cudart.cudaSetDevice(device)

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
            ptr = self._buffer(name, out.nbytes)
            self.context.set_tensor_address(name, ptr)
            outputs[name] = out
        if not self.context.execute_async_v3(self._stream):
            raise RuntimeError(f"{self.name}: execute_async_v3 failed (see the TensorRT log above)")
        for name, out in outputs.items():
            self._mem.d2h(out, self._buffers[name][0], self._stream)
        self._mem.sync(self._stream)
        return outputs

    def close(self) -> None:
        """Free device buffers and the stream (also done at garbage collection)."""
        mem = getattr(self, "_mem", None)
        if mem is None:
            return
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


__all__ = [
    "EngineMismatchError", "TENSORRT_MISSING", "TensorRTSession", "TensorRTUnavailable",
    "check_engine_compatible", "check_shape_in_profile", "current_compute_capability", "gpu_info",
    "import_tensorrt", "installed_tensorrt_version", "normalize_profiles", "rebuild_hint",
    "trtexec_command", "versions_match",
]
