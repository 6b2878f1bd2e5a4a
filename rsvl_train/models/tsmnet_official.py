"""The TSMNet architecture exactly as released by its authors (ViT-B/16, 256 px, 7 classes), so
their trained mmseg checkpoint loads tensor for tensor (:mod:`rsvl_train.official`).

It differs from :mod:`.tsmnet` (our paper-faithful re-implementation) where the official code does
(yeyuanxin110/TSMNet ``segmentation/TSMNet/TSMNet.py`` @ ed5f76a, DenseCLIP ``models.py``):

- SAR: a learnt 1x1 conv ``1 -> 3`` bands (``sar_stem``, official ``channel_conv``) feeds a second,
  3-band CLIP ViT (no stem summing);
- backbones: DenseCLIP's ``CLIPVisionTransformer`` — blocks 4, 6, 8, 12 tapped; ``fpn1..4`` with
  GroupNorm (+ BatchNorm in ``fpn1``), all 768 channels; the class embedding is added twice (as
  the official forward does); ``ln_post``/``proj`` give the global and dense 512-d embeddings
  (the SAR branch's are computed by the official code but unused);
- one rectify (FRM) and one fuse (FFM) module shared by the four scales, inputs weighted
  0.9 (optical) / 0.1 (SAR); FFM keeps only its residual 1x1 conv on the forward path;
- text: CLIP text tower with 8 learnt context tokens after SOT (class prompts of 69 tokens);
  context decoder ``t = t + gamma * dec(t, [global, dense])`` with a per-channel ``gamma``;
- fixed-K head: the score map (K = 7) is concatenated to the stride-16 fused map; mmseg FPN neck
  (nearest top-down) and FPNHead (Semantic FPN, 256 channels) -> 7 logits at stride 4, bilinear
  to the input.

Deployment difference: the runtime hands the image graph L2-normalised class embeddings, while
the official code adds ``gamma * dec(t)`` to the raw CLIP text features (norm ~ O(10)), so our
``t + gamma * dec(t)`` sees the increment relatively larger by that norm. ``dec`` itself is
unaffected (its first op is a LayerNorm). Training-only official modules (auxiliary losses) are
not built: :data:`rsvl_train.official.TRAINING_ONLY`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .prompting import PromptTokenizer
from .text_encoders import l2_normalize

__all__ = ["TSMNetOfficial", "build"]


def _transformer(width: int, layers: int, heads: int) -> nn.Module:
    from open_clip.transformer import QuickGELU, Transformer

    return Transformer(width, layers, heads, act_layer=QuickGELU)


class OfficialClipViT(nn.Module):
    """DenseCLIP ``CLIPVisionTransformer`` (patch 16): 4 maps of ``width`` channels + embeddings."""

    def __init__(self, image_size: int = 256, patch: int = 16, width: int = 768, layers: int = 12, heads: int = 12,
                 output_dim: int = 512, taps: Sequence[int] = (3, 5, 7, 11)) -> None:
        super().__init__()
        scale = width ** -0.5
        self.grid = image_size // patch
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _transformer(width, layers, heads)
        self.taps = tuple(taps)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        self.fpn1 = nn.Sequential(nn.GroupNorm(1, width), nn.ConvTranspose2d(width, width, 2, 2), nn.BatchNorm2d(width),
                                  nn.GELU(), nn.ConvTranspose2d(width, width, 2, 2))
        self.fpn2 = nn.Sequential(nn.GroupNorm(1, width), nn.ConvTranspose2d(width, width, 2, 2))
        self.fpn3 = nn.GroupNorm(1, width)
        self.fpn4 = nn.Sequential(nn.GroupNorm(1, width), nn.MaxPool2d(2, 2))

    def forward(self, x: torch.Tensor, embeddings: bool = True
                ) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
        x = self.conv1(x)
        B, C, H, W = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(B, 1, C)
        x = torch.cat([cls, x], dim=1)
        pos = self.positional_embedding.to(x.dtype)
        spatial = pos[1:]
        if (H, W) != (self.grid, self.grid):
            img = spatial.reshape(1, self.grid, self.grid, C).permute(0, 3, 1, 2)
            spatial = F.interpolate(img, size=(H, W), mode="bilinear").reshape(C, H * W).t()
        x = x + torch.cat([(pos[0] + self.class_embedding).reshape(1, C), spatial], dim=0).unsqueeze(0)
        x = self.ln_pre(x)
        feats = []
        for i, blk in enumerate(self.transformer.resblocks):
            x = blk(x)
            if i in self.taps:
                feats.append(x[:, 1:].transpose(1, 2).reshape(B, C, H, W))
        feats = [op(f) for op, f in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), feats)]
        if not embeddings:
            return feats, None
        e = self.ln_post(x) @ self.proj
        return feats, (e[:, 0], e[:, 1:].transpose(1, 2).reshape(B, -1, H, W))


class OfficialClipText(nn.Module):
    """DenseCLIP ``CLIPTextContextEncoder`` + the model's ``contexts`` (``[1, n_ctx, width]``)."""

    def __init__(self, context_length: int = 77, n_ctx: int = 8, vocab: int = 49408, width: int = 512,
                 heads: int = 8, layers: int = 12, embed_dim: int = 512) -> None:
        super().__init__()
        self.context_length, self.n_ctx = context_length, n_ctx
        self.transformer = _transformer(width, layers, heads)
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, embed_dim) * width ** -0.5)
        self.contexts = nn.Parameter(torch.randn(1, n_ctx, width) * 0.02)
        causal = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.register_buffer("causal_mask", causal, persistent=False)

    def check_length(self, length: int) -> None:
        """Raise if a tokenizer length ``L`` plus the context tokens exceeds the positions."""
        if length + self.n_ctx > self.context_length:
            raise ValueError(f"text length {length} + {self.n_ctx} context tokens exceeds "
                             f"{self.context_length} positions")

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[K, L]`` token ids (L + n_ctx = context_length) -> ``[K, embed_dim]`` (not normalised)."""
        K = input_ids.shape[0]
        x = self.token_embedding(input_ids)
        ctx = self.contexts.expand(K, -1, -1).to(x.dtype)
        x = torch.cat([x[:, :1], ctx, x[:, 1:]], dim=1)
        S = x.shape[1]
        x = x + self.positional_embedding[:S].to(x.dtype)
        x = self.transformer(x, attn_mask=self.causal_mask[:S, :S])
        x = self.ln_final(x)
        eot = input_ids.argmax(dim=-1) + self.n_ctx
        return x[torch.arange(K, device=x.device), eot] @ self.text_projection


class _Attention(nn.Module):
    """DenseCLIP ``Attention``: separate bias-free q/k/v projections, output ``proj``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, N, C = q.shape
        M = k.shape[1]
        h = self.heads
        q = self.q_proj(q).reshape(B, N, h, C // h).transpose(1, 2)
        k = self.k_proj(k).reshape(B, M, h, C // h).transpose(1, 2)
        v = self.v_proj(v).reshape(B, M, h, C // h).transpose(1, 2)
        attn = (q @ k.transpose(-2, -1) * (C // h) ** -0.5).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class _DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn, self.cross_attn = _Attention(dim, heads), _Attention(dim, heads)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim * 4, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        q = self.norm1(x)
        x = x + self.self_attn(q, q, q)
        x = x + self.cross_attn(self.norm2(x), mem, mem)
        return x + self.dropout(self.mlp(self.norm3(x)))


class OfficialContextDecoder(nn.Module):
    """DenseCLIP ``ContextDecoder`` (returns the increment, not ``t`` itself)."""

    def __init__(self, width: int = 256, heads: int = 4, layers: int = 3, visual_dim: int = 512) -> None:
        super().__init__()
        self.memory_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, width), nn.LayerNorm(width))
        self.text_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, width))
        self.decoder = nn.ModuleList([_DecoderLayer(width, heads) for _ in range(layers)])
        self.out_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, visual_dim))

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        mem = self.memory_proj(visual)
        x = self.text_proj(text)
        for layer in self.decoder:
            x = layer(x, mem)
        return self.out_proj(x)


