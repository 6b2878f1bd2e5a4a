"""Export-time query chunking of CADFormer's pixel self-attention
(``rsvl_export/pixel_attention_export.py``): the chunked attention is the same function as SDPA,
the exported graph never holds more than ``chunk`` query rows of scores, ONNX Runtime matches
eager, and the model is unchanged after the export."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from torch import nn
import torch.nn.functional as F

from rsvl_export.onnx_export import export_onnx
from rsvl_export.pixel_attention_export import chunked_attend, chunked_pixel_attention
from rsvl_train.models.cadformer_decoder import PixelSelfAttention, TextFusion

DIM, HEADS, TEXT_DIM = 16, 2, 8


@pytest.mark.parametrize("n,chunk", [(37, 8), (64, 16), (5, 8)])
def test_chunked_attend_is_sdpa(n: int, chunk: int) -> None:
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(2, HEADS, n, 4, generator=g) for _ in range(3))
    got = chunked_attend(q, k, v, chunk)
    np.testing.assert_allclose(got.numpy(), F.scaled_dot_product_attention(q, k, v).numpy(), atol=2e-6)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        chunked_attend(q, k, v, 0)


class _Fusion(nn.Module):
    """A decoder fusion layer with pixel self-attention, as the export sees it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fusion = TextFusion(DIM, TEXT_DIM, HEADS, self_attention=True)

    def forward(self, x: torch.Tensor, words: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.fusion(x, words, bias)


def _score_shapes(model: onnx.ModelProto) -> list[list[int]]:
    """Static shapes of every Softmax output of the graph (after shape inference)."""
    shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
              for vi in model.graph.value_info}
    return [shapes[n.output[0]] for n in model.graph.node if n.op_type == "Softmax"]


def test_export_chunks_the_pixel_attention(tmp_path) -> None:
    module = _Fusion().eval()
    h = w = 8  # N = 64 pixels, chunks of 16 query rows
    inputs = {"x": torch.randn(2, DIM, h, w), "words": torch.randn(2, 5, TEXT_DIM), "bias": torch.zeros(2, 1, 1, 5)}
    with torch.no_grad():
        ref = module(**inputs).numpy()
    res = export_onnx(module, inputs, ["out"], {"x": {0: "batch"}, "words": {0: "batch"}, "bias": {0: "batch"},
                                                 "out": {0: "batch"}}, tmp_path / "fusion.onnx", attention_chunk=16)
    assert res.chunked_attention == ["fusion.self_attn"]
    assert "attend" not in module.fusion.self_attn.__dict__  # the model's own method is back

    model = onnx.load(res.path)
    pixel_scores = [s for s in _score_shapes(model) if s[-1] == h * w]
    assert len(pixel_scores) == 4  # 64 queries in 4 chunks, each over all 64 keys
    assert all(s[-2] == 16 for s in pixel_scores), pixel_scores

    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_unchunked_export_holds_full_scores(tmp_path) -> None:
    """The control: without chunking (chunk >= N) the graph holds the N x N scores."""
    module = _Fusion().eval()
    inputs = {"x": torch.randn(2, DIM, 8, 8), "words": torch.randn(2, 5, TEXT_DIM), "bias": torch.zeros(2, 1, 1, 5)}
    res = export_onnx(module, inputs, ["out"], {"x": {0: "batch"}, "words": {0: "batch"}, "bias": {0: "batch"},
                                                 "out": {0: "batch"}}, tmp_path / "fusion.onnx", attention_chunk=64)
    pixel_scores = [s for s in _score_shapes(onnx.load(res.path)) if s[-1] == 64]
    assert [s[-2] for s in pixel_scores] == [64]


def test_context_restores_on_error() -> None:
    m = PixelSelfAttention(DIM, HEADS)
    with pytest.raises(RuntimeError, match="boom"):
        with chunked_pixel_attention(m, 4) as paths:
            assert paths == [""] and "attend" in m.__dict__
            raise RuntimeError("boom")
    assert "attend" not in m.__dict__
    with chunked_pixel_attention(m, 4, enabled=False) as paths:
        assert paths == [] and "attend" not in m.__dict__
