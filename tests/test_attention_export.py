"""Export-time SDPA form of open_clip's attention (``rsvl_export/attention_export.py``): the swapped
module equals ``nn.MultiheadAttention``; tiny open_clip ViT / CLIP text towers (the real rsvl
wrappers ``ClipViTPyramid`` / ``ClipTextEncoder`` on a tiny open_clip config) exported with it get
one fused ``MultiHeadAttention``/``Attention`` per block from onnxscript's ORT rules and keep
parity with eager; the model is unchanged after the export."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("open_clip")

from torch import nn

from rsvl_export.attention_export import SDPAMultiheadAttention, sdpa_attention
from rsvl_export.onnx_export import export_onnx
from rsvl_export.ort_optimize import fuse
from rsvl_train.models.fusion import MASK_NEG

WIDTH, HEADS = 32, 2

#: a tiny open_clip architecture config (the layout of open_clip's model_configs/*.json)
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 4, "width": WIDTH, "head_width": WIDTH // HEADS,
                            "patch_size": 8},
             "text_cfg": {"context_length": 12, "vocab_size": 50, "width": WIDTH, "heads": HEADS, "layers": 2}}


def _mha(batch_first: bool, seed: int = 0) -> nn.MultiheadAttention:
    torch.manual_seed(seed)
    m = nn.MultiheadAttention(WIDTH, HEADS, batch_first=batch_first).eval()
    with torch.no_grad():  # non-zero biases, so a wrong bias slice shows
        m.in_proj_bias.normal_()
        m.out_proj.bias.normal_()
    return m


def _masks(kind: str, b: int, s: int) -> dict[str, torch.Tensor]:
    causal = torch.full((s, s), MASK_NEG).triu(1)
    lengths = torch.tensor([s, s - 3, 2])[:b]
    pad = torch.arange(s)[None, :] >= lengths[:, None]  # [B, S] True = padding
    if kind == "none":
        return {}
    if kind == "causal-2d":  # open_clip's TextTransformer
        return {"attn_mask": causal}
    if kind == "causal-is_causal":
        return {"attn_mask": causal, "is_causal": True}
    if kind == "bool-2d":
        return {"attn_mask": torch.ones(s, s, dtype=torch.bool).triu(1)}
    if kind == "bias-3d":  # rsvl's ClipTextEncoder: causal + key padding, one [S, S] per (batch, head)
        bias = causal[None] + pad[:, None, :].float() * MASK_NEG
        return {"attn_mask": bias[:, None].expand(b, HEADS, s, s).reshape(b * HEADS, s, s)}
    if kind == "key-padding":
        return {"key_padding_mask": pad}
    raise AssertionError(kind)


# --------------------------------------------------------------------------- the module itself
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", ["none", "causal-2d", "causal-is_causal", "bool-2d", "bias-3d", "key-padding"])
def test_sdpa_module_equals_nn_multihead_attention(batch_first: bool, mask: str) -> None:
    mha = _mha(batch_first)
    sdpa = SDPAMultiheadAttention(mha).eval()
    b, s = 3, 7
    x = torch.randn(b, s, WIDTH)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()
    kw = _masks(mask, b, s)
    with torch.no_grad():
        ref, _ = mha(x, x, x, need_weights=False, **kw)
        got, weights = sdpa(x, x, x, need_weights=False, **kw)
    assert weights is None and got.shape == ref.shape == x.shape
    assert float((got - ref).abs().max()) < 1e-5
    if mask != "none":  # the mask matters: without it the output differs
        with torch.no_grad():
            free, _ = mha(x, x, x, need_weights=False)
        assert float((free - ref).abs().max()) > 1e-2


def test_sdpa_module_equals_nn_multihead_attention_for_cross_attention() -> None:
    mha = _mha(True)
    sdpa = SDPAMultiheadAttention(mha).eval()
    q, kv = torch.randn(2, 5, WIDTH), torch.randn(2, 9, WIDTH)
    with torch.no_grad():
        ref, _ = mha(q, kv, kv, need_weights=False)
        got, _ = sdpa(q, kv, kv, need_weights=False)
    assert got.shape == (2, 5, WIDTH) and float((got - ref).abs().max()) < 1e-5


def test_sdpa_module_shares_the_parameters_and_refuses_what_it_cannot_do() -> None:
    mha = _mha(True)
    sdpa = SDPAMultiheadAttention(mha)
    assert sdpa.in_proj_weight is mha.in_proj_weight and sdpa.out_proj is mha.out_proj
    assert sdpa.state_dict().keys() == mha.state_dict().keys()
    x = torch.randn(2, 4, WIDTH)
    with pytest.raises(ValueError, match="need_weights=True"):
        sdpa(x, x, x)
    with pytest.raises(ValueError, match="is_causal=True needs attn_mask"):
        sdpa(x, x, x, need_weights=False, is_causal=True)
    with pytest.raises(ValueError, match="add_bias_kv=True"):
        SDPAMultiheadAttention(nn.MultiheadAttention(WIDTH, HEADS, add_bias_kv=True))


# --------------------------------------------------------------------------- the swap
@pytest.fixture()
def tiny_clip(monkeypatch):
    """rsvl's open_clip wrappers built on :data:`TINY_CLIP` instead of ViT-B-16."""
    from rsvl_train.models import backbones

    monkeypatch.setattr(backbones, "open_clip_config", lambda name: TINY_CLIP)
    return backbones


