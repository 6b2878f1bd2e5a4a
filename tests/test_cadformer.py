"""CADFormer: shapes, alignment masking (FP32 / FP16), rotated convolution, tokenizer, export."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rsvl_train
from rsvl_train.models.cadformer_align import MASK_FILL, SMGA, additive_mask
from rsvl_train.models.rotated_conv import (
    AdaptiveRotatedConv2d,
    RotatedConv3x3,
    rotation_mixing_matrix,
)

TEXTS = ["the red car on the left", "a large white storage tank near the river bank"]
LONG = ("the second small white airplane parked at the far end of the apron next to the long grey "
        "terminal building in the upper right corner of the image")


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return rsvl_train.create_model("cadformer-tiny").eval()


@pytest.fixture(scope="module")
def tiny_text(tiny):
    ids, mask = tiny.tokenize(TEXTS)
    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        words, sentence = tiny.encode_text(ids, mask)
    return ids, mask, words, sentence


def _perturb_near_zero_inits(model: torch.nn.Module, std: float = 0.05) -> None:
    """Give the routing heads and VGLA gates non-trivial weights (they start near zero)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (".route." in name or "vgla.gate." in name) and p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


# ---- registry and shapes ---------------------------------------------------------------------

def test_registry_configs():
    assert {"cadformer", "cadformer-tiny"} <= set(rsvl_train.list_models())
    full, tiny_cfg = rsvl_train.get_model_config("cadformer"), rsvl_train.get_model_config("cadformer-tiny")
    for cfg in (full, tiny_cfg):
        assert cfg["architecture"] == "cadformer" and cfg["task"] == "referring"
        assert cfg["text"]["max_length"] == 64 and cfg["modes"] == ["optical"]
        assert cfg["preprocess"]["optical"]["mean"] == [0.485, 0.456, 0.406]
    assert full["tile_size"] == 480 and tiny_cfg["tile_size"] == 256
    assert full["image_encoder"]["depths"] == [2, 2, 18, 2] and full["image_encoder"]["embed_dim"] == 128
    assert full["text"]["encoder"] == "bert-base" and tiny_cfg["text"]["encoder"] == "minilm"


def test_tiny_forward_shapes(tiny, tiny_text):
    ids, mask, words, sentence = tiny_text
    assert ids.shape == (2, 64) and ids.dtype == torch.int64
    assert words.shape == (2, 64, 128) and sentence.shape == (2, 128)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        out = tiny(x, ids, mask)["logits"]
        out2 = tiny.forward_image(x, words, sentence, mask)["logits"]
    assert out.shape == (2, 2, 256, 256) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, out2, rtol=0, atol=1e-6)


def test_sentence_is_masked_mean(tiny_text):
    _, mask, words, sentence = tiny_text
    m = mask.float().unsqueeze(-1)
    torch.testing.assert_close(sentence, (words * m).sum(1) / m.sum(1), rtol=1e-5, atol=1e-6)


def test_other_sizes_no_hard_coded_resolution():
    model = rsvl_train.create_model("cadformer-tiny", tile_size=192,
                                    **{"image_encoder.dynamic_img_size": True}).eval()
    ids, mask = (torch.from_numpy(a) for a in model.tokenize(TEXTS))
    with torch.no_grad():
        for h, w in ((192, 192), (160, 224)):
            out = model(torch.randn(2, 3, h, w), ids, mask)["logits"]
            assert out.shape == (2, 2, h, w)
            assert torch.isfinite(out).all()


