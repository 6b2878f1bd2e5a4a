"""Build a serialized engine from an exported ONNX graph, with either TensorRT flavour.

* **tensorrt-rtx** builds ahead-of-time on the CPU (no GPU needed). Networks are strongly typed:
  the ONNX decides every tensor's precision, so an FP16 engine is built from the FP16 ONNX.
  Target compute capabilities are the library's defaults (8.0/8.6/8.9/12.x) unless given.
* **tensorrt** (enterprise) builds on, and for, the GPU of this machine: strongly typed from
  TensorRT 10.12 (weak typing is deprecated there and removed in 11), ``BuilderFlag.FP16`` on
  older releases; a timing cache speeds up rebuilds.

The engine is written atomically (temporary file, then rename): a failed, interrupted or
out-of-memory build never leaves a half-written engine. :class:`EngineInfo` is the manifest entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import probe
from .flavours import (
    TENSORRT_RTX,
    TensorRTUnavailable,
    can_build,
    error_logger,
    flavour,
    import_flavour,
)
from .profiles import Profiles, normalize_profiles, trtexec_command

log = logging.getLogger("rsvl.tensorrt")

#: First enterprise TensorRT release that deprecates weak typing: from here on we build strongly typed.
STRONGLY_TYPED_FROM = (10, 12)
#: Where TensorRT-RTX engines run when no target is set (NVIDIA's support matrix for RTX 1.x).
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0", "12.1")


class EngineBuildError(RuntimeError):
    """The parser rejected the graph or the build failed (out of memory, unsupported op)."""


@dataclass
class EngineInfo:
    """What :func:`build_engine` built; :meth:`to_dict` is the manifest's ``engines`` entry."""

    graph: str
    file: str
    onnx: str
    flavour: str
    version: str
    precision: str
    strongly_typed: bool
    targets: list[str]
    built_on: str
    profiles: dict[str, dict[str, list[int]]]
    bytes: int
    build_seconds: float
    sha256: str
    workspace_gb: float | None
    timing_cache_loaded: bool = False
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Manifest entry (file names relative to the bundle, JSON types only)."""
        return asdict(self)


def _onnx_float_types(onnx_path: Path) -> set[int]:
    """Float element types used by the graph's initializers and Cast targets."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    types = {i.data_type for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Cast":
            types.update(a.i for a in n.attribute if a.name == "to")
    return types


def _check_precision(onnx_path: Path, precision: str, strong: bool) -> None:
    import onnx

    has_fp16 = onnx.TensorProto.FLOAT16 in _onnx_float_types(onnx_path)
    if precision == "fp16" and strong and not has_fp16:
        raise ValueError(f"{onnx_path.name} has no FP16 tensors: a strongly typed network built from it would be an "
                         "FP32 engine labelled fp16. Pass the FP16 ONNX written by rsvl_export.fp16.convert_fp16 "
                         "(image.fp16.onnx)")
    if precision == "fp32" and has_fp16:
        raise ValueError(f"{onnx_path.name} contains FP16 tensors but precision is fp32; pass the FP32 ONNX for an "
                         "FP32 engine, or precision fp16")


def write_bytes_atomic(path: Path, data: Any) -> str:
    """Write ``data`` (bytes or a buffer) to ``path`` atomically; return its sha256."""
    from ...files import atomic_open

    path.parent.mkdir(parents=True, exist_ok=True)
    view = memoryview(data)
    with atomic_open(path, "wb") as f:
        f.write(view)
    return hashlib.sha256(view).hexdigest()


def _network_inputs(network: Any) -> dict[str, tuple[int, ...]]:
    return {network.get_input(i).name: tuple(int(d) for d in network.get_input(i).shape)
            for i in range(network.num_inputs)}


def _check_profiles(onnx_name: str, prof: dict[str, dict[str, list[int]]], net_inputs: dict[str, tuple[int, ...]]
                    ) -> None:
    """Profiles must cover exactly the network's dynamic inputs and agree with its static dims."""
    unknown = sorted(set(prof) - set(net_inputs))
    if unknown:
        raise ValueError(f"profiles name {unknown}, which are not inputs of {onnx_name} (inputs: {sorted(net_inputs)})")
    for name, shape in net_inputs.items():
        if name not in prof:
            if any(d < 0 for d in shape):
                raise ValueError(f"input {name!r} of {onnx_name} has dynamic shape {list(shape)} but no "
                                 "optimisation profile; give (min, opt, max) shapes for it")
            continue
        for key in ("min", "opt", "max"):
            s = prof[name][key]
            if len(s) != len(shape) or any(d >= 0 and d != v for d, v in zip(shape, s)):
                raise ValueError(f"profile {key} shape {s} of input {name!r} does not fit the graph's shape "
                                 f"{list(shape)} (-1 = dynamic)")


