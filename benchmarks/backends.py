"""One runner per backend, all driving the same image graph on the same inputs.

A runner is set up once (``setup``), then bound to each batch of inputs (``bind`` returns a
zero-argument callable that runs one inference, plus ``fetch`` that turns its result into a
float32 numpy array for the agreement check), then closed.

PyTorch runners run the export wrapper of :mod:`rsvl_export.wrappers` (the eager reference
itself); on CUDA their inputs live on the device and their outputs are left there while timing
(engine time). ONNX Runtime and TensorRT runners go through the runtime's own sessions
(:func:`rsvl_runtime.backends.load_sessions`): numpy in, numpy out, as ``rsvl-infer`` runs them
(on a GPU that includes the host<->device copies; the table says so in its ``io`` column).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("rsvl.bench")


@dataclass
class BenchContext:
    """What every runner needs: the eager model (reference weights), the bundle and settings."""

    model: Any  # nn.Module (eval, on ``device``)
    task: str
    bundle: Any  # rsvl_runtime.bundle.Bundle
    tile: int
    device: str  # "cpu" | "cuda"
    threads: int
    out: Path
    quick: bool
    input_names: list[str]
    ort_variant: Path | None = None  # image.ort.onnx (bundle's or generated)
    ort_variant_name: str | None = None

    def image_module(self):
        from rsvl_export.wrappers import (
            ReferringImage,
            SemanticImage,
            SemanticImageOptical,
        )

        if self.task == "semantic":
            return SemanticImage(self.model) if "sar" in self.input_names else SemanticImageOptical(self.model)
        return ReferringImage(self.model)


@dataclass
class Bound:
    """A runner bound to one batch of inputs."""

    call: Callable[[], Any]
    fetch: Callable[[Any], np.ndarray]
    compile_s: float | None = None
    notes: list[str] = field(default_factory=list)


class Runner:
    """Base class. Subclasses set the class attributes and implement setup/bind."""

    key = "base"
    label = "base"
    engine = "pytorch"
    precision = "fp32"
    io = "host"  # where inputs/outputs live while timing: "host" (numpy) | "device"

    def __init__(self) -> None:
        self.device = "cpu"
        self.notes: list[str] = []
        self.info: dict[str, Any] = {}

    def unavailable(self, ctx: BenchContext) -> str | None:
        """Why this runner cannot run here (None: it can)."""
        return None

    def setup(self, ctx: BenchContext) -> None:
        self.device = ctx.device

    def bind(self, feeds: Mapping[str, np.ndarray], batch: int) -> Bound:
        raise NotImplementedError

    def skip_batch(self, ctx: BenchContext, batch: int, first_batch: bool) -> str | None:
        """Why this runner skips ``batch`` (None: measure it)."""
        return None

    def close(self) -> None:
        gc.collect()

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "engine": self.engine, "precision": self.precision, "device": self.device,
                "io": self.io, "notes": list(self.notes), **self.info}


# --------------------------------------------------------------------------- PyTorch
class TorchEager(Runner):
    key = "torch-eager"
    label = "PyTorch eager FP32"
    io = "host"

    def setup(self, ctx: BenchContext) -> None:
        import torch

        super().setup(ctx)
        self.io = "device" if ctx.device.startswith("cuda") else "host"
        self.ctx = ctx
        self.module = ctx.image_module().eval()
        self.names = ctx.input_names
        self._torch = torch

    def _args(self, feeds: Mapping[str, np.ndarray]) -> list[Any]:
        torch = self._torch
        return [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self.names]

    def _forward(self, args: list[Any]) -> Any:
        with self._torch.inference_mode():
            return self.module(*args)

    def bind(self, feeds: Mapping[str, np.ndarray], batch: int) -> Bound:
        args = self._args(feeds)
        return Bound(lambda: self._forward(args), _torch_fetch)


def _torch_fetch(out: Any) -> np.ndarray:
    return out.detach().float().cpu().numpy()


def _cpu_bf16_supported() -> bool:
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001
        return False


class TorchAMP(TorchEager):
    key = "torch-amp"
    label = "PyTorch AMP"

    def unavailable(self, ctx: BenchContext) -> str | None:
        if ctx.device == "cpu" and not _cpu_bf16_supported():
            return "this CPU has no native bf16 (oneDNN reports none): AMP would be emulated"
        return None

    def setup(self, ctx: BenchContext) -> None:
        import torch

        super().setup(ctx)
        cuda = ctx.device.startswith("cuda")
        self.dtype = torch.float16 if cuda else torch.bfloat16
        self.precision = "fp16-autocast" if cuda else "bf16-autocast"
        self.label = "PyTorch AMP FP16" if cuda else "PyTorch AMP BF16 (CPU autocast)"

    def _forward(self, args: list[Any]) -> Any:
        torch = self._torch
        with torch.inference_mode(), torch.autocast(self.device.split(":")[0], dtype=self.dtype):
            return self.module(*args)


class TorchCompile(TorchEager):
    """``torch.compile`` (inductor). On CPU with ``freezing=True`` (weights folded as constants,
    inference only), which docs/export-notes.md measured ~2x faster than plain compile at B=4.
    Shapes are static, so every batch size compiles once; that time is reported as
    ``compile_s`` and excluded from the latency."""

    key = "torch-compile"
    label = "torch.compile (inductor)"

    def setup(self, ctx: BenchContext) -> None:
        import torch

        super().setup(ctx)
        self.freezing = not ctx.device.startswith("cuda")
        if self.freezing:
            self.label = "torch.compile (inductor, freezing)"
        torch._dynamo.reset()
        self.compiled = torch.compile(self.module, dynamic=False)
        self.info["recompiles_per_batch_size"] = True

    def skip_batch(self, ctx: BenchContext, batch: int, first_batch: bool) -> str | None:
        if ctx.quick and not first_batch:
            return "--quick: compiled at the first batch size only (it recompiles per batch size)"
        return None

    def _forward(self, args: list[Any]) -> Any:
        torch = self._torch
        with torch.inference_mode():
            if self.freezing:
                import torch._inductor.config as icfg

                with icfg.patch(freezing=True):
                    return self.compiled(*args)
            return self.compiled(*args)

    def bind(self, feeds: Mapping[str, np.ndarray], batch: int) -> Bound:
        from .measure import time_once

        args = self._args(feeds)
        first, _ = time_once(lambda: self._forward(args), self.device)
        second, _ = time_once(lambda: self._forward(args), self.device)
        return Bound(lambda: self._forward(args), _torch_fetch, compile_s=round(first - second, 2))


class TorchCUDAGraph(TorchEager):
    """AMP FP16 captured once into a ``torch.cuda.CUDAGraph`` per batch and replayed (static
    input/output buffers: no Python or launch overhead per kernel)."""

    key = "torch-cudagraph"
    label = "CUDA graph replay (AMP FP16)"
    precision = "fp16-autocast"
    io = "device"

    def unavailable(self, ctx: BenchContext) -> str | None:
        return None if ctx.device.startswith("cuda") else "needs a CUDA GPU"

    def bind(self, feeds: Mapping[str, np.ndarray], batch: int) -> Bound:
        import torch

        static = self._args(feeds)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        t0 = time.perf_counter()
        with torch.cuda.stream(s), torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            for _ in range(3):
                self.module(*static)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(g), torch.autocast("cuda", dtype=torch.float16):
            out = self.module(*static)
        torch.cuda.synchronize()
        capture = time.perf_counter() - t0
        return Bound(lambda: (g.replay(), out)[1], _torch_fetch, compile_s=round(capture, 2),
                     notes=["compile_s = warm-up + capture"])


# --------------------------------------------------------------------------- ONNX Runtime / TensorRT
class OrtRunner(Runner):
    """A bundle graph through the runtime's ONNX Runtime session (numpy in, numpy out)."""

    engine = "onnxruntime"
    io = "host"

    def __init__(self, key: str, label: str, backend: str, precision: str, file: Path | None = None) -> None:
        super().__init__()
        self.key, self.label, self.backend, self.precision, self.file = key, label, backend, precision, file

    def unavailable(self, ctx: BenchContext) -> str | None:
        from rsvl_runtime.backends.onnxruntime_backend import available_providers

        have = available_providers()
        need = {"onnxruntime-cuda": "CUDAExecutionProvider", "onnxruntime-tensorrt": "TensorrtExecutionProvider"}
        if self.backend in need and need[self.backend] not in have:
            return f"onnxruntime has no {need[self.backend]} here (providers: {', '.join(have)})"
        if self.backend in need and not ctx.device.startswith("cuda"):
            return "needs a CUDA GPU"
        image_graph = ctx.bundle.meta.graphs["image"]
        if self.file is None and image_graph.file(self.precision) is None:
            return f"the bundle has no {self.precision} image graph"
        if self.key == "ort-cpu-fp16" and ctx.quick and not ctx.device.startswith("cuda"):
            return ("--quick: skipped — ORT's CPU provider upcasts FP16 to FP32 kernels (no speed-up; "
                    "docs/export-notes.md: ViT-B/16 113 -> 113 ms); run without --quick to record it")
        return None

    def setup(self, ctx: BenchContext) -> None:
        from rsvl_runtime.backends import load_sessions
        from rsvl_runtime.backends.onnxruntime_backend import (
            OrtSession,
            default_providers,
        )

        super().setup(ctx)
        if self.file is not None:
            providers = ["CPUExecutionProvider"] if self.backend == "onnxruntime-cpu" else default_providers("auto")
            self.session = OrtSession(self.file, providers=providers, threads=ctx.threads)
            self.info["providers"] = self.session.providers
            self.info["file"] = str(self.file)
        else:
            s = load_sessions(ctx.bundle, self.backend, self.precision, ctx.threads)
            self.session = s.image
            self.info["providers"] = getattr(s.image, "providers", None)
            self.info["file"] = str(getattr(s.image, "path", ""))
        provs = self.info.get("providers") or ["CPUExecutionProvider"]
        self.device = "cuda" if provs[0] != "CPUExecutionProvider" else "cpu"

    def bind(self, feeds: Mapping[str, np.ndarray], batch: int) -> Bound:
        f = {n: np.ascontiguousarray(feeds[n]) for n in self.session.input_names}
        out = self.session.output_names[0]
        return Bound(lambda: self.session.run(f), lambda r: np.asarray(r[out], dtype=np.float32))

    def close(self) -> None:
        self.session = None
        super().close()


