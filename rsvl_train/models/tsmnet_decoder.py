"""TSMNet neck and pixel decoder: FPN with score-map injection at the coarsest level.

The coarsest fused feature arrives already concatenated with the text-derived injection
(``open``: ``[F4, softmax(s) @ t, max_k s]``, K-independent; ``paper``: ``[F4, s]``, fixed K).
The FPN merges all four levels top-down, a Semantic-FPN style head sums them at stride 4, and
a 1x1 conv gives ``out_dim`` channels (pixel embeddings ``D`` or ``num_classes`` logits).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import ConvBNAct

__all__ = ["FPNPixelDecoder", "upsample_to"]


def upsample_to(x: torch.Tensor, ref: torch.Tensor | tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of ``x`` to ``ref``'s spatial size."""
    size = tuple(ref.shape[-2:]) if isinstance(ref, torch.Tensor) else tuple(ref)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FPNPixelDecoder(nn.Module):
    """FPN neck + pixel decoder to stride 4.

    Args:
        in_channels: channels of the 4 inputs (the last one includes the injected channels).
        neck_dim: FPN width.
        out_dim: channels of the stride-4 output.
    """

    def __init__(self, in_channels: Sequence[int], neck_dim: int, out_dim: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList([ConvBNAct(c, neck_dim, 1) for c in in_channels])
        self.smooth = nn.ModuleList([ConvBNAct(neck_dim, neck_dim, 3) for _ in in_channels])
        self.fuse = ConvBNAct(neck_dim, neck_dim, 3)
        self.out = nn.Conv2d(neck_dim, out_dim, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """4 maps (strides 4..32) -> ``[B, out_dim, H/4, W/4]``."""
        lat = [l(f) for l, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 2, -1, -1):
            lat[i] = lat[i] + upsample_to(lat[i + 1], lat[i])
        outs = [s(x) for s, x in zip(self.smooth, lat)]
        y = outs[0]
        for o in outs[1:]:
            y = y + upsample_to(o, outs[0])
        return self.out(self.fuse(y))
