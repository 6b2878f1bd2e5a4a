"""TSMNet: registry, shapes, open-vocabulary head, modalities, weights, export."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsvl_train import create_model, get_model_config, list_models
from rsvl_train.models.tsmnet import TSMNet, modality_dropout

CLASS_NAMES = ["water", "building", "road", "vegetation", "farmland", "bare soil", "other"]
PAPER_CLASSES = ["bare ground", "low vegetation", "trees", "houses", "water", "roads", "others"]
TILE = 128
LIGHT = {"text.pretrained": False, "backbone.imagenet": False}  # random weights: fast builds


def _text(model: TSMNet, names: list[str]) -> torch.Tensor:
    ids, mask = model.tokenize(model.prompts(names))
    return model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask))


def _inputs(b: int = 2, size: int = TILE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=g), torch.randn(b, 1, size, size, generator=g)


@pytest.fixture(scope="module")
def tiny() -> TSMNet:
    torch.manual_seed(0)
    m = create_model("tsmnet-tiny")
    with torch.no_grad():
        m.context_decoder.gamma.fill_(0.1)  # make the context decoder matter in the checks
    return m.eval()


@pytest.fixture(scope="module")
def tiny_text(tiny: TSMNet) -> torch.Tensor:
    with torch.no_grad():
        return _text(tiny, CLASS_NAMES)


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize("name", ["tsmnet", "tsmnet-tiny"])
def test_config_contract(name: str) -> None:
    from rsvl_runtime.normalization import normalize_optical, normalize_sar

    assert name in list_models()
    cfg = get_model_config(name)
    assert cfg["architecture"] == "tsmnet" and cfg["task"] == "semantic" and cfg["head"] == "open"
    assert cfg["modes"] == ["optical+sar", "optical", "sar"] and cfg["tile_size"] == 256
    assert [c["name"] for c in cfg["classes"]] == (PAPER_CLASSES if name == "tsmnet" else CLASS_NAMES)
    assert all(len(c["color"]) == 3 and c["synonyms"] for c in cfg["classes"])
    t = cfg["text"]
    assert t["encoder"] in ("minilm", "clip") and t["templates"] == ["a satellite image of {}."]
    assert isinstance(t["freeze"], bool) and t["max_length"] > 0 and t["n_ctx"] > 0
    assert isinstance(cfg["description_fusion"], bool)
    opt = normalize_optical(np.full((3, 2, 2), 255, np.uint8), cfg["preprocess"]["optical"])
    np.testing.assert_allclose(
        opt[:, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), rtol=1e-5
    )
    sar = normalize_sar(np.full((1, 2, 2), -12.0, np.float32), cfg["preprocess"]["sar"])
    assert np.all(sar == 0)


# ------------------------------------------------------------ tiny model
def test_tiny_builds_and_counts(tiny: TSMNet) -> None:
    assert isinstance(tiny, TSMNet) and tiny.config["name"] == "tsmnet-tiny"
    total = sum(p.numel() for p in tiny.parameters())
    trainable = sum(p.numel() for p in tiny.parameters() if p.requires_grad)
    # ~22.6M frozen MiniLM + ~9M trainable image side
    assert 25e6 < total < 40e6 and 5e6 < trainable < 12e6
    assert not any(p.requires_grad for p in tiny.text_encoder.bert.parameters())
    assert tiny.text_encoder.ctx.requires_grad and tiny.text_encoder.proj.weight.requires_grad


def test_tiny_forward_shapes(tiny: TSMNet, tiny_text: torch.Tensor) -> None:
    opt, sar = _inputs(2)
    with torch.no_grad():
        out = tiny.forward_image(opt, sar, tiny_text)
    D = tiny.embed_dim
    assert tiny_text.shape == (7, D)
    torch.testing.assert_close(tiny_text.norm(dim=-1), torch.ones(7))
    assert out["logits"].shape == (2, 7, TILE, TILE)
    assert out["score_map"].shape == (2, 7, TILE // 32, TILE // 32)
    assert out["pixel_emb"].shape == (2, D, TILE // 4, TILE // 4)
    assert out["text_emb_img"].shape == (2, 7, D)
    assert out["visual_global"].shape == (2, D)
    assert torch.isfinite(out["logits"]).all()
    assert out["score_map"].abs().max() <= 1.0 + 1e-5  # cosine


def test_open_head_any_vocabulary_size(tiny: TSMNet) -> None:
    opt, sar = _inputs(2)
    names11 = CLASS_NAMES + ["ship", "airport runway", "solar panels", "snow"]
    with torch.no_grad():
        for names in (CLASS_NAMES[:3], names11):
            out = tiny.forward_image(opt, sar, _text(tiny, names))
            assert out["logits"].shape == (2, len(names), TILE, TILE)
            assert out["score_map"].shape[1] == len(names)
    # no parameter depends on K
    assert tiny.head == "open" and tiny.num_classes is None


def test_logits_are_tau_cosine(tiny: TSMNet, tiny_text: torch.Tensor) -> None:
    opt, sar = _inputs(2, seed=3)
    with torch.no_grad():
        out = tiny.forward_image(opt, sar, tiny_text)
    tau = out["logit_scale"]
    assert tau.item() == pytest.approx(1 / 0.07, rel=1e-4)
    pe = F.normalize(out["pixel_emb"], dim=1)
    t = out["text_emb_img"]
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2, 7))
    cos = (t[:, :, :, None, None] * pe[:, None]).sum(dim=2)  # [B, K, h, w]
    ref = F.interpolate(tau * cos, size=(TILE, TILE), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out["logits"], ref, atol=1e-4, rtol=1e-4)
    # the per-image text embeddings really are adapted by the context decoder
    assert not torch.allclose(t[0], t[1])
    assert (t[0] - F.normalize(tiny_text, dim=-1)).abs().max() > 1e-4


def test_single_modality_inputs(tiny: TSMNet, tiny_text: torch.Tensor) -> None:
    opt, sar = _inputs(1, seed=5)
    with torch.no_grad():
        o_only = tiny.forward_image(opt, None, tiny_text)["logits"]
        s_only = tiny.forward_image(None, sar, tiny_text)["logits"]
        both = tiny.forward_image(opt, sar, tiny_text)["logits"]
        o_zero = tiny.forward_image(opt, torch.zeros_like(sar), tiny_text)["logits"]
        s_zero = tiny.forward_image(torch.zeros_like(opt), sar, tiny_text)["logits"]
    assert o_only.shape == s_only.shape == (1, 7, TILE, TILE)
    torch.testing.assert_close(o_only, o_zero)
    torch.testing.assert_close(s_only, s_zero)
    assert not torch.allclose(o_only, both) and not torch.allclose(s_only, both)
    with pytest.raises(ValueError):
        tiny.forward_image(None, None, tiny_text)


def test_modality_dropout_never_both() -> None:
    opt = torch.ones(64, 3, 4, 4)
    sar = torch.ones(64, 1, 4, 4)
    o, s = modality_dropout(opt, sar, 1.0, generator=torch.Generator().manual_seed(0))
    o_kept = o.flatten(1).amax(1) > 0
    s_kept = s.flatten(1).amax(1) > 0
    assert torch.all(o_kept ^ s_kept)  # exactly one modality per sample at p=1
    assert 10 < int(o_kept.sum()) < 54  # both kinds occur
    assert torch.all(opt == 1)  # inputs untouched
    o, s = modality_dropout(opt, sar, 0.0)
    assert torch.equal(o, opt) and torch.equal(s, sar)
    o, s = modality_dropout(opt, sar, 0.3, generator=torch.Generator().manual_seed(1))
    assert torch.all((o.flatten(1).amax(1) > 0) | (s.flatten(1).amax(1) > 0))


def test_lite0_branches_carry_imagenet_weights(tiny: TSMNet) -> None:
    from rsvl_train.pretrained import lite0_weights_path

    src = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    stem = src["_conv_stem.weight"]
    assert stem.shape == (32, 3, 3, 3)
    torch.testing.assert_close(tiny.optical_backbone.body.conv_stem.weight, stem)
    torch.testing.assert_close(tiny.sar_backbone.body.conv_stem.weight, stem.sum(dim=1, keepdim=True))
    # the deepest tensor of the features_only model: last block (blocks.6.0 <-> lukemelas _blocks.15)
    deep = src["_blocks.15._project_conv.weight"]
    assert deep.shape == (320, 1152, 1, 1)
    torch.testing.assert_close(tiny.optical_backbone.body.blocks[6][0].conv_pwl.weight, deep)
    torch.testing.assert_close(tiny.sar_backbone.body.blocks[6][0].conv_pwl.weight, deep)
    torch.testing.assert_close(
        tiny.optical_backbone.body.blocks[6][0].bn3.running_var, src["_blocks.15._bn2.running_var"]
    )


def test_minilm_text_encoder_real_weights(tiny: TSMNet) -> None:
    from safetensors.torch import load_file

    from rsvl_train.models.text_encoders import MiniLMTextEncoder
    from rsvl_train.pretrained import minilm_path

    sd = load_file(str(minilm_path() / "model.safetensors"))
    torch.testing.assert_close(
        tiny.text_encoder.bert.encoder.layer[3].attention.self.query.weight,
        sd["encoder.layer.3.attention.self.query.weight"],
    )
    # without context tokens the pooled features equal plain BERT masked-mean pooling
    enc = MiniLMTextEncoder(n_ctx=0, output_dim=8).eval()
    ids, mask = tiny.tokenize(["a satellite image of water.", "road"])
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        feats = enc.forward_tokens(ids_t, mask_t)
        h = enc.bert(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
        m = mask_t[..., None].float()
        ref = (h * m).sum(1) / m.sum(1)
    torch.testing.assert_close(feats.pooled, enc.proj(ref), atol=1e-5, rtol=1e-5)


def test_tokenizer_methods(tiny: TSMNet) -> None:
    from tokenizers import Tokenizer

    prompts = tiny.prompts(["water", "bare soil"])
    assert prompts == ["a satellite image of water.", "a satellite image of bare soil."]
    ids, _ = tiny.tokenize(prompts)
    assert ids.dtype == np.int64 and ids.shape == (2, tiny.config["text"]["max_length"])
    tk = Tokenizer.from_str(tiny.tokenizer_json())
    np.testing.assert_array_equal(np.array([e.ids for e in tk.encode_batch(prompts)]), ids)
    assert tiny.tokenize(prompts, max_length=40)[0].shape == (2, 40)


def test_training_step_gradients(tiny: TSMNet) -> None:
    opt, sar = _inputs(2, seed=7)
    ids, mask = tiny.tokenize(tiny.prompts(CLASS_NAMES))
    target = torch.randint(0, 7, (2, TILE, TILE))
    tiny.train()
    try:
        tiny.zero_grad()
        o, s = modality_dropout(opt, sar, 0.5)
        out = tiny(o, s, torch.from_numpy(ids), torch.from_numpy(mask))
        loss = F.cross_entropy(out["logits"], target) + F.cross_entropy(
            out["logit_scale"] * out["score_map"],
            F.interpolate(target[:, None].float(), size=out["score_map"].shape[-2:]).long()[:, 0],
        )
        loss.backward()
        assert torch.isfinite(loss)
        assert tiny.text_encoder.ctx.grad is not None and tiny.text_encoder.ctx.grad.abs().sum() > 0
        assert tiny.fuse[0].residual.weight.grad.abs().sum() > 0
        assert tiny.rectify[2].channel_mlp[0].weight.grad.abs().sum() > 0
        # the stem and the first `frozen_blocks` Lite0 groups are frozen (CPU training speed);
        # gradients reach the first trainable group of the SAR branch
        n_frozen = tiny.config["backbone"]["frozen_blocks"]
        assert tiny.sar_backbone.body.conv_stem.weight.grad is None
        first = next(tiny.sar_backbone.body.blocks[n_frozen].parameters())
        assert first.requires_grad and first.grad is not None and first.grad.abs().sum() > 0
        assert all(p.grad is None for p in tiny.text_encoder.bert.parameters())
        assert not tiny.text_encoder.bert.training  # frozen BERT stays in eval mode (no dropout)
    finally:
        tiny.zero_grad(set_to_none=True)
        tiny.eval()


# -------------------------------------------------------- variants
def test_paper_head_score_concat_and_cosine() -> None:
    """paper head: FPN input = [F4, s] (K more channels), logits = tau * cos(pixel_emb, t_k), fixed K."""
    m = create_model("tsmnet-tiny", head="paper", num_classes=7, **LIGHT).eval()
    with torch.no_grad():
        m.context_decoder.gamma.fill_(0.1)
    opt, sar = _inputs(2, size=64)
    with torch.no_grad():
        out = m.forward_image(opt, sar, _text(m, CLASS_NAMES))
    assert out["logits"].shape == (2, 7, 64, 64) and out["pixel_emb"].shape == (2, m.embed_dim, 16, 16)
    c4 = m.optical_backbone.out_channels[3]
    assert m.decoder.lateral[3][0].in_channels == c4 + 7  # the K-channel score map is concatenated
    open_m = create_model("tsmnet-tiny", **LIGHT)
    assert open_m.decoder.lateral[3][0].in_channels == c4 + m.embed_dim + 1  # open: D + 1 whatever K
    assert m.decoder.out.out_channels == m.embed_dim  # pixel embeddings, no 1x1 classifier
    # the output is the cosine score, by hand
    pe, t, tau = out["pixel_emb"], out["text_emb_img"], out["logit_scale"]
    cos = torch.einsum("bkd,bdhw->bkhw", t / t.norm(dim=-1, keepdim=True), pe / pe.norm(dim=1, keepdim=True))
    torch.testing.assert_close(out["logits"], F.interpolate(tau * cos, size=(64, 64), mode="bilinear",
                                                            align_corners=False), atol=1e-4, rtol=1e-4)
    assert (out["logits"] / tau).abs().max() <= 1.0 + 1e-5
    # the score map really feeds the FPN: change the text -> score map -> logits of class 0 change
    with torch.no_grad():
        te = _text(m, CLASS_NAMES)
        te2 = torch.cat([te[:1], te[1:].flip(0)])
        a = m.forward_image(opt, sar, te)["logits"][:, 0]
        b = m.forward_image(opt, sar, te2)["logits"][:, 0]
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="fixed vocabulary"):
        m.forward_image(opt, sar, _text(m, CLASS_NAMES[:3]))
    # num_classes defaults to the number of classes
    assert create_model("tsmnet-tiny", head="paper", **LIGHT).num_classes == 7


@pytest.mark.slow
def test_paper_head_export_fixes_k(tmp_path) -> None:
    """The export wrapper traces a tiny paper-head model with a static K; ORT matches eager."""
    ort = pytest.importorskip("onnxruntime")
    from rsvl_export.wrappers import graph_specs

    m = create_model("tsmnet-tiny", head="paper", **LIGHT).eval()
    text, image = graph_specs(m, tile=32)
    assert image.example_inputs["text_emb"].shape[0] == 7 and "text_emb" not in image.dynamic_axes
    from rsvl_export.onnx_export import export_onnx

    path = tmp_path / "image.onnx"
    res = export_onnx(image.module, image.example_inputs, image.output_names, image.dynamic_axes, path)
    assert res.exporter == "dynamo"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    opt, sar = _inputs(3, size=32, seed=4)
    te = image.example_inputs["text_emb"]
    with torch.no_grad():
        ref = image.module(opt, sar, te).numpy()
    got = sess.run(None, {"optical": opt.numpy(), "sar": sar.numpy(), "text_emb": te.numpy()})[0]
    assert got.shape == (3, 7, 32, 32)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_six_level_fusion() -> None:
    """fusion.levels = 6: the 4 pyramid maps + global + local, each rectified and fused."""
    from rsvl_train.models.fusion import MFFM, MFRM, GlobalFusion

    m = create_model("tsmnet-tiny", **{"fusion.levels": 6, **LIGHT}).eval()
    assert len(m.rectify) == 6 and len(m.fuse) == 6 and all(isinstance(r, MFRM) for r in m.rectify)
    assert isinstance(m.fuse[4], GlobalFusion) and isinstance(m.fuse[5], MFFM)
    assert len(create_model("tsmnet-tiny", **LIGHT).fuse) == 4  # default: off
    opt, sar = _inputs(2, size=64)
    levels = m.fused_features(opt, sar)
    c = m.optical_backbone.out_channels
    assert [tuple(f.shape[1:]) for f in levels] == [
        (c[0], 16, 16), (c[1], 8, 8), (c[2], 4, 4), (c[3], 2, 2), (c[3], 1, 1), (c[3], 2, 2)]
    m.train()
    ids, mask = m.tokenize(m.prompts(CLASS_NAMES))
    out = m(opt, sar, torch.from_numpy(ids), torch.from_numpy(mask))
    (out["logits"].mean() + out["visual_global"].sum()).backward()
    assert m.fuse[4].proj.weight.grad.abs().sum() > 0 and m.rectify[5].spatial[0].weight.grad.abs().sum() > 0
    assert m.global_in.weight.grad.abs().sum() > 0


def test_description_fusion_at_every_level() -> None:
    """description_fusion_levels = all: each image level cross-attends to the description tokens."""
    m = create_model("tsmnet-tiny", description_fusion=True, description_fusion_levels="all",
                     **{"fusion.levels": 6, **LIGHT}).eval()
    assert m.desc_attn is None and len(m.desc_attn_levels) == 6
    with torch.no_grad():
        for block in m.desc_attn_levels:
            block.gamma.fill_(1.0)
    seen: dict[int, float] = {}
    for i, block in enumerate(m.desc_attn_levels):
        block.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, (out - inp[0]).abs().max().item()))
    opt, sar = _inputs(2, size=64)
    ids, mask = m.tokenize(m.prompts(CLASS_NAMES))
    d_ids, d_mask = m.tokenize_descriptions(["a river between fields", "a dense town with roads"])
    assert d_ids.shape == (2, 64) == d_mask.shape  # text.desc_max_length
    args = (torch.from_numpy(ids), torch.from_numpy(mask))
    with torch.no_grad():
        plain = m(opt, sar, *args)
        assert not seen  # no description: the blocks do not run
        out = m(opt, sar, *args, torch.from_numpy(d_ids), torch.from_numpy(d_mask))
    assert sorted(seen) == list(range(6)) and min(seen.values()) > 1e-3  # every level changed
    torch.testing.assert_close(out["visual_global"], plain["visual_global"])  # pooled before fusion
    assert not torch.allclose(out["logits"], plain["logits"])


def test_description_fusion_outputs() -> None:
    m = create_model("tsmnet-tiny", description_fusion=True, **LIGHT).eval()
    with torch.no_grad():
        m.desc_attn.gamma.fill_(1.0)
    opt, sar = _inputs(2)
    ids, mask = m.tokenize(m.prompts(CLASS_NAMES))
    d_ids, d_mask = m.tokenize(["a river between fields", "a dense town with roads"], max_length=24)
    args = (torch.from_numpy(ids), torch.from_numpy(mask))
    with torch.no_grad():
        out = m(opt, sar, *args, torch.from_numpy(d_ids), torch.from_numpy(d_mask))
        plain = m(opt, sar, *args)
    for k in ("visual_global", "desc_emb"):
        assert out[k].shape == (2, m.embed_dim)
        torch.testing.assert_close(out[k].norm(dim=-1), torch.ones(2))
    assert "desc_emb" not in plain
    torch.testing.assert_close(out["visual_global"], plain["visual_global"])  # pooled before fusion
    assert not torch.allclose(out["logits"], plain["logits"])  # the description changes the features


def test_paper_scale_random_init_forward(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        m = create_model("tsmnet").eval()
    assert any("RANDOM" in r.getMessage() for r in caplog.records)
    n_vit = sum(p.numel() for p in m.optical_backbone.vit.parameters())
    assert 80e6 < n_vit < 90e6  # a ViT-B/16
    assert m.sar_backbone.vit.conv1.in_channels == 1
    assert m.optical_backbone.vit.positional_embedding.shape == (257, 768)
    assert m.text_encoder.clip.width == 512 and m.embed_dim == 512
    with torch.no_grad():
        te = _text(m, CLASS_NAMES)
        out = m.forward_image(*_inputs(1, size=256), te)
    assert te.shape == (7, 512)
    assert out["logits"].shape == (1, 7, 256, 256)
    assert out["score_map"].shape == (1, 7, 16, 16)  # six-level: the score map of the stride-16 local tokens
    assert len(m.fuse) == 6 and len(m.desc_attn_levels) == 6
    assert torch.isfinite(out["logits"]).all()


def test_checkpoint_and_deprecated_state_dict_pretrained(tiny: TSMNet, tiny_text: torch.Tensor, tmp_path) -> None:
    """``checkpoint=`` loads an rsvl-train checkpoint; ``pretrained=`` with the whole model's state
    dict (the old second meaning) still loads, with a DeprecationWarning."""
    import copy
    import warnings

    from safetensors.torch import save_file

    from rsvl_train.checkpoint import save_checkpoint

    model = copy.deepcopy(tiny).eval()
    with torch.no_grad():
        model.visual_proj.bias.add_(0.5)  # differ from a fresh build
    path = save_checkpoint(model, tmp_path / "ck")
    optical, sar = _inputs(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        loaded = create_model("tsmnet-tiny", checkpoint=path).eval()
    with pytest.warns(DeprecationWarning, match="checkpoint=PATH"):
        old = create_model("tsmnet-tiny", pretrained=str(path)).eval()  # an rsvl checkpoint
    sd_path = tmp_path / "whole.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(sd_path))
    with pytest.warns(DeprecationWarning, match="state dict of the whole model"):
        whole = create_model("tsmnet-tiny", pretrained=str(sd_path)).eval()
    with torch.no_grad():
        ref = model.forward_image(optical, sar, tiny_text)["logits"]
        for m in (loaded, old, whole):
            torch.testing.assert_close(m.forward_image(optical, sar, tiny_text)["logits"], ref, rtol=0, atol=0)


@pytest.mark.slow
def test_clip_checkpoint_loading(tmp_path) -> None:
    """A (small, random) open_clip checkpoint lands in both ViT branches and the text encoder."""
    import open_clip
    from safetensors.torch import save_file

    from rsvl_train.models.text_encoders import ClipTextEncoder

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-S-16", pretrained=None).eval()
    sd = {k: v.contiguous() for k, v in clip.state_dict().items()}
    path = tmp_path / "clip.safetensors"
    save_file(sd, str(path))
    over = {
        "backbone.model": "ViT-S-16",
        "text.clip_model": "ViT-S-16",
        "embed_dim": 384,
        "neck_dim": 32,
        "context_decoder.width": 32,
        "context_decoder.layers": 1,
    }
    m = create_model("tsmnet", pretrained=str(path), **over).eval()
    ov, sv = m.optical_backbone.vit, m.sar_backbone.vit
    torch.testing.assert_close(ov.conv1.weight, sd["visual.conv1.weight"])
    torch.testing.assert_close(sv.conv1.weight, sd["visual.conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(
        ov.transformer.resblocks[11].mlp.c_fc.weight, sd["visual.transformer.resblocks.11.mlp.c_fc.weight"]
    )
    torch.testing.assert_close(ov.positional_embedding[0], sd["visual.positional_embedding"][0])
    assert ov.positional_embedding.shape[0] == 257
    torch.testing.assert_close(m.text_encoder.clip.text_projection, sd["text_projection"])
    # with no context tokens the encoder reproduces open_clip's encode_text exactly
    enc = ClipTextEncoder(n_ctx=0, clip_model="ViT-S-16").eval()
    enc.load_clip_text(sd)
    texts = ["a satellite image of water.", "Bare soil, 2 fields!"]
    from rsvl_train.tokenization import clip_tokenizer, encode_batch

    ids, mask = encode_batch(clip_tokenizer(77), texts)
    with torch.no_grad():
        ours = enc(torch.from_numpy(ids), torch.from_numpy(mask))
        ref = clip.encode_text(open_clip.tokenize(texts))
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_onnx_export_forward_image_parity(tiny: TSMNet, tmp_path) -> None:
    """dynamo export of forward_image with dynamic B and K; ORT matches eager at K=3 and K=20."""
    ort = pytest.importorskip("onnxruntime")
    from torch.export import Dim

    class ImageGraph(torch.nn.Module):
        def __init__(self, m: TSMNet) -> None:
            super().__init__()
            self.m = m

        def forward(self, optical: torch.Tensor, sar: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
            return self.m.forward_image(optical, sar, text_emb)["logits"]

    g = ImageGraph(tiny).eval()
    D = tiny.embed_dim
    path = tmp_path / "image.onnx"
    B, K = Dim("B", min=1, max=64), Dim("K", min=1, max=4096)
    ex = (*_inputs(2), F.normalize(torch.randn(3, D), dim=-1))
    torch.onnx.export(
        g,
        ex,
        str(path),
        dynamo=True,
        external_data=False,
        input_names=["optical", "sar", "text_emb"],
        output_names=["logits"],
        dynamic_shapes={"optical": {0: B}, "sar": {0: B}, "text_emb": {0: K}},
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, k in ((2, 3), (1, 20), (3, 20)):
        opt, sar = _inputs(b, seed=b + k)
        te = F.normalize(torch.randn(k, D), dim=-1)
        with torch.no_grad():
            ref = g(opt, sar, te).numpy()
        got = sess.run(["logits"], {"optical": opt.numpy(), "sar": sar.numpy(), "text_emb": te.numpy()})[0]
        assert got.shape == (b, k, TILE, TILE)
        assert np.abs(got - ref).max() < 1e-3
        assert (got.argmax(1) == ref.argmax(1)).mean() > 0.999


@pytest.mark.slow
def test_onnx_export_text_parity(tiny: TSMNet, tmp_path) -> None:
    """dynamo export of encode_text with dynamic K; ORT matches eager."""
    ort = pytest.importorskip("onnxruntime")
    from torch.export import Dim

    class TextGraph(torch.nn.Module):
        def __init__(self, m: TSMNet) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.m.encode_text(input_ids, attention_mask)

    g = TextGraph(tiny).eval()
    ids, mask = tiny.tokenize(tiny.prompts(CLASS_NAMES[:3]))
    path = tmp_path / "text.onnx"
    K = Dim("K", min=1, max=4096)
    torch.onnx.export(
        g,
        (torch.from_numpy(ids), torch.from_numpy(mask)),
        str(path),
        dynamo=True,
        external_data=False,
        input_names=["input_ids", "attention_mask"],
        output_names=["text_emb"],
        dynamic_shapes={"input_ids": {0: K}, "attention_mask": {0: K}},
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    names = CLASS_NAMES + ["ship", "airport runway", "solar panels", "snow", "a very long class name " * 3]
    ids, mask = tiny.tokenize(tiny.prompts(names))
    with torch.no_grad():
        ref = g(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    got = sess.run(["text_emb"], {"input_ids": ids, "attention_mask": mask})[0]
    assert got.shape == (len(names), tiny.embed_dim)
    assert np.abs(got - ref).max() < 1e-4
    assert math.isclose(float(np.linalg.norm(got[0])), 1.0, rel_tol=1e-4)