class _Weights(nn.Module):
    """``mlp`` holder (official ``ChannelWeights`` / ``SpatialWeights``)."""

    def __init__(self, mlp: nn.Sequential) -> None:
        super().__init__()
        self.mlp = mlp


class OfficialFRM(nn.Module):
    """Official ``FeatureRectifyModule`` (reduction 1, lambda_c = lambda_s = 0.5)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.channel_weights = _Weights(nn.Sequential(nn.Linear(4 * dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, 2 * dim),
                                                      nn.Sigmoid()))
        self.spatial_weights = _Weights(nn.Sequential(nn.Conv2d(2 * dim, dim, 1), nn.ReLU(), nn.Conv2d(dim, 2, 1),
                                                      nn.Sigmoid()))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, H, W = x1.shape
        x = torch.cat([x1, x2], dim=1)
        y = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        cw = self.channel_weights.mlp(y).reshape(B, 2, self.dim, 1, 1)
        o1 = x1 + 0.5 * cw[:, 1] * x2
        o2 = x2 + 0.5 * cw[:, 0] * x1
        sw = self.spatial_weights.mlp(torch.cat([o1, o2], dim=1)).reshape(B, 2, 1, H, W)
        return o1 + 0.5 * sw[:, 1] * x2, o2 + 0.5 * sw[:, 0] * x1


class _CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int = 1) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.kv1 = nn.Linear(dim, dim * 2, bias=False)
        self.kv2 = nn.Linear(dim, dim * 2, bias=False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, C = x1.shape
        h = self.heads
        q1 = x1.reshape(B, N, h, C // h).transpose(1, 2)
        q2 = x2.reshape(B, N, h, C // h).transpose(1, 2)
        k1, v1 = self.kv1(x1).reshape(B, N, 2, h, C // h).permute(2, 0, 3, 1, 4)
        k2, v2 = self.kv2(x2).reshape(B, N, 2, h, C // h).permute(2, 0, 3, 1, 4)
        ctx1 = ((k1.transpose(-2, -1) @ v1) * self.scale).softmax(dim=-2)
        ctx2 = ((k2.transpose(-2, -1) @ v2) * self.scale).softmax(dim=-2)
        return ((q1 @ ctx2).transpose(1, 2).reshape(B, N, C), (q2 @ ctx1).transpose(1, 2).reshape(B, N, C))


class _CrossPath(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.channel_proj1, self.channel_proj2 = nn.Linear(dim, dim * 2), nn.Linear(dim, dim * 2)
        self.cross_attn = _CrossAttention(dim)
        self.end_proj1, self.end_proj2 = nn.Linear(dim * 2, dim), nn.Linear(dim * 2, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y1, u1 = F.relu(self.channel_proj1(x1)).chunk(2, dim=-1)
        y2, u2 = F.relu(self.channel_proj2(x2)).chunk(2, dim=-1)
        v1, v2 = self.cross_attn(u1, u2)
        return (self.norm1(x1 + self.end_proj1(torch.cat([y1, v1], dim=-1))),
                self.norm2(x2 + self.end_proj2(torch.cat([y2, v2], dim=-1))))


class _ChannelEmbed(nn.Module):
    """Official ``ChannelEmbed``: only ``residual`` is on the forward path (``channel_embed`` and
    ``norm`` are built, trained never, and kept so the checkpoint maps one to one)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.residual = nn.Conv2d(cin, cout, 1, bias=False)
        self.channel_embed = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.Conv2d(cout, cout, 3, padding=1, groups=cout),
                                           nn.ReLU(), nn.Conv2d(cout, cout, 1), nn.BatchNorm2d(cout))
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x)