class TensorRTRunner(OrtRunner):
    """The bundle's serialized TensorRT engine through the runtime's TensorRT session."""

    engine = "tensorrt"

    def __init__(self) -> None:
        super().__init__("tensorrt", "TensorRT engine (bundle's flavour)", "tensorrt", "fp16")

    def unavailable(self, ctx: BenchContext) -> str | None:
        from rsvl_runtime.backends.tensorrt import check_engine

        eng = ctx.bundle.meta.engine("image")
        if eng is None:
            return "the bundle has no TensorRT engine (export with --engine tensorrt-rtx, or rebuild-engine)"
        check = check_engine(ctx.bundle.path(eng.file), eng.to_dict())
        return None if check.ok else f"{check.describe()}: {check.reason}"

    def setup(self, ctx: BenchContext) -> None:
        from rsvl_runtime.backends import load_sessions

        Runner.setup(self, ctx)
        s = load_sessions(ctx.bundle, "tensorrt", "auto", ctx.threads)
        self.session = s.image
        self.precision = s.precision
        self.device = "cuda"
        eng = ctx.bundle.meta.engine("image")
        self.info.update(file=eng and eng.file, flavour=eng and eng.flavour, tensorrt_version=eng and eng.version)

    def skip_batch(self, ctx: BenchContext, batch: int, first_batch: bool) -> str | None:
        hi = ctx.bundle.meta.limits.max_batch
        if batch > hi:
            return f"batch {batch} exceeds the engine profile (max {hi})"
        return None


