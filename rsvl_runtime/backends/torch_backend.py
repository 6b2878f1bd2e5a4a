"""The PyTorch reference backend: the bundle's safetensors weights in eager mode.

Imported only when asked for (``backend="torch"``); needs ``rsvl[train]``. It runs the same
export wrappers that were exported to ONNX, so it is the reference for parity and benchmarks.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from ..bundle import Bundle, BundleError
from .base import BackendError


class TorchGraph:
    """One export wrapper run eagerly; numpy in, numpy out, same names as the ONNX graph."""

    def __init__(self, module: Any, input_names: list[str], output_names: list[str], device: str,
                 dtype: Any = None) -> None:
        self.module = module
        self.input_names = input_names
        self.output_names = output_names
        self.device = device
        self.dtype = dtype
        self.name = f"torch:{type(module).__name__}"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = importlib.import_module("torch")  # lazily: the runtime never needs torch otherwise

        args = []
        for n in self.input_names:
            t = torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device)
            args.append(t)
        with torch.inference_mode(), torch.autocast(self.device.split(":")[0], dtype=self.dtype,
                                                    enabled=self.dtype is not None):
            out = self.module(*args)
        outs = [out] if torch.is_tensor(out) else list(out)
        return {n: o.float().cpu().numpy() for n, o in zip(self.output_names, outs)}


def torch_sessions(bundle: Bundle, precision: str = "auto"):
    try:
        torch = importlib.import_module("torch")

        from rsvl_export.wrappers import (
            ReferringImage,
            ReferringText,
            SemanticImage,
            SemanticImageOptical,
            SemanticText,
        )
        from rsvl_train.checkpoint import load_checkpoint
    except ImportError as e:
        raise BackendError(f"the torch backend needs PyTorch and rsvl[export] ({e}); "
                           "pip install 'rsvl[export]' or use --backend onnxruntime") from e
    from .base import Sessions

    wfile = bundle.meta.weights.file
    if not wfile:
        raise BundleError(f"{bundle.root}: exported with --no-weights, so the torch backend has nothing to run; "
                          "re-export without --no-weights or use --backend onnxruntime")
    model = load_checkpoint(bundle.path(wfile))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device).eval()
    dtype = torch.float16 if (precision == "fp16" and device == "cuda") else None
    g = bundle.meta.graphs
    ins = {k: list(v.inputs) for k, v in g.items()}
    outs = {k: list(v.outputs) for k, v in g.items()}
    if bundle.task == "semantic":
        text_mod = SemanticText(model)
        image_mod = SemanticImage(model) if "sar" in ins["image"] else SemanticImageOptical(model)
    else:
        text_mod, image_mod = ReferringText(model), ReferringImage(model)
    return Sessions(TorchGraph(text_mod, ins["text"], outs["text"], device),
                    TorchGraph(image_mod, ins["image"], outs["image"], device, dtype),
                    f"torch[{device}]", "fp16" if dtype else "fp32", on_cpu=device == "cpu")