def test_frozen_minilm_and_training_step(tiny, tiny_text):
    ids, mask, _, _ = tiny_text
    model = copy.deepcopy(tiny).train()
    assert not model.text.bert.training, "a frozen text encoder stays in eval mode"
    assert all(not p.requires_grad for p in model.text.bert.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 1e6 < trainable < 10e6
    target = (torch.rand(2, 256, 256) > 0.7).long()
    logits = model(torch.randn(2, 3, 256, 256), ids, mask)["logits"]
    F.cross_entropy(logits, target).backward()
    route = model.decoder.steps[0].arc.route[-1].weight.grad
    assert route is not None and route.abs().sum() > 0, "the rotation angle must receive gradient"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---- masking: padded words are ignored, FP16 stays finite -----------------------------------

def test_mask_fill_is_finite_in_fp16():
    assert MASK_FILL == -1e4
    bias = additive_mask(torch.tensor([[1, 1, 0]]), torch.float16)
    assert bias.dtype == torch.float16 and torch.isfinite(bias).all()
    assert bias.flatten().tolist() == [0.0, 0.0, -1e4]


def test_smga_block_fp16_with_padding():
    torch.manual_seed(0)
    blk = SMGA(32, 64).eval()
    _perturb_near_zero_inits(blk, std=0.2)
    x, w = torch.randn(2, 49, 32), torch.randn(2, 12, 64) * 3
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, 5:] = 0
    mask[1, 9:] = 0
    with torch.no_grad():
        xf, wf = blk(x, w, additive_mask(mask), mask)
        w_pad = w.clone()
        w_pad[mask == 0] = 1e3  # garbage in padded slots must not leak
        xf2, wf2 = blk(x, w_pad, additive_mask(mask), mask)
        bh = copy.deepcopy(blk).half()
        xh, wh = bh(x.half(), w.half(), additive_mask(mask, torch.float16), mask)
    torch.testing.assert_close(xf2, xf, rtol=0, atol=1e-5)
    torch.testing.assert_close(wf2[mask == 1], wf[mask == 1], rtol=0, atol=1e-5)
    assert torch.isfinite(xh).all() and torch.isfinite(wh).all()
    assert (xh.float() - xf).abs().max() < 0.05 * xf.abs().max()


def test_padded_words_do_not_change_logits(tiny, tiny_text):
    _, mask, words, sentence = tiny_text
    model = copy.deepcopy(tiny)
    _perturb_near_zero_inits(model)
    x = torch.randn(2, 3, 256, 256)
    garbage = words.clone()
    garbage[mask == 0] = 50.0
    with torch.no_grad():
        ref = model.forward_image(x, words, sentence, mask)["logits"]
        alt = model.forward_image(x, garbage, sentence, mask)["logits"]
    torch.testing.assert_close(alt, ref, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_tiny_forward_image_fp16_with_padding(tiny, tiny_text):
    """The whole image path under .half() (FP16 on CPU is slow: one padded sample)."""
    _, mask, words, sentence = tiny_text
    model = copy.deepcopy(tiny)
    _perturb_near_zero_inits(model)
    x = torch.randn(1, 3, 256, 256)
    garbage = words[1:].clone()
    garbage[mask[1:] == 0] = 50.0
    with torch.no_grad():
        ref = model.forward_image(x, words[1:], sentence[1:], mask[1:])["logits"]
        half = model.half().forward_image(x.half(), garbage.half(), sentence[1:].half(), mask[1:])["logits"]
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    assert (half.float() - ref).abs().max() < 0.02 * ref.abs().max() + 1e-3


# ---- adaptive rotated convolution -----------------------------------------------------------

@pytest.mark.parametrize("k", [0, 1, 2, 3, -1])
def test_rotated_conv_matches_rot90(k):
    torch.manual_seed(0)
    conv = RotatedConv3x3(5, 7, bias=True)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 5, 9, 11)
    with torch.no_grad():
        y = conv(x, torch.full((2,), k * math.pi / 2))
        ref = F.conv2d(x, torch.rot90(conv.weight[0], k, dims=(-2, -1)), conv.bias, padding=1)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-5)


def test_rotation_matrix_properties():
    m = rotation_mixing_matrix(torch.tensor([0.0, math.pi / 2, 0.3]))
    torch.testing.assert_close(m[0], torch.eye(9))
    assert torch.equal(m[1].sum(0), torch.ones(9)) and torch.equal(m[1].sum(1), torch.ones(9))  # a permutation
    assert (m[2] >= 0).all() and torch.allclose(m[2, 4], torch.eye(9)[4])  # centre tap stays put
    assert m[2].sum(1).max() <= 1.0 + 1e-6  # bilinear weights: at most a partition of unity


def test_rotated_conv_per_sample_angles_and_grouped_equivalence():
    torch.manual_seed(0)
    conv = RotatedConv3x3(4, 6, kernel_number=2)
    x = torch.randn(3, 4, 8, 8)
    theta = torch.tensor([0.0, math.pi / 2, 0.7])
    mix = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7]])
    with torch.no_grad():
        y = conv(x, theta, mix)
        ref0 = F.conv2d(x[:1], conv.weight[0], padding=1)
        ref1 = F.conv2d(x[1:2], torch.rot90(conv.weight[1], 1, dims=(-2, -1)), padding=1)
        conv.impl = "grouped"
        y_grouped = conv(x, theta, mix)
    torch.testing.assert_close(y[:1], ref0, rtol=0, atol=1e-5)
    torch.testing.assert_close(y[1:2], ref1, rtol=0, atol=1e-5)
    torch.testing.assert_close(y_grouped, y, rtol=0, atol=1e-5)


