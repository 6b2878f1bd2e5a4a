"""Text-enhanced cross-modal decoder (TCMD) of CADFormer.

Top-down over the four aligned encoder stages (strides 32 -> 16 -> 8 -> 4). Each step upsamples,
concatenates the skip feature, applies conv3x3-BN-ReLU and an adaptive rotated conv-BN-ReLU whose
angle comes from the sentence + pooled visual feature, then (at the strides listed in
``text_fusion``) lets the pixels cross-attend to the aligned words (:class:`TextFusion`).
A 1x1 conv gives ``num_classes`` logits at stride 4.

The decoder layer of the paper is pixel self-attention, cross-attention to the words, MLP, at
every stride (16, 8 and 4): ``decoder.self_attention = true`` with ``text_fusion = [true, true,
true]`` (the ``cadformer`` paper config). Without ``self_attention`` (default, ``cadformer-tiny``)
text fusion is cross-attention + MLP only, skipped at stride 4: self-attention is quadratic in
H*W (14 400 tokens at stride 4 of a 480 tile), which is what keeps the tiny decoder cheap to deploy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .cadformer_align import CrossAttention
from .rotated_conv import AdaptiveRotatedConv2d

__all__ = ["DecoderStep", "PixelSelfAttention", "TextEnhancedDecoder", "TextFusion"]


class PixelSelfAttention(nn.Module):
    """Multi-head self-attention over the pixels ``[B, N, C]`` (no mask).

    Uses ``scaled_dot_product_attention``: at stride 4 of a 480 tile N = 14 400, and the fused
    kernel never holds the ``N x N`` matrix (8 heads of it are 6.6 GB in FP32).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = self.attend(q, k, v)  # [B, h, N, hd]
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention over ``[B, h, N, hd]`` heads (replaced by a query-chunked form while exporting:
        ``rsvl_export.pixel_attention_export``)."""
        return F.scaled_dot_product_attention(q, k, v)


class TextFusion(nn.Module):
    """Pixels ``[B, C, H, W]`` attend to words ``[B, L, D]``; pre-norm residual attention + MLP.

    With ``self_attention`` the layer first lets the pixels attend to each other (the paper's
    TCMD layer: self-attention, cross-attention, MLP).
    """

    def __init__(self, dim: int, text_dim: int, num_heads: int, mlp_ratio: float = 2.0,
                 self_attention: bool = False) -> None:
        super().__init__()
        if self_attention:
            self.norm0 = nn.LayerNorm(dim)
            self.self_attn: PixelSelfAttention | None = PixelSelfAttention(dim, num_heads)
        else:
            self.self_attn = None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, text_dim, dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, words: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        if self.self_attn is not None:
            t = t + self.self_attn(self.norm0(t))
        t = t + self.attn(self.norm1(t), words, bias)
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


class DecoderStep(nn.Module):
    """Upsample ``x`` to the skip's size, concat, conv-BN-ReLU, rotated conv-BN-ReLU, optional fusion."""

    def __init__(self, in_dim: int, skip_dim: int, dim: int, text_dim: int, num_heads: int, fuse_text: bool,
                 kernel_number: int, max_angle_deg: float, arc_impl: str, self_attention: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_dim + skip_dim, dim, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.arc = AdaptiveRotatedConv2d(dim, dim, cond_dim=text_dim, kernel_number=kernel_number,
                                         max_angle_deg=max_angle_deg, impl=arc_impl)
        self.arc_post = nn.Sequential(nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.fusion = TextFusion(dim, text_dim, num_heads, self_attention=self_attention) if fuse_text else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor, words: torch.Tensor, sentence: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = self.conv(torch.cat([x, skip], dim=1))
        x = self.arc_post(self.arc(x, sentence))
        if self.fusion is not None:
            x = self.fusion(x, words, bias)
        return x


class TextEnhancedDecoder(nn.Module):
    """``forward(feats [c1..c4] NCHW, words, sentence, bias) -> logits [B, num_classes, H/4, W/4]``.

    ``text_fusion`` has one flag per step (strides 16, 8, 4); ``self_attention`` adds pixel
    self-attention to each text-fusion layer.
    """

    def __init__(self, in_dims: Sequence[int], text_dim: int, dim: int = 256, num_heads: int = 8,
                 num_classes: int = 2, text_fusion: Sequence[bool] = (True, True, False),
                 kernel_number: int = 1, max_angle_deg: float = 180.0, arc_impl: str = "shift",
                 self_attention: bool = False) -> None:
        super().__init__()
        c1, c2, c3, c4 = in_dims
        if len(text_fusion) != 3:
            raise ValueError(f"decoder.text_fusion needs 3 flags (strides 16, 8, 4), got {list(text_fusion)}")
        kw = {"text_dim": text_dim, "num_heads": num_heads, "kernel_number": kernel_number,
              "max_angle_deg": max_angle_deg, "arc_impl": arc_impl, "self_attention": self_attention}
        self.steps = nn.ModuleList([
            DecoderStep(c4, c3, dim, fuse_text=bool(text_fusion[0]), **kw),
            DecoderStep(dim, c2, dim, fuse_text=bool(text_fusion[1]), **kw),
            DecoderStep(dim, c1, dim, fuse_text=bool(text_fusion[2]), **kw),
        ])
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor], words: torch.Tensor, sentence: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
        c1, c2, c3, c4 = feats
        x = c4
        for step, skip in zip(self.steps, (c3, c2, c1)):
            x = step(x, skip, words, sentence, bias)
        return self.classifier(x)
