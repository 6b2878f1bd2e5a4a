"""Semantic mutual guidance alignment (SMGA) of CADFormer, written for export.

- :class:`LanguageGuidedVisionAlignment` (LGVA): visual tokens cross-attend to the word features;
  the attended language is multiplied with a projection of the visual tokens and added back
  through a tanh gate.
- :class:`VisionGuidedLanguageAlignment` (VGLA): words cross-attend to the visual tokens; the
  update is added to the words through a zero-initialised tanh gate (identity at init), and the
  updated words feed the next stage.

Padding words are masked with a finite additive bias (:data:`MASK_FILL` = -1e4) so that FP16
stays finite; attention is matmul + softmax (no einsum, no -inf, no data-dependent control flow).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "MASK_FILL",
    "SMGA",
    "CrossAttention",
    "LanguageGuidedVisionAlignment",
    "VisionGuidedLanguageAlignment",
    "additive_mask",
]

#: Additive attention bias of a padded key. Finite in FP16 (max 65504), unlike -inf / finfo.min.
MASK_FILL = -1.0e4


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Key-padding mask ``[B, L]`` (1 = word, 0 = padding) -> additive bias ``[B, 1, 1, L]``."""
    keep = attention_mask.to(dtype)
    return ((1.0 - keep) * MASK_FILL).reshape(keep.shape[0], 1, 1, keep.shape[1])


class CrossAttention(nn.Module):
    """Multi-head attention of ``query [B, N, q_dim]`` over ``context [B, M, kv_dim]``.

    ``bias`` is an additive ``[B, 1, 1, M]`` key bias (see :func:`additive_mask`) or None.
    Returns ``[B, N, out_dim]``.
    """

    def __init__(self, q_dim: int, kv_dim: int, dim: int, num_heads: int, out_dim: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(q_dim, dim)
        self.k = nn.Linear(kv_dim, dim)
        self.v = nn.Linear(kv_dim, dim)
        self.proj = nn.Linear(dim, out_dim or dim)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, h, n, hd]

    def forward(self, query: torch.Tensor, context: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = query.shape
        q = self._heads(self.q(query)) * self.scale
        k = self._heads(self.k(context))
        v = self._heads(self.v(context))
        scores = torch.matmul(q, k.transpose(-2, -1))  # [B, h, N, M]
        if bias is not None:
            scores = scores + bias.to(scores.dtype)
        attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.proj(out)


def _gate(dim: int, zero_init: bool) -> nn.Sequential:
    gate = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim, bias=False), nn.Tanh())
    if zero_init:
        nn.init.zeros_(gate[2].weight)
    return gate


class LanguageGuidedVisionAlignment(nn.Module):
    """Visual tokens ``x [B, N, C]`` aligned with words ``[B, L, D]``: ``x + gate(mm) * mm``."""

    def __init__(self, vis_dim: int, text_dim: int, num_heads: int = 1) -> None:
        super().__init__()
        self.norm_v = nn.LayerNorm(vis_dim)
        self.vis_proj = nn.Sequential(nn.Linear(vis_dim, vis_dim), nn.GELU())
        self.attn = CrossAttention(vis_dim, text_dim, vis_dim, num_heads)
        self.norm_l = nn.LayerNorm(vis_dim)
        self.mm_proj = nn.Sequential(nn.Linear(vis_dim, vis_dim), nn.GELU())
        self.gate = _gate(vis_dim, zero_init=False)

    def forward(self, x: torch.Tensor, words: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        v = self.norm_v(x)
        lang = self.norm_l(self.attn(v, words, bias))  # [B, N, C]: language seen by each pixel
        mm = self.mm_proj(self.vis_proj(v) * lang)
        return x + self.gate(mm) * mm


class VisionGuidedLanguageAlignment(nn.Module):
    """Words ``[B, L, D]`` updated by attending to visual tokens ``[B, N, C]``.

    Padding positions are left unchanged. The gate starts at zero, so a fresh layer is the identity.
    """

    def __init__(self, text_dim: int, vis_dim: int, num_heads: int = 1) -> None:
        super().__init__()
        self.norm_l = nn.LayerNorm(text_dim)
        self.norm_v = nn.LayerNorm(vis_dim)
        self.lang_proj = nn.Sequential(nn.Linear(text_dim, text_dim), nn.GELU())
        self.attn = CrossAttention(text_dim, vis_dim, text_dim, num_heads)
        self.mm_proj = nn.Sequential(nn.Linear(text_dim, text_dim), nn.GELU())
        self.gate = _gate(text_dim, zero_init=True)

    def forward(self, words: torch.Tensor, x: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        w = self.norm_l(words)
        vis = self.attn(w, self.norm_v(x))  # [B, L, D]: image seen by each word
        mm = self.mm_proj(self.lang_proj(w) * vis)
        return words + self.gate(mm) * mm * word_mask.to(words.dtype).unsqueeze(-1)


class SMGA(nn.Module):
    """One stage of semantic mutual guidance alignment: LGVA on the pixels, then VGLA on the words.

    ``forward(x [B, N, C], words [B, L, D], bias [B, 1, 1, L], word_mask [B, L]) -> (x, words)``.
    """

    def __init__(self, vis_dim: int, text_dim: int, num_heads: int = 1) -> None:
        super().__init__()
        self.lgva = LanguageGuidedVisionAlignment(vis_dim, text_dim, num_heads)
        self.vgla = VisionGuidedLanguageAlignment(text_dim, vis_dim, num_heads)

    def forward(self, x: torch.Tensor, words: torch.Tensor, bias: torch.Tensor,
                word_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.lgva(x, words, bias)
        words = self.vgla(words, x, word_mask)
        return x, words