def test_adaptive_rotated_conv_routes_from_condition():
    torch.manual_seed(0)
    arc = AdaptiveRotatedConv2d(8, 8, cond_dim=16, kernel_number=3)
    x, cond = torch.randn(2, 8, 10, 10), torch.randn(2, 16)
    theta, mix = arc.routing(x, cond)
    assert theta.shape == (2,) and theta.abs().max() < math.radians(5)  # starts near a plain conv
    assert mix.shape == (2, 3) and torch.allclose(mix.sum(-1), torch.ones(2))
    arc(x, cond).square().mean().backward()
    assert arc.route[-1].weight.grad.abs().sum() > 0


# ---- tokenizer ------------------------------------------------------------------------------

def test_tokenize_matches_transformers_bert_tokenizer(tiny):
    from tokenizers import Tokenizer
    from transformers import BertTokenizer

    from rsvl_train.pretrained import minilm_path

    texts = TEXTS + [LONG, "Straße near the Harbour, 2 ships!", "x"]
    ids, mask = tiny.tokenize(texts)
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == (5, 64) == mask.shape
    ref = BertTokenizer.from_pretrained(str(minilm_path()))(
        texts, padding="max_length", truncation=True, max_length=64, return_tensors="np")
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"])
    n = int(mask[2].sum())  # the 26-word expression fits in 64 word pieces (RRSIS-HR: up to 41 words)
    assert 20 < n < 64 and ids[2, n - 1] == 102
    ids20, mask20 = tiny.tokenize([LONG], max_length=20)
    assert ids20[0, -1] == 102 and mask20[0].all()  # truncated sentence still ends with [SEP]
    tk = Tokenizer.from_str(tiny.tokenizer_json())
    np.testing.assert_array_equal(np.asarray([e.ids for e in tk.encode_batch(texts)]), ids)


# ---- checkpoint ----------------------------------------------------------------------------

def test_checkpoint_roundtrip(tiny, tiny_text, tmp_path, caplog):
    import warnings

    from rsvl_train.checkpoint import CheckpointError, save_checkpoint
    from rsvl_train.pretrained import PretrainedWeightsError

    _, mask, words, sentence = tiny_text
    model = copy.deepcopy(tiny)
    _perturb_near_zero_inits(model)
    path = save_checkpoint(model, tmp_path / "ck")
    caplog.clear()
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="rsvl_train.models.cadformer"):
        warnings.simplefilter("error")  # checkpoint= is the current name: no DeprecationWarning
        loaded = rsvl_train.create_model("cadformer-tiny", checkpoint=path).eval()
    assert not any("random" in r.getMessage() for r in caplog.records)  # the checkpoint follows
    with pytest.warns(DeprecationWarning, match="checkpoint=PATH"):
        old = rsvl_train.create_model("cadformer-tiny", pretrained=str(path)).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        a = model.forward_image(x, words[:1], sentence[:1], mask[:1])["logits"]
        b = loaded.forward_image(x, words[:1], sentence[:1], mask[:1])["logits"]
        c = old.forward_image(x, words[:1], sentence[:1], mask[:1])["logits"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="do not exist"):
        rsvl_train.create_model("cadformer-tiny", checkpoint=tmp_path / "missing.safetensors")
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        rsvl_train.create_model("cadformer-tiny", pretrained=str(tmp_path / "missing.safetensors"))


# ---- the full model ------------------------------------------------------------------------

def test_full_cadformer_480_forward_warns_random(caplog):
    with caplog.at_level(logging.WARNING, logger="rsvl_train.models.cadformer"):
        model = rsvl_train.create_model("cadformer").eval()
    assert any("bert-base" in r.getMessage() and "random" in r.getMessage() for r in caplog.records)
    assert model.image.dims == [128, 256, 512, 1024]
    n_params = sum(p.numel() for p in model.parameters())
    assert 200e6 < n_params < 260e6  # Swin-B 87M + BERT-base 109M + alignment + decoder
    ids, mask = (torch.from_numpy(a) for a in model.tokenize(TEXTS[:1]))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 480, 480), ids, mask)["logits"]
    assert out.shape == (1, 2, 480, 480) and torch.isfinite(out).all()