# --------------------------------------------------------------------------- registry
#: Every runner key, in table order, with a one-line description for --help.
RUNNER_KEYS: dict[str, str] = {
    "torch-eager": "PyTorch eager FP32 (the reference)",
    "torch-amp": "PyTorch autocast: FP16 on CUDA, BF16 on CPU",
    "torch-compile": "torch.compile (inductor; CPU: freezing)",
    "torch-cudagraph": "CUDA graph replay of AMP FP16 (CUDA only)",
    "ort-cpu-fp32": "ONNX Runtime CPU, image.onnx",
    "ort-cpu-fp16": "ONNX Runtime CPU, image.fp16.onnx (no CPU speed-up; for the record)",
    "ort-opt": "ONNX Runtime CPU, image.ort.onnx (fused / INT8, parity-gated; rsvl_export.ort_optimize)",
    "ort-cuda-fp32": "ONNX Runtime CUDA EP, image.onnx",
    "ort-cuda-fp16": "ONNX Runtime CUDA EP, image.fp16.onnx",
    "ort-trt": "ONNX Runtime TensorRT EP (FP16), image.onnx",
    "tensorrt": "TensorRT engine (bundle's image.*.engine)",
}
GROUPS = {"all": list(RUNNER_KEYS), "torch": [k for k in RUNNER_KEYS if k.startswith("torch")],
          "ort": [k for k in RUNNER_KEYS if k.startswith("ort")], "gpu": ["torch-cudagraph", "ort-cuda-fp32",
                                                                          "ort-cuda-fp16", "ort-trt", "tensorrt"]}


