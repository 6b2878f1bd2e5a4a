"""Inference backends and the choice between them.

``onnxruntime`` (CPU; CUDA / TensorRT execution providers with onnxruntime-gpu), ``tensorrt``
(the bundle's serialized engines, enterprise TensorRT or TensorRT-RTX as the manifest says; see
``backends/tensorrt/``) and ``torch`` (reference, imported lazily).
``auto`` picks the fastest one available for the bundle and logs the choice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..bundle import Bundle
from .base import BackendError, Session

log = logging.getLogger("rsvl.runtime")

BACKENDS = ("auto", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "torch")


@dataclass
class Sessions:
    """The text and image graph of a bundle, loaded on one backend."""

    text: Session
    image: Session
    backend: str
    precision: str


def _tensorrt_ready(bundle: Bundle) -> tuple[bool, str]:
    """Whether the bundle's image engine can run here (flavour, version and GPU checked
    without deserialising); the reason when not."""
    from .tensorrt import bundle_engine, check_engine, cuda_device_count

    eng = bundle_engine(bundle.manifest, "image")
    if eng is None:
        return False, "the bundle has no TensorRT engine"
    if cuda_device_count() < 1:
        return False, f"{eng['file']} ({eng.get('flavour', 'tensorrt')}) needs an NVIDIA GPU and this machine has none"
    check = check_engine(bundle.root / eng["file"], eng)
    return check.ok, check.reason


def _int8_safe(image_graphs: dict) -> bool:
    """An INT8 variant was checked on a CPU with VNNI; without VNNI u8*s8 products can saturate."""
    rep = image_graphs.get("ort_report") or {}
    if not str(rep.get("variant", "")).startswith("int8"):
        return True
    from ..cpu import has_vnni

    if has_vnni():
        return True
    log.warning("image.ort.onnx is INT8 but this CPU has no VNNI: using the FP32 graph")
    return False


def _ort(bundle: Bundle, device: str, precision: str, threads: int | None) -> Sessions:
    from .onnxruntime_backend import OrtSession, default_providers

    providers = default_providers(device)
    on_gpu = providers[0] != "CPUExecutionProvider"
    image_graphs = bundle.manifest["graphs"]["image"]
    if precision == "auto":
        # FP16 is only faster on a GPU (ORT's CPU provider upcasts FP16 to FP32 kernels); on the CPU
        # provider the ORT-optimised variant (fusions, INT8 checked for parity at export) is fastest.
        if on_gpu:
            precision = "fp16" if "fp16" in image_graphs else "fp32"
        else:
            precision = "ort" if "ort" in image_graphs and _int8_safe(image_graphs) else "fp32"
    if precision == "ort" and on_gpu:
        raise BackendError("the 'ort' image graph holds CPU-specific ops; use --precision fp16/fp32 on a GPU")
    text = OrtSession(bundle.graph_file("text", "fp32"), providers=providers, threads=threads)
    image = OrtSession(bundle.graph_file("image", precision), providers=providers, threads=threads)
    name = f"onnxruntime[{image.providers[0].replace('ExecutionProvider', '')}]"
    return Sessions(text, image, name, precision)


def _tensorrt(bundle: Bundle, precision: str, threads: int | None) -> Sessions:
    """The bundle's engines on this GPU: the image engine, and the text engine when there is one
    (otherwise the text graph runs on ONNX Runtime). Refuses in one line before deserialising."""
    from .onnxruntime_backend import OrtSession, default_providers
    from .tensorrt import TensorRTSession, bundle_engine, require_engine

    eng = bundle_engine(bundle.manifest, "image")
    if eng is None:
        raise BackendError(f"backend tensorrt: {bundle.root} has no TensorRT engine. Build one with "
                           f"`rsvl-export rebuild-engine {bundle.root}`, or use --backend onnxruntime")
    if precision not in ("auto", eng.get("precision")):
        raise BackendError(f"the bundle's image engine is {eng.get('precision')}, not {precision}; pass "
                           f"--precision {eng.get('precision')} or --backend onnxruntime")
    require_engine(bundle.path(eng["file"]), eng)
    image = TensorRTSession(bundle.path(eng["file"]), eng)
    text_eng = bundle_engine(bundle.manifest, "text")
    if text_eng is not None:
        text: Session = TensorRTSession(bundle.path(text_eng["file"]), text_eng)
    else:
        text = OrtSession(bundle.graph_file("text", "fp32"), providers=default_providers("auto"), threads=threads)
    log.info("backend -> %s %s (%s%s)", eng.get("flavour", "tensorrt"), eng.get("version"), eng["file"],
             f", {text_eng['file']}" if text_eng else ", text graph on ONNX Runtime")
    return Sessions(text, image, "tensorrt", str(eng.get("precision", "fp16")))


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


__all__ = ["BACKENDS", "BackendError", "Session", "Sessions", "load_sessions"]