# ---- export -------------------------------------------------------------------------------

class _ImageGraph(torch.nn.Module):
    """The referring image graph with the ONNX input names of docs/internals.md."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, optical, word_feats, sentence_emb, attention_mask):
        return self.model.forward_image(optical, word_feats, sentence_emb, attention_mask)["logits"]


@pytest.mark.slow
def test_tiny_image_graph_dynamo_export_matches_onnxruntime(tiny, tiny_text, tmp_path):
    import onnx
    import onnxruntime as ort

    _, mask, words, sentence = tiny_text
    model = copy.deepcopy(tiny)
    _perturb_near_zero_inits(model)  # exercise non-zero rotation angles and word updates
    graph = _ImageGraph(model).eval()
    x = torch.randn(2, 3, 256, 256)
    batch = torch.export.Dim("B", min=1, max=64)
    path = tmp_path / "image.onnx"
    torch.onnx.export(
        graph, (x, words, sentence, mask), str(path), dynamo=True, external_data=False,
        input_names=["optical", "word_feats", "sentence_emb", "attention_mask"], output_names=["logits"],
        dynamic_shapes={"optical": {0: batch}, "word_feats": {0: batch}, "sentence_emb": {0: batch},
                        "attention_mask": {0: batch}})
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"GridSample", "Einsum", "Loop", "If"}, ops
    for node in proto.graph.node:
        if node.op_type == "Conv":
            assert all(a.i == 1 for a in node.attribute if a.name == "group"), "no grouped conv"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["optical", "word_feats", "sentence_emb", "attention_mask"]
    assert sess.get_outputs()[0].shape == ["B", 2, 256, 256]
    for b in (2, 3):
        idx = torch.arange(b) % 2
        xb = torch.randn(b, 3, 256, 256)
        with torch.no_grad():
            ref = graph(xb, words[idx], sentence[idx], mask[idx]).numpy()
        out = sess.run(None, {"optical": xb.numpy(), "word_feats": words[idx].numpy(),
                              "sentence_emb": sentence[idx].numpy(), "attention_mask": mask[idx].numpy()})[0]
        assert out.shape == (b, 2, 256, 256)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


# ---- TCMD self-attention (paper config) ---------------------------------------------------------

def test_tcmd_self_attention_at_every_stride():
    """decoder.self_attention + text_fusion [s16, s8, s4]: each step's layer is self-attn -> cross-attn -> MLP."""
    from rsvl_train.models.cadformer_decoder import PixelSelfAttention, TextEnhancedDecoder

    torch.manual_seed(0)
    kw = {"in_dims": [8, 16, 24, 32], "text_dim": 16, "dim": 16, "num_heads": 2}
    dec = TextEnhancedDecoder(**kw, text_fusion=(True, True, True), self_attention=True).eval()
    assert all(isinstance(s.fusion.self_attn, PixelSelfAttention) for s in dec.steps)  # strides 16, 8, 4
    plain = TextEnhancedDecoder(**kw)
    assert plain.steps[2].fusion is None and plain.steps[0].fusion.self_attn is None  # tiny default
    feats = [torch.randn(2, c, 32 // 2 ** i, 32 // 2 ** i) for i, c in enumerate(kw["in_dims"])]
    words, sentence = torch.randn(2, 5, 16), torch.randn(2, 16)
    bias = additive_mask(torch.ones(2, 5, dtype=torch.long), torch.float32)
    with torch.no_grad():
        a = dec(feats, words, sentence, bias)
        dec.steps[2].fusion.self_attn.proj.weight.mul_(2.0)  # the stride-4 self-attention is on the path
        b = dec(feats, words, sentence, bias)
    assert a.shape == (2, 2, 32, 32) and not torch.allclose(a, b)
    # the attention itself, by hand: softmax(q k^T / sqrt(d)) v per head
    att = dec.steps[0].fusion.self_attn
    x = torch.randn(1, 6, 16)
    with torch.no_grad():
        q, k, v = att.qkv(x).reshape(1, 6, 3, 2, 8).permute(2, 0, 3, 1, 4)
        ref = att.proj((torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1) @ v).transpose(1, 2).reshape(1, 6, 16))
        torch.testing.assert_close(att(x), ref, atol=1e-5, rtol=1e-5)
