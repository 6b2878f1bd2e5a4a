"""Build a TensorRT engine from an exported ONNX graph (on the target GPU machine).

Written against the TensorRT Python API (``trt.Builder``, ``create_network``, ``trt.OnnxParser``,
``create_optimization_profile``, ``create_builder_config``, timing cache,
``build_serialized_network``):

* TensorRT >= 10.12: a **strongly typed** network
  (``1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)``) built from the FP16 ONNX of
  :func:`rsvl_export.fp16.convert_fp16` — the ONNX decides every tensor's precision (weak
  typing is deprecated in 10.12 and removed in 11, where ``BuilderFlag.FP16`` no longer
  exists and strong typing is always on);
* older TensorRT: a normal network and ``BuilderFlag.FP16``.

``tensorrt`` is imported lazily; without it (or without a GPU) :func:`build_engine` raises
:class:`TensorRTUnavailable` whose message gives the exact ``trtexec`` command for the target
machine (:func:`trtexec_command`). The engine file is the plain serialized engine (no header,
so ``trtexec --loadEngine`` reads it); TensorRT version, GPU, compute capability and
profiles go into :class:`EngineInfo` for the manifest.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rsvl_runtime.backends.tensorrt_backend import (
    TENSORRT_MISSING,
    Profiles,
    TensorRTUnavailable,
    gpu_info,
    import_tensorrt,
    normalize_profiles,
    trtexec_command,
)

log = logging.getLogger(__name__)

#: First TensorRT release that deprecates weak typing: from here on we build strongly typed.
STRONGLY_TYPED_FROM = (10, 12)

__all__ = ["EngineInfo", "TensorRTUnavailable", "build_engine", "tensorrt_available", "trtexec_command",
           "unavailable_message", "TENSORRT_MISSING"]


@dataclass
class EngineInfo:
    """What :func:`build_engine` built; :meth:`to_dict` is the manifest's ``engines`` entry."""

    engine_path: str
    onnx_path: str
    precision: str
    strongly_typed: bool
    tensorrt_version: str
    gpu: str
    compute_capability: str
    profiles: dict[str, dict[str, list[int]]]
    build_seconds: float
    bytes: int
    workspace_gb: float
    timing_cache: str | None = None
    timing_cache_loaded: bool = False
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Manifest entry: file names relative to the bundle, no absolute paths."""
        d = asdict(self)
        d["file"] = Path(self.engine_path).name
        d["onnx"] = Path(self.onnx_path).name
        for k in ("engine_path", "onnx_path", "timing_cache"):
            d.pop(k)
        return d


def _version_tuple(v: str) -> tuple[int, ...]:
    out: list[int] = []
    for p in v.split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def _torch_gpu(device: int) -> dict[str, str] | None:
    try:
        import torch
    except ImportError:
        return None
    try:
        if not torch.cuda.is_available() or device >= torch.cuda.device_count():
            return None
        major, minor = torch.cuda.get_device_capability(device)
        return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}
    except Exception:  # noqa: BLE001 - a broken CUDA setup means: no GPU
        return None


def _gpu(device: int = 0) -> dict[str, str] | None:
    return gpu_info(device) or _torch_gpu(device)


def tensorrt_available(device: int = 0) -> tuple[bool, str]:
    """(True, "TensorRT 10.13.0 on NVIDIA H100 (compute capability 9.0)") when ``tensorrt`` imports
    and a CUDA GPU is present (and a ``trt.Builder`` can be created); else (False, reason)."""
    try:
        trt = import_tensorrt()
    except TensorRTUnavailable:
        return False, TENSORRT_MISSING
    gpu = _gpu(device)
    if gpu is None:
        return False, f"TensorRT {trt.__version__} is installed but no CUDA GPU was found (device {device})"
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        if builder is None:
            raise RuntimeError("trt.Builder returned None")
    except Exception as e:  # noqa: BLE001
        return False, f"TensorRT {trt.__version__} cannot create a builder on {gpu['name']}: {e}"
    return True, f"TensorRT {trt.__version__} on {gpu['name']} (compute capability {gpu['compute_capability']})"


def unavailable_message(reason: str, onnx_path: str | os.PathLike[str], profiles: Profiles, fp16: bool,
                        engine_path: str | os.PathLike[str] | None = None) -> str:
    """Why no engine can be built here and how to build it on the target machine."""
    cmd = trtexec_command(onnx_path, profiles, fp16, engine_path=engine_path)
    return (
        f"cannot build a TensorRT engine here: {reason}.\n"
        "A TensorRT engine is tied to the TensorRT version and GPU architecture it is built on, so build it on "
        "the target machine (NVIDIA GPU):\n"
        "  pip install tensorrt\n"
        "  rsvl-export --model NAME --precision " + ("fp16" if fp16 else "fp32") + " --engine tensorrt"
        "   (or, for an existing bundle: rsvl-export rebuild-engine BUNDLE)\n"
        "or with TensorRT's trtexec:\n"
        f"  {cmd}\n"
        "(TensorRT < 10.12: replace --stronglyTyped with --fp16 and pass the FP32 ONNX.) Meanwhile the bundle's "
        "ONNX graphs run with ONNX Runtime (--backend onnxruntime).")


def _onnx_float_types(onnx_path: Path) -> set[int]:
    """Float element types used by the graph's initializers and Cast targets."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    types = {i.data_type for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Cast":
            types.update(a.i for a in n.attribute if a.name == "to")
    return types


