"""Swin image encoder with semantic mutual guidance alignment after each of its four stages.

The timm ``SwinTransformer`` is run stage by stage (patch embed, then ``layers[i]``, NHWC). After
stage ``i`` the visual tokens are aligned with the words (:class:`~.cadformer_align.SMGA`); the
aligned tokens enter stage ``i + 1`` and the updated words the next alignment, as in LAVT/CADFormer.
Each stage output passes a LayerNorm and is returned NCHW (strides 4, 8, 16, 32).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from .cadformer_align import SMGA

__all__ = ["AlignedSwinEncoder"]


class AlignedSwinEncoder(nn.Module):
    """``forward(image, words, bias, word_mask) -> (feats [c1, c2, c3, c4], words)``.

    ``img_size`` sets the Swin attention masks; with ``dynamic_img_size=True`` any input size
    works (masks are rebuilt on each forward), otherwise the input must be ``img_size``.
    """

    def __init__(self, img_size: int | Sequence[int], text_dim: int, embed_dim: int = 128,
                 depths: Sequence[int] = (2, 2, 18, 2), num_heads: Sequence[int] = (4, 8, 16, 32),
                 window_size: int = 12, patch_size: int = 4, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.3, dynamic_img_size: bool = False, align_heads: int = 1,
                 **swin_kwargs: Any) -> None:
        super().__init__()
        self.swin = SwinTransformer(
            img_size=tuple(img_size) if isinstance(img_size, Sequence) else img_size,
            patch_size=patch_size, embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(num_heads),
            window_size=window_size, mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate,
            strict_img_size=not dynamic_img_size, num_classes=0, **swin_kwargs)
        # the classification norm/head are unused: drop their parameters
        self.swin.norm = nn.Identity()
        self.swin.head = nn.Identity()
        self.dims = [int(embed_dim * 2 ** i) for i in range(len(depths))]
        self.align = nn.ModuleList([SMGA(d, text_dim, align_heads) for d in self.dims])
        self.norms = nn.ModuleList([nn.LayerNorm(d) for d in self.dims])

    def forward(self, image: torch.Tensor, words: torch.Tensor, bias: torch.Tensor,
                word_mask: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self.swin.patch_embed(image)  # [B, H/4, W/4, C] NHWC
        feats: list[torch.Tensor] = []
        for stage, align, norm in zip(self.swin.layers, self.align, self.norms):
            x = stage(x)
            b, h, w, c = x.shape
            t, words = align(x.reshape(b, h * w, c), words, bias, word_mask)
            x = t.reshape(b, h, w, c)
            feats.append(norm(x).permute(0, 3, 1, 2).contiguous())
        return feats, words
