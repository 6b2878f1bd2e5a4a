"""ONNX Runtime sessions: CPU here; CUDA and TensorRT execution providers with onnxruntime-gpu."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..logs import error_text
from ..manifest import GraphEntry
from .base import BackendError

log = logging.getLogger(__name__)

#: Session option that stops the intra-op threads spinning when a ``Run()`` returns (they still
#: spin during it). Without it they spin on for a while after each call and take the cores from
#: the CPU stages the scene runner runs between engine calls: measured on a 2-core AVX-512 EPYC,
#: tsmnet-tiny batch 8, the scores/labels of a 7 x 192 x 10000 block took 24.5-25.9 ms right after
#: a spinning call, 15.9-17.3 ms with this option, 13-18 ms with no engine call before; the
#: engine's own time did not change (``session.intra_op.allow_spinning=0``, no spinning at all,
#: made it slower).
FORCE_SPINNING_STOP = "session.force_spinning_stop"

#: Preference order when a GPU build of onnxruntime is installed.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def available_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendError("onnxruntime is not installed: pip install onnxruntime "
                           "(or onnxruntime-gpu on an NVIDIA machine)") from e
    return list(ort.get_available_providers())


def default_providers(device: str = "auto") -> list[str]:
    """Providers for ``device`` in ("auto", "cpu", "cuda", "tensorrt")."""
    have = available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        want = ["CUDAExecutionProvider"]
    elif device == "tensorrt":
        want = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    else:
        want = [p for p in GPU_PROVIDERS if p in have]
    missing = [p for p in want if p not in have]
    if device in ("cuda", "tensorrt") and missing:
        raise BackendError(f"onnxruntime has no {', '.join(missing)} here (available: {have}); "
                           "install onnxruntime-gpu matching your CUDA version")
    return [p for p in want if p in have] + ["CPUExecutionProvider"]


def text_graph_precision(text_graph: GraphEntry | None, image_precision: str, on_gpu: bool) -> str:
    """The text graph's file to open next to an image graph of ``image_precision``: its ORT CPU
    variant (``text.ort.onnx``, fused attention/normalisation, parity-checked at export) when the
    image graph runs its ``ort`` variant on the CPU provider and the bundle has one that is safe on
    this CPU (an INT8 one: :func:`rsvl_runtime.backends.int8_guard.int8_safe`); else ``fp32``."""
    if image_precision == "ort" and not on_gpu and text_graph is not None and text_graph.ort:
        from .int8_guard import int8_safe

        return "ort" if int8_safe(text_graph) else "fp32"
    return "fp32"


class OrtSession:
    """An ONNX graph in an ``onnxruntime.InferenceSession``."""

    def __init__(self, path: str | os.PathLike[str], providers: list[str] | None = None,
                 threads: int | None = None, cache_dir: str | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.name = f"onnxruntime:{self.path.name}"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
        # the intra-op threads spin while a Run() lasts, not after it (FORCE_SPINNING_STOP)
        opts.add_session_config_entry(FORCE_SPINNING_STOP, "1")
        providers = providers or default_providers()
        provider_options = []
        for p in providers:
            if p == "TensorrtExecutionProvider":
                cache = cache_dir or str(self.path.parent / ".trt_cache")
                provider_options.append({"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                         "trt_engine_cache_path": cache, "trt_timing_cache_enable": True})
            else:
                provider_options.append({})
        try:
            self._sess = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers,
                                              provider_options=provider_options)
        except Exception as e:  # onnxruntime raises its own exception types
            raise BackendError(f"{self.path}: onnxruntime cannot load this graph ({error_text(e)}); "
                               "the file may be corrupt — re-export the bundle") from e
        self.providers = self._sess.get_providers()
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        unknown = set(feeds) - set(self.input_names)
        missing = set(self.input_names) - set(feeds)
        if unknown or missing:
            raise BackendError(f"{self.path.name}: inputs {sorted(missing)} missing, {sorted(unknown)} "
                               f"not in the graph (expects {self.input_names})")
        outs = self._sess.run(self.output_names, feeds)
        return dict(zip(self.output_names, outs))