def parse_backends(spec: Sequence[str] | str | None) -> list[str]:
    """``--backends`` values (keys or groups, comma/space separated) -> runner keys in table order."""
    import difflib

    if not spec:
        return list(RUNNER_KEYS)
    items = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in s.split(",")]
    want: set[str] = set()
    for it in (i.strip() for i in items if i.strip()):
        if it in GROUPS:
            want.update(GROUPS[it])
        elif it in RUNNER_KEYS:
            want.add(it)
        else:
            close = difflib.get_close_matches(it, [*RUNNER_KEYS, *GROUPS], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown backend {it!r}.{hint} Choose from: {', '.join([*RUNNER_KEYS, *GROUPS])}")
    return [k for k in RUNNER_KEYS if k in want]


def make_runner(key: str, ctx: BenchContext) -> Runner:
    if key == "torch-eager":
        return TorchEager()
    if key == "torch-amp":
        return TorchAMP()
    if key == "torch-compile":
        return TorchCompile()
    if key == "torch-cudagraph":
        return TorchCUDAGraph()
    if key == "ort-cpu-fp32":
        return OrtRunner(key, "ONNX Runtime CPU FP32", "onnxruntime-cpu", "fp32")
    if key == "ort-cpu-fp16":
        return OrtRunner(key, "ONNX Runtime CPU FP16 graph", "onnxruntime-cpu", "fp16")
    if key == "ort-opt":
        name = ctx.ort_variant_name or "optimised"
        r = OrtRunner(key, f"ONNX Runtime CPU optimised ({name})", "onnxruntime-cpu",
                      "int8-dynamic" if name.startswith("int8") else "fp32", file=ctx.ort_variant)
        return r
    if key == "ort-cuda-fp32":
        return OrtRunner(key, "ONNX Runtime CUDA FP32", "onnxruntime-cuda", "fp32")
    if key == "ort-cuda-fp16":
        return OrtRunner(key, "ONNX Runtime CUDA FP16", "onnxruntime-cuda", "fp16")
    if key == "ort-trt":
        return OrtRunner(key, "ONNX Runtime TensorRT EP", "onnxruntime-tensorrt", "fp32")
    if key == "tensorrt":
        return TensorRTRunner()
    raise KeyError(key)


def ort_variant_unavailable(ctx: BenchContext) -> str | None:
    if ctx.ort_variant is None or not Path(ctx.ort_variant).is_file():
        return "no image.ort.onnx (ort_optimize failed or was disabled with --no-ort-optimize)"
    return None