class _Vit(nn.Module):
    """``ClipViTPyramid`` -> its last map (4 open_clip blocks)."""

    def __init__(self) -> None:
        super().__init__()
        from rsvl_train.models.backbones import ClipViTPyramid

        torch.manual_seed(0)
        self.backbone = ClipViTPyramid(image_size=32, clip_model="tiny", taps=(1, 2, 3, 4))

    def forward(self, optical: torch.Tensor) -> torch.Tensor:
        return self.backbone(optical)[-1]


def _text_encoder() -> nn.Module:
    from rsvl_train.models.text_encoders import ClipTextEncoder

    torch.manual_seed(0)
    return ClipTextEncoder(n_ctx=2, clip_model="tiny", freeze=True).eval()


def _tokens(k: int, length: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (k, length), generator=g)
    mask = torch.ones(k, length, dtype=torch.long)
    for i in range(k):  # SOT .. EOT then padding, as the tokenizer writes them
        n = length - (i % 4)
        ids[i, n - 1] = 49
        ids[i, n:] = 0
        mask[i, n:] = 0
    return ids, mask


def _attn_types(model: nn.Module) -> list[type]:
    from open_clip.transformer import ResidualAttentionBlock

    return [type(m.attn) for m in model.modules() if isinstance(m, ResidualAttentionBlock)]


def test_swap_is_undone_on_exit_and_on_error(tiny_clip) -> None:
    model = _Vit().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    originals = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    assert len(originals) == 4
    with sdpa_attention(model) as report:
        assert report.swapped == [f"backbone.vit.transformer.resblocks.{i}.attn" for i in range(4)]
        assert _attn_types(model) == [SDPAMultiheadAttention] * 4
        assert model.state_dict().keys() == before.keys()  # same names, so the same initializers
    assert [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)] == originals
    with pytest.raises(RuntimeError, match="boom"), sdpa_attention(model):
        raise RuntimeError("boom")
    assert _attn_types(model) == [nn.MultiheadAttention] * 4
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    with sdpa_attention(model, enabled=False) as report:
        assert len(report) == 0 and _attn_types(model) == [nn.MultiheadAttention] * 4


def test_attention_sdpa_cannot_express_is_left_and_reported(tiny_clip) -> None:
    model = _Vit().eval()
    blk = model.backbone.vit.transformer.resblocks[1]
    blk.attn = nn.MultiheadAttention(WIDTH, HEADS, add_bias_kv=True, batch_first=True)
    with sdpa_attention(model) as report:
        assert len(report) == 3
        assert report.skipped == {"backbone.vit.transformer.resblocks.1.attn": "add_bias_kv=True"}
        assert isinstance(blk.attn, nn.MultiheadAttention)