def _set_targets(trt: Any, config: Any, targets: Sequence[str] | None) -> list[str]:
    """TensorRT-RTX target compute capabilities ("8.6" -> ComputeCapability.SM86); the defaults when None."""
    if not targets:
        return list(RTX_DEFAULT_TARGETS)
    config.num_compute_capabilities = len(targets)
    for i, cc in enumerate(targets):
        member = "SM" + cc.replace(".", "")
        if member not in trt.ComputeCapability.__members__:
            known = sorted(m for m in trt.ComputeCapability.__members__ if m.startswith("SM"))
            raise ValueError(f"compute capability {cc} is not a TensorRT-RTX target (known: {', '.join(known)})")
        if not config.set_compute_capability(getattr(trt.ComputeCapability, member), i):
            raise ValueError(f"TensorRT-RTX refused target compute capability {cc}")
    return list(targets)


def _timing_cache(config: Any, cache_path: Path | None) -> bool:
    """Load the enterprise timing cache if present; True when a non-empty cache was accepted."""
    if cache_path is None:
        return False
    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is None and blob:
        log.warning("timing cache %s could not be read; starting a new one", cache_path)
        blob, cache = b"", config.create_timing_cache(b"")
    if cache is None:
        return False
    accepted = bool(config.set_timing_cache(cache, ignore_mismatch=False))
    if blob and not accepted:
        log.warning("timing cache %s does not match this TensorRT/GPU; starting a new one", cache_path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return bool(blob) and accepted


@dataclass(frozen=True)
class BuildOptions:
    """How :func:`build_engine` builds (every field can also be given to it by keyword).

    Attributes:
        flavour_name: ``"tensorrt-rtx"`` (default; no GPU needed) or ``"tensorrt"``.
        precision: ``"fp16"`` or ``"fp32"``, checked against the ONNX's tensor types.
        graph: ``"image"`` or ``"text"`` (recorded in the manifest entry).
        targets: TensorRT-RTX target compute capabilities (``("8.6", "8.9")``); default: the library's.
        timing_cache_path: enterprise TensorRT only: loaded if it exists, saved after the build.
        workspace_gb: builder workspace memory pool limit; None: the library's default (all of the
            device memory). A 4 GB cap is too small for cadformer at 480² and B=32: one layer asks
            for 4.2 GiB.
        device: the CUDA device (where there is one).
    """

    flavour_name: str = TENSORRT_RTX.name
    precision: str = "fp16"
    graph: str = "image"
    targets: Sequence[str] | None = None
    timing_cache_path: str | os.PathLike[str] | None = None
    workspace_gb: float | None = None
    device: int = 0


def build_engine(onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str], profiles: Profiles,
                 options: BuildOptions | None = None, **overrides: Any) -> EngineInfo:
    """Build and serialise an engine for ``onnx_path``.

    Args:
        onnx_path: the graph (the FP16 ONNX for an FP16 engine: strong typing takes precision from it).
        engine_path: where the serialized engine goes (written atomically).
        profiles: ``{input: (min, opt, max)}`` shapes (or ``{"min","opt","max"}`` dicts); every
            input with a dynamic axis needs one; static axes must equal the graph's.
        options: :class:`BuildOptions`; ``overrides`` replace any of its fields
            (``build_engine(src, dst, prof, flavour_name="tensorrt", precision="fp32")``).

    Raises:
        TensorRTUnavailable: the flavour cannot build here (the message says how to get it).
        ValueError: profiles that do not fit the graph, or an ONNX whose precision differs from ``precision``.
        EngineBuildError: parser errors (all listed), out of memory, or a failed build.
    """
    o = dataclasses.replace(options or BuildOptions(), **overrides)
    flavour_name, precision, graph, targets = o.flavour_name, o.precision, o.graph, o.targets
    timing_cache_path, workspace_gb, device = o.timing_cache_path, o.workspace_gb, o.device
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    f = flavour(flavour_name)
    prof = normalize_profiles(profiles)
    ok, why = can_build(f.name, device)
    if not ok:
        hint = ("" if f.builds_without_gpu else "\nor with trtexec on the target GPU machine:\n  "
                + trtexec_command(onnx_path, prof, precision == "fp16", engine_path=engine_path))
        raise TensorRTUnavailable(f"cannot build {engine_path.name} here: {why}. `pip install 'rsvl[tensorrt-rtx]'` "
                                  f"builds engines on any machine (`--engine tensorrt-rtx`){hint}")
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX graph not found: {onnx_path}")
    trt = import_flavour(f.name)
    version = str(trt.__version__)
    rtx = f is TENSORRT_RTX
    strong = rtx or probe.version_tuple(version) >= STRONGLY_TYPED_FROM
    _check_precision(onnx_path, precision, strong)
    gpu = probe.gpu_info(device)

    logger = error_logger(trt, forward=True)
    t0 = time.perf_counter()
    try:
        builder = trt.Builder(logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0
        if not strong and probe.version_tuple(version) < (10,):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise EngineBuildError(f"{f.name} {version}'s ONNX parser rejected {onnx_path} with {len(errors)} "
                                   "error(s) (change the export, not the parser):\n  "
                                   + "\n  ".join(errors or logger.errors or ["(no message)"]))
        net_inputs = _network_inputs(network)
        _check_profiles(onnx_path.name, prof, net_inputs)
        config = builder.create_builder_config()
        if workspace_gb is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
        if precision == "fp16" and not strong:
            config.set_flag(trt.BuilderFlag.FP16)
        built_targets = _set_targets(trt, config, targets) if rtx else [gpu.compute_capability if gpu else "unknown"]
        profile = builder.create_optimization_profile()
        for name, p in prof.items():
            profile.set_shape(name, p["min"], p["opt"], p["max"])
        if config.add_optimization_profile(profile) < 0:
            raise ValueError(f"{f.name} rejected the optimisation profile {prof}")
        cache_path = Path(timing_cache_path) if timing_cache_path and not rtx else None
        cache_loaded = _timing_cache(config, cache_path)
        serialized = builder.build_serialized_network(network, config)
    except MemoryError as e:
        raise EngineBuildError(_oom_message(f.name, version, engine_path, onnx_path, workspace_gb,
                                            logger.errors)) from e
    if serialized is None:
        if any("out of memory" in m.lower() or "outofmemory" in m.lower() for m in logger.errors):
            raise EngineBuildError(_oom_message(f.name, version, engine_path, onnx_path, workspace_gb,
                                                logger.errors))
        raise EngineBuildError(f"{f.name} {version} failed to build {engine_path.name} from {onnx_path}:\n  "
                               + "\n  ".join(logger.errors or ["(no error message; rerun with -v)"]))
    sha = write_bytes_atomic(engine_path, serialized)
    if cache_path is not None:
        tc = config.get_timing_cache()
        if tc is not None:
            write_bytes_atomic(cache_path, tc.serialize())
    seconds = time.perf_counter() - t0
    info = EngineInfo(
        graph=graph, file=engine_path.name, onnx=onnx_path.name, flavour=f.name, version=version,
        precision=precision, strongly_typed=strong, targets=built_targets,
        built_on=str(gpu) if gpu else "CPU (ahead-of-time, no GPU)", profiles=prof,
        bytes=engine_path.stat().st_size, build_seconds=round(seconds, 2), sha256=sha,
        workspace_gb=None if workspace_gb is None else float(workspace_gb), timing_cache_loaded=cache_loaded, inputs=list(net_inputs),
        outputs=[network.get_output(i).name for i in range(network.num_outputs)])
    log.info("%s %s engine %s: %s, %.1f MB, built in %.1f s on %s; runs on compute capability %s", f.name, version,
             info.file, precision, info.bytes / 2**20, seconds, info.built_on, "/".join(info.targets))
    return info


def _oom_message(name: str, version: str, engine_path: Path, onnx_path: Path, workspace_gb: float | None,
                 errors: list[str]) -> str:
    asked = next((m[m.find("Requested size"):].rstrip(".)") for m in errors if "Requested size" in m), "")
    limit = f"workspace limit {workspace_gb:g} GB" if workspace_gb is not None else "no workspace limit"
    return (f"{name} {version} ran out of memory building {engine_path.name} from {onnx_path.name} ({limit}"
            + (f"; {asked.lower()}" if asked else "") + "): lower --max-batch/--max-vocab"
            + (", raise --workspace-gb" if workspace_gb is not None else "")
            + ", or build on a machine with more memory; no engine was written")


__all__ = [
    "RTX_DEFAULT_TARGETS",
    "STRONGLY_TYPED_FROM",
    "EngineBuildError",
    "EngineInfo",
    "build_engine",
    "write_bytes_atomic",
]
