"""Inference backends and the choice between them.

``onnxruntime`` (CPU; CUDA / TensorRT execution providers with onnxruntime-gpu), ``tensorrt``
(serialized engine through the TensorRT Python API) and ``torch`` (reference, imported lazily).
``auto`` picks the fastest one available for the bundle and logs the choice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..bundle import Bundle, BundleError
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
    if not bundle.manifest.get("engines"):
        return False, "the bundle has no TensorRT engine"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "tensorrt is not importable"
    from ..gpu import cuda_device_count

    if cuda_device_count() < 1:
        return False, "no CUDA GPU"
    return True, ""


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
        from .onnxruntime_backend import OrtSession, default_providers
        from .tensorrt_backend import TensorRTSession

        ok, why = _tensorrt_ready(bundle)
        if not ok:
            raise BackendError(f"backend tensorrt: {why}. Install TensorRT on an NVIDIA GPU machine and build the "
                               f"engine with `rsvl-export rebuild-engine {bundle.root}`, or use "
                               "--backend onnxruntime")
        eng = next((e for e in bundle.manifest["engines"] if e.get("graph") == "image"), None)
        if eng is None:
            raise BundleError(f"{bundle.root}: no image engine listed in the manifest")
        if precision not in ("auto", eng.get("precision")):
            raise BackendError(f"the bundle's engine is {eng.get('precision')}, not {precision}")
        image = TensorRTSession(bundle.path(eng["file"]), eng)
        text = OrtSession(bundle.graph_file("text", "fp32"), providers=default_providers("auto"), threads=threads)
        log.info("backend -> tensorrt (%s, TensorRT %s, sm %s)", eng["file"], eng.get("tensorrt_version"),
                 eng.get("compute_capability"))
        return Sessions(text, image, "tensorrt", eng.get("precision", "fp16"))
    if backend == "torch":
        from .torch_backend import torch_sessions

        return torch_sessions(bundle, precision)
    device = {"onnxruntime": "auto", "onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda",
              "onnxruntime-tensorrt": "tensorrt"}[backend]
    s = _ort(bundle, device, precision, threads)
    log.info("backend -> %s, %s image graph", s.backend, s.precision)
    return s


__all__ = ["BACKENDS", "BackendError", "Session", "Sessions", "load_sessions"]