# --------------------------------------------------------------------------- export + ORT fusions
def _session(path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _export_and_fuse(module, inputs, axes, tmp_path, name, **kw):
    res = export_onnx(module, inputs, ["out"], axes, tmp_path / f"{name}.onnx", dim_ranges={"B": (1, 8), "K": (1, 16)},
                      **kw)
    rep = fuse(res.path, tmp_path / f"{name}.fused.onnx")
    return res, rep


def _attention_nodes(rep) -> int:
    return rep["fused_ops"].get("MultiHeadAttention", 0) + rep["fused_ops"].get("Attention", 0)


def test_tiny_open_clip_vit_fuses_one_attention_per_block_and_matches_eager(tiny_clip, tmp_path) -> None:
    model = _Vit().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=g)
    res, rep = _export_and_fuse(model, {"optical": x}, {"optical": {0: "B"}}, tmp_path, "vit")
    assert len(res.sdpa_attention) == 4 and res.example_max_abs["out"] < 1e-4
    assert _attention_nodes(rep) == 4, rep
    assert rep["rules"].get("sdpa") == 4 and rep["fused_ops"].get("SkipLayerNormalization", 0) >= 4
    assert _attn_types(model) == [nn.MultiheadAttention] * 4  # the model is back as it was
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    sess = _session(tmp_path / "vit.fused.onnx")
    for b in (1, 3):  # another batch size than the export example
        xb = torch.randn(b, 3, 32, 32, generator=g)
        with torch.no_grad():
            ref = model(xb).numpy()
        got = sess.run(None, {"optical": xb.numpy()})[0]
        assert got.shape == ref.shape and float(np.abs(got - ref).max()) < 1e-4
    # the FP16 variant (what TensorRT builds from) converts and stays close to eager
    from rsvl_export.fp16 import convert_fp16

    convert_fp16(res.path, tmp_path / "vit.fp16.onnx")
    with torch.no_grad():
        ref = model(x).numpy().ravel()
    got = _session(tmp_path / "vit.fp16.onnx").run(None, {"optical": x.numpy()})[0].ravel()
    assert float(ref @ got / np.linalg.norm(ref) / np.linalg.norm(got)) > 0.999


def test_tiny_clip_text_tower_with_causal_and_padding_mask_fuses_and_matches_eager(tiny_clip, tmp_path) -> None:
    enc = _text_encoder()
    ids, mask = _tokens(3)
    res, rep = _export_and_fuse(enc, {"input_ids": ids, "attention_mask": mask},
                                {"input_ids": {0: "K"}, "attention_mask": {0: "K"}}, tmp_path, "text")
    assert len(res.sdpa_attention) == 2 and res.example_max_abs["out"] < 1e-4
    assert _attention_nodes(rep) == 2, rep
    assert _attn_types(enc) == [nn.MultiheadAttention] * 2
    sess = _session(tmp_path / "text.fused.onnx")
    for k in (2, 5):
        ids_k, mask_k = _tokens(k, seed=k)
        with torch.no_grad():
            ref = enc(ids_k, mask_k).numpy()
        got = sess.run(None, {"input_ids": ids_k.numpy(), "attention_mask": mask_k.numpy()})[0]
        assert got.shape == ref.shape and float(np.abs(got - ref).max()) < 1e-4


def test_without_the_sdpa_form_the_rules_fuse_no_vit_attention(tiny_clip, tmp_path) -> None:
    """Why the swap exists: nn.MultiheadAttention's sequence-first decomposition is not matched."""
    model = _Vit().eval()
    x = torch.randn(2, 3, 32, 32)
    res, rep = _export_and_fuse(model, {"optical": x}, {"optical": {0: "B"}}, tmp_path, "plain", sdpa_attention=False)
    assert res.sdpa_attention == [] and _attention_nodes(rep) == 0, rep