class OfficialFFM(nn.Module):
    """Official ``FeatureFusionModule`` (reduction 1, one head)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.cross = _CrossPath(dim)
        self.channel_emb = _ChannelEmbed(2 * dim, dim)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x1.shape
        a, b = self.cross(x1.flatten(2).transpose(1, 2), x2.flatten(2).transpose(1, 2))
        merge = torch.cat([a, b], dim=-1).transpose(1, 2).reshape(B, 2 * C, H, W)
        return self.channel_emb(merge)


class MMSegFPN(nn.Module):
    """mmseg ``FPN`` neck (1x1 laterals, nearest top-down, 3x3 outputs; convs biased, no norm)."""

    def __init__(self, in_channels: Sequence[int], out: int = 256) -> None:
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, out, 1) for c in in_channels])
        self.smooth = nn.ModuleList([nn.Conv2d(out, out, 3, padding=1) for _ in in_channels])

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        lat = [m(x) for m, x in zip(self.lateral, xs)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
        return [m(x) for m, x in zip(self.smooth, lat)]


class _ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class _Up2(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class MMSegFPNHead(nn.Module):
    """mmseg ``FPNHead`` (Semantic FPN) at strides 4, 8, 16, 32 + ``classifier`` (``conv_seg``)."""

    def __init__(self, channels: int = 256, num_classes: int = 7, strides: Sequence[int] = (4, 8, 16, 32)) -> None:
        super().__init__()
        heads = []
        for s in strides:
            layers: list[nn.Module] = []
            for _ in range(max(1, int(np.log2(s) - np.log2(strides[0])))):
                layers.append(_ConvBNReLU(channels, channels))
                if s != strides[0]:
                    layers.append(_Up2())
            heads.append(nn.Sequential(*layers))
        self.scale_heads = nn.ModuleList(heads)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](xs[0])
        for head, x in zip(self.scale_heads[1:], xs[1:]):
            out = out + F.interpolate(head(x), size=out.shape[2:], mode="bilinear", align_corners=False)
        return self.classifier(out)


def _fill_missing(optical: torch.Tensor | None, sar: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A missing modality is a normalised input of zeros (``docs/design.md``)."""
    if optical is None and sar is None:
        raise ValueError("forward_image needs at least one of optical, sar")
    if optical is None:
        assert sar is not None
        optical = sar.new_zeros(sar.shape[0], 3, *sar.shape[2:])
    if sar is None:
        sar = optical.new_zeros(optical.shape[0], 1, *optical.shape[2:])
    return optical, sar