def _atomic_write_bytes(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(data))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    profiles: Profiles,
    fp16: bool = True,
    timing_cache_path: str | os.PathLike[str] | None = None,
    workspace_gb: float = 4.0,
    strongly_typed: bool | None = None,
    device: int = 0,
) -> EngineInfo:
    """Build and serialise a TensorRT engine for ``onnx_path``.

    Args:
        onnx_path: the graph. For an FP16 engine on TensorRT >= 10.12 this must be the FP16
            ONNX (strong typing takes precision from the graph).
        engine_path: where the serialized engine goes (written atomically).
        profiles: ``{input: (min, opt, max)}`` shapes (or ``{"min","opt","max"}`` dicts); every
            input with a dynamic axis needs one; static axes must equal the graph's.
        fp16: FP16 engine (strongly typed from the FP16 ONNX, or ``BuilderFlag.FP16`` on
            TensorRT < 10.12).
        timing_cache_path: loaded if it exists, saved after the build (speeds up rebuilds).
        workspace_gb: builder workspace memory pool limit.
        strongly_typed: force the network mode (default: TensorRT >= 10.12).

    Raises:
        TensorRTUnavailable: no tensorrt or no GPU (the message has the trtexec command).
        ValueError: profiles that do not match the graph's inputs, or an ONNX whose precision
            does not match ``fp16``.
        RuntimeError: parser errors (all listed) or a failed build (TensorRT's errors listed).
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    prof = normalize_profiles(profiles)
    ok, reason = tensorrt_available(device)
    if not ok:
        raise TensorRTUnavailable(unavailable_message(reason, onnx_path, prof, fp16, engine_path))
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX graph not found: {onnx_path}")
    trt = import_tensorrt()
    version = str(trt.__version__)
    vt = _version_tuple(version)
    strong = vt >= STRONGLY_TYPED_FROM if strongly_typed is None else bool(strongly_typed)
    if vt >= (11,) and not strong:
        raise ValueError(f"TensorRT {version} only builds strongly typed networks; use the FP16 ONNX")

    import onnx

    float_types = _onnx_float_types(onnx_path)
    has_fp16 = onnx.TensorProto.FLOAT16 in float_types
    if fp16 and strong and not has_fp16:
        raise ValueError(f"{onnx_path.name} has no FP16 tensors: a strongly typed network built from it would be an "
                         "FP32 engine labelled fp16. Pass the FP16 ONNX written by rsvl_export.fp16.convert_fp16 "
                         "(image.fp16.onnx)")
    if not fp16 and has_fp16:
        raise ValueError(f"{onnx_path.name} contains FP16 tensors but fp16=False; pass the FP32 ONNX for an FP32 "
                         "engine, or fp16=True")

    gpu = _gpu(device) or {"name": "unknown", "compute_capability": "unknown"}

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        """Forwards TensorRT messages to logging and keeps errors for the exception message."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    logger = _Logger()
    t0 = time.perf_counter()
    builder = trt.Builder(logger)
    flags = 0
    if strong:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif vt < (10,):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT {version}'s ONNX parser rejected {onnx_path} with {len(errors)} error(s):\n  "
                           + "\n  ".join(errors or logger.errors or ["(no message)"]))

    # profiles must cover exactly the network's inputs, with the graph's static dims
    net_inputs: dict[str, tuple[int, ...]] = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        net_inputs[t.name] = tuple(int(d) for d in t.shape)
    unknown = sorted(set(prof) - set(net_inputs))
    if unknown:
        raise ValueError(f"profiles name {unknown}, which are not inputs of {onnx_path.name} "
                         f"(inputs: {sorted(net_inputs)})")
    for name, shape in net_inputs.items():
        if name not in prof:
            if any(d < 0 for d in shape):
                raise ValueError(f"input {name!r} of {onnx_path.name} has dynamic shape {list(shape)} but no "
                                 "optimisation profile; give (min, opt, max) shapes for it")
            continue
        p = prof[name]
        for key in ("min", "opt", "max"):
            s = p[key]
            if len(s) != len(shape) or any(d >= 0 and d != v for d, v in zip(shape, s)):
                raise ValueError(f"profile {key} shape {s} of input {name!r} does not fit the graph's shape "
                                 f"{list(shape)} (-1 = dynamic)")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16 and not strong:
        if not getattr(builder, "platform_has_fast_fp16", True):
            log.warning("this GPU (%s) has no fast FP16; the FP16 engine may be slower than expected", gpu["name"])
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, p in prof.items():
        profile.set_shape(name, p["min"], p["opt"], p["max"])
    if config.add_optimization_profile(profile) < 0:
        raise ValueError(f"TensorRT rejected the optimisation profile {prof}")

    cache_loaded = False
    cache_path = Path(timing_cache_path) if timing_cache_path else None
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(blob)
        if cache is None and blob:
            log.warning("timing cache %s could not be read; starting a new one", cache_path)
            cache = config.create_timing_cache(b"")
        if cache is not None:
            accepted = bool(config.set_timing_cache(cache, ignore_mismatch=False))
            cache_loaded = bool(blob) and accepted
            if blob and not accepted:
                log.warning("timing cache %s does not match this TensorRT/GPU; starting a new one", cache_path)
                config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT {version} failed to build an engine from {onnx_path} on {gpu['name']}:\n  "
                           + "\n  ".join(logger.errors or ["(no error message; rerun with verbose logging)"]))
    _atomic_write_bytes(engine_path, serialized)
    if cache_path is not None:
        tc = config.get_timing_cache()
        if tc is not None:
            _atomic_write_bytes(cache_path, tc.serialize())
    seconds = time.perf_counter() - t0
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    info = EngineInfo(
        engine_path=str(engine_path), onnx_path=str(onnx_path), precision="fp16" if fp16 else "fp32",
        strongly_typed=strong, tensorrt_version=version, gpu=gpu["name"],
        compute_capability=gpu["compute_capability"], profiles=prof, build_seconds=round(seconds, 2),
        bytes=engine_path.stat().st_size, workspace_gb=float(workspace_gb),
        timing_cache=str(cache_path) if cache_path else None, timing_cache_loaded=cache_loaded,
        inputs=list(net_inputs), outputs=outputs,
    )
    log.info("TensorRT %s engine %s: %s, %s typed, %.1f MB, built in %.1f s on %s (sm %s)", version,
             engine_path.name, info.precision, "strongly" if strong else "weakly", info.bytes / 2**20, seconds,
             gpu["name"], gpu["compute_capability"])
    return info
