"""Inference backends and the choice between them.

``onnxruntime`` (CPU; CUDA / TensorRT execution providers with onnxruntime-gpu), ``tensorrt``
(the bundle's serialized engines, enterprise TensorRT or TensorRT-RTX as the manifest says; see
``backends/tensorrt/``) and ``torch`` (reference, imported lazily).
``auto`` picks the fastest one available for the bundle and logs the choice.
"""

from __future__ import annotations

import logging

from ..bundle import Bundle
from .base import BackendError, Session, Sessions
from .int8_guard import int8_refusal, int8_safe

log = logging.getLogger("rsvl.runtime")

BACKENDS = ("auto", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "torch")


def _tensorrt_ready(bundle: Bundle) -> tuple[bool, str]:
    """Whether the bundle's image engine can run here (flavour, version and GPU checked
    without deserialising); the reason when not."""
    from .tensorrt import check_engine, cuda_device_count

    eng = bundle.meta.engine("image")
    if eng is None:
        return False, "the bundle has no TensorRT engine"
    if cuda_device_count() < 1:
        return False, f"{eng.file} ({eng.flavour}) needs an NVIDIA GPU and this machine has none"
    check = check_engine(bundle.root / eng.file, eng.to_dict())
    return check.ok, check.reason


def _ort(bundle: Bundle, device: str, precision: str, threads: int | None) -> Sessions:
    from .onnxruntime_backend import OrtSession, default_providers, text_graph_precision

    providers = default_providers(device)
    on_gpu = providers[0] != "CPUExecutionProvider"
    image_graph = bundle.meta.graphs["image"]
    if precision == "auto":
        # FP16 is only faster on a GPU (ORT's CPU provider upcasts FP16 to FP32 kernels); on the CPU
        # provider the ORT-optimised variant (fusions, INT8 checked for parity at export) is fastest.
        if on_gpu:
            precision = "fp16" if image_graph.fp16 else "fp32"
        else:
            precision = "ort" if image_graph.ort and int8_safe(image_graph) else "fp32"
    if precision == "ort" and on_gpu:
        raise BackendError("the 'ort' image graph holds CPU-specific ops; use --precision fp16/fp32 on a GPU")
    text_precision = text_graph_precision(bundle.meta.graph("text"), precision, on_gpu)
    text = OrtSession(bundle.graph_file("text", text_precision), providers=providers, threads=threads)
    image = OrtSession(bundle.graph_file("image", precision), providers=providers, threads=threads)
    name = f"onnxruntime[{image.providers[0].replace('ExecutionProvider', '')}]"
    return Sessions(text, image, name, precision, on_cpu=image.providers[0] == "CPUExecutionProvider")


def _tensorrt(bundle: Bundle, precision: str, threads: int | None) -> Sessions:
    """The bundle's engines on this GPU: the image engine, and the text engine when there is one
    (otherwise the text graph runs on ONNX Runtime). Refuses in one line before deserialising."""
    from .onnxruntime_backend import OrtSession, default_providers
    from .tensorrt import TensorRTSession

    eng = bundle.meta.engine("image")
    if eng is None:
        raise BackendError(f"backend tensorrt: {bundle.root} has no TensorRT engine. Build one with "
                           f"`rsvl-export rebuild-engine {bundle.root}`, or use --backend onnxruntime")
    if precision not in ("auto", eng.precision):
        raise BackendError(f"the bundle's image engine is {eng.precision}, not {precision}; pass "
                           f"--precision {eng.precision} or --backend onnxruntime")
    image = TensorRTSession(bundle.path(eng.file), eng.to_dict())  # checks the engine before deserialising
    text_eng = bundle.meta.engine("text")
    if text_eng is not None:
        text: Session = TensorRTSession(bundle.path(text_eng.file), text_eng.to_dict())
    else:
        text = OrtSession(bundle.graph_file("text", "fp32"), providers=default_providers("auto"), threads=threads)
    log.info("backend -> %s %s (%s%s)", eng.flavour, eng.version, eng.file,
             f", {text_eng.file}" if text_eng else ", text graph on ONNX Runtime")
    return Sessions(text, image, "tensorrt", eng.precision, on_cpu=False)


def load_sessions(bundle: Bundle, backend: str = "auto", precision: str = "auto",
                  threads: int | None = None) -> Sessions:
    """Open the bundle's graphs on ``backend``; ``auto`` logs what it picked and why."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        ok, why = _tensorrt_ready(bundle)
        if ok:
            backend = "tensorrt"
        else:
            from .onnxruntime_backend import available_providers

            gpu = [p for p in available_providers() if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")]
            backend = "onnxruntime"
            log.info("backend auto -> onnxruntime (%s; providers %s)", why,
                     gpu or ["CPUExecutionProvider"])
    if backend == "tensorrt":
        return _tensorrt(bundle, precision, threads)
    if backend == "torch":
        from .torch_backend import torch_sessions

        return torch_sessions(bundle, precision)
    device = {"onnxruntime": "auto", "onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda",
              "onnxruntime-tensorrt": "tensorrt"}[backend]
    s = _ort(bundle, device, precision, threads)
    log.info("backend -> %s, %s image graph", s.backend, s.precision)
    return s


__all__ = ["BACKENDS", "BackendError", "Session", "Sessions", "int8_refusal", "int8_safe", "load_sessions"]