class TSMNetOfficial(PromptTokenizer, nn.Module):
    """The official TSMNet (see the module docstring); same public methods as :class:`.tsmnet.TSMNet`
    for export (``encode_text``, ``forward_image``, ``tokenize``, ``tokenizer_json``, ``prompts``)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        self.tile_size = int(config.get("tile_size", 256))
        self.num_classes = int(config["num_classes"])
        self.embed_dim = int(config.get("embed_dim", 512))
        tcfg = dict(config.get("text", {}))
        self.max_length = int(tcfg.get("max_length", 69))
        self.templates: list[str] = list(tcfg.get("templates", ["{}"]))
        self.score_index = int(config.get("score_concat_index", 2))
        self.alpha = float(config.get("optical_weight", 0.9))
        self._tokenizers: dict[int, Any] = {}
        width = int(config.get("backbone", {}).get("width", 768))
        self.sar_stem = nn.Conv2d(1, 3, 1)
        self.optical_backbone = OfficialClipViT(self.tile_size, width=width, output_dim=self.embed_dim)
        self.sar_backbone = OfficialClipViT(self.tile_size, width=width, output_dim=self.embed_dim)
        self.text_encoder = OfficialClipText(n_ctx=int(tcfg.get("n_ctx", 8)), embed_dim=self.embed_dim)
        self.text_encoder.requires_grad_(False)  # frozen in the official training
        self.text_encoder.contexts.requires_grad_(True)
        cd = config.get("context_decoder", {})
        self.context_decoder = OfficialContextDecoder(int(cd.get("width", 256)), int(cd.get("heads", 4)),
                                                      int(cd.get("layers", 3)), self.embed_dim)
        self.gamma = nn.Parameter(torch.full((self.embed_dim,), float(cd.get("gamma_init", 1e-4))))
        self.rectify = OfficialFRM(width)
        self.fuse = OfficialFFM(width)
        neck = int(config.get("neck_dim", 256))
        chans = [width] * 4
        chans[self.score_index] += self.num_classes
        self.neck = MMSegFPN(chans, neck)
        self.decoder = MMSegFPNHead(neck, self.num_classes)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[K, L]`` int64 -> L2-normalised ``[K, D]`` (the mask is implied by the causal attention)."""
        return l2_normalize(self.text_encoder(input_ids), dim=-1)

    def forward_image(self, optical: torch.Tensor | None, sar: torch.Tensor | None,
                      text_emb: torch.Tensor) -> dict[str, torch.Tensor]:
        """Official ``encode_decode``: ``logits [B, K, H, W]`` (K fixed), ``score_map [B, K, H/16, W/16]``."""
        optical, sar = _fill_missing(optical, sar)
        H, W = optical.shape[-2:]
        fo, emb = self.optical_backbone(optical)
        fs, _ = self.sar_backbone(self.sar_stem(sar), embeddings=False)
        a = self.alpha
        fused = []
        for x, y in zip(fo, fs):
            x, y = self.rectify(a * x, (1 - a) * y)
            fused.append(self.fuse(a * x, (1 - a) * y))
        assert emb is not None
        glob, dense = emb
        B, C, h, w = dense.shape
        visual = torch.cat([glob.reshape(B, C, 1), dense.reshape(B, C, h * w)], dim=2).transpose(1, 2)
        t = text_emb.unsqueeze(0).expand(B, -1, -1)
        t = t + self.gamma * self.context_decoder(t, visual)
        score = torch.einsum("bchw,bkc->bkhw", l2_normalize(dense, dim=1), l2_normalize(t, dim=-1))
        fused[self.score_index] = torch.cat([fused[self.score_index], score], dim=1)
        logits = self.decoder(self.neck(fused))
        logits = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
        return {"logits": logits, "score_map": score, "text_emb_img": l2_normalize(t, dim=-1)}

    def forward(self, optical: torch.Tensor | None, sar: torch.Tensor | None, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, **_: Any) -> dict[str, torch.Tensor]:
        out = self.forward_image(optical, sar, self.encode_text(input_ids, attention_mask))
        return out


def build(config: dict[str, Any], pretrained: str | None = None, *, warn_random: bool = True) -> TSMNetOfficial:
    """Builder for architecture ``"tsmnet-official"``; its weights come only from the authors'
    checkpoint (``rsvl_train.official.load_official_checkpoint``), not from ``pretrained``."""
    if pretrained:
        raise ValueError(f"{config.get('name', 'tsmnet-official')} takes the authors' whole-model checkpoint: "
                         "--checkpoint PATH --checkpoint-format official (not --pretrained)")
    return TSMNetOfficial(config)
