"""A small stand-in for the image graph, shared by the export tests.

conv stem -> tokens -> LayerNorm -> self-attention -> pixel embeddings -> cosine head against
a vocabulary input -> logits upsampled to the input size. Inputs ``optical [B,3,32,32]`` and
``text_emb [K,8]``, output ``logits [B,K,32,32]`` — the same contract as the real image graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EMBED_DIM = 8
TILE = 32


class ToyImageGraph(nn.Module):
    """conv + LayerNorm + attention + cosine head; K is free because the vocabulary is an input."""

    def __init__(self, width: int = 16, dim: int = EMBED_DIM, heads: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, kernel_size=3, stride=4, padding=1)
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.heads = heads
        self.to_emb = nn.Linear(width, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, optical: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.stem(optical))                       # [B, C, h, w]
        b, c, h, w = x.shape
        tok = x.flatten(2).transpose(1, 2)                   # [B, hw, C]
        y = self.norm(tok)
        q, k, v = self.qkv(y).chunk(3, dim=-1)
        hd = c // self.heads
        q = q.reshape(b, h * w, self.heads, hd).transpose(1, 2)
        k = k.reshape(b, h * w, self.heads, hd).transpose(1, 2)
        v = v.reshape(b, h * w, self.heads, hd).transpose(1, 2)
        att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd), dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(b, h * w, c)
        tok = tok + self.out(y)
        z = F.normalize(self.to_emb(tok), dim=-1)            # [B, hw, D]
        t = F.normalize(text_emb, dim=-1)                    # [K, D]
        logits = self.logit_scale.exp() * torch.matmul(z, t.transpose(0, 1))   # [B, hw, K]
        logits = logits.transpose(1, 2).reshape(b, -1, h, w)                   # [B, K, h, w]
        return F.interpolate(logits, size=optical.shape[-2:], mode="bilinear", align_corners=False)


def make_model(seed: int = 0) -> ToyImageGraph:
    torch.manual_seed(seed)
    return ToyImageGraph().eval()


def example_inputs(b: int = 2, k: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"optical": torch.randn(b, 3, TILE, TILE, generator=g),
            "text_emb": torch.randn(k, EMBED_DIM, generator=g)}


DYNAMIC_AXES = {"optical": {0: "B"}, "text_emb": {0: "K"}, "logits": {0: "B", 1: "K"}}
DIM_RANGES = {"B": (1, 8), "K": (1, 64)}


_CACHE: dict[str, object] = {}


def exported_toy():
    """Export the toy model once per test process (dynamo, ~5 s); returns (ExportResult, model)."""
    if "fp32" not in _CACHE:
        import atexit
        import shutil
        import tempfile
        from pathlib import Path

        from rsvl_export.onnx_export import export_onnx

        root = Path(tempfile.mkdtemp(prefix="rsvl-toy-export-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)  # one per test process, not left in /tmp
        model = make_model()
        res = export_onnx(model, example_inputs(b=2, k=3), ["logits"], DYNAMIC_AXES, root / "image.onnx",
                          opset=18, dim_ranges=DIM_RANGES,
                          metadata={"rsvl_model": "toy", "rsvl_task": "semantic",
                                    "classes": ["water", "building", "road"]})
        _CACHE["fp32"] = (res, model)
    return _CACHE["fp32"]


def exported_toy_fp16():
    """The FP16 variant of :func:`exported_toy` (converted once); returns (FP16Result, ExportResult, model)."""
    if "fp16" not in _CACHE:
        from pathlib import Path

        from rsvl_export.fp16 import convert_fp16_detailed

        res, model = exported_toy()
        dst = Path(res.path).with_name("image.fp16.onnx")
        _CACHE["fp16"] = (convert_fp16_detailed(res.path, dst), res, model)
    return _CACHE["fp16"]
