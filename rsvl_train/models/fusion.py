"""Export-friendly attention and cross-modal fusion blocks.

All attention here is plain ``Linear`` + ``reshape`` + ``matmul`` + ``softmax`` (no einsum, no
``nn.MultiheadAttention`` fast paths), masks are additive large finite negatives
(:data:`MASK_NEG`, FP16-safe) and shapes come from tensors, so graphs export with dynamic batch
and vocabulary axes.

- :class:`MultiHeadAttention` / :class:`CrossAttentionBlock`: generic (cross-)attention.
- :class:`MFRM`: modality feature rectification (CMX-style channel + spatial rectification; each
  modality is corrected by the other).
- :class:`MFFM`: modality feature fusion (CMX-style efficient cross-attention between the two
  modalities, then a channel-embedding merge to one map).
- :class:`GlobalFusion`: merge of the two modalities' global (pooled / class-token) vectors, the
  fifth level of TSMNet's six-level fusion.
- :class:`ContextDecoder`: DenseCLIP context decoder; text queries attend to visual tokens and
  ``t <- t + gamma * v``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "MASK_NEG",
    "MFFM",
    "MFRM",
    "ContextDecoder",
    "ConvBNAct",
    "CrossAttentionBlock",
    "GlobalFusion",
    "MultiHeadAttention",
    "key_padding_bias",
    "pick_heads",
]

#: Additive attention bias for masked keys: large but finite, so FP16 stays finite.
MASK_NEG = -1e4


def pick_heads(dim: int, max_heads: int = 8, min_head_dim: int = 16) -> int:
    """Largest power-of-two head count <= ``max_heads`` dividing ``dim`` with head dim >= 16."""
    h = max_heads
    while h > 1 and (dim % h or dim // h < min_head_dim):
        h //= 2
    return max(h, 1)


def key_padding_bias(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``mask [B, N]`` (1 keep / 0 pad) -> additive bias ``[B, N]`` (0 / ``MASK_NEG``)."""
    return (1.0 - mask.to(dtype)) * MASK_NEG


class ConvBNAct(nn.Sequential):
    """``Conv2d(k, same padding, no bias) -> BatchNorm2d -> ReLU`` (ReLU optional)."""

    def __init__(self, cin: int, cout: int, k: int = 1, act: bool = True, groups: int = 1) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, padding=k // 2, bias=False, groups=groups),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class MultiHeadAttention(nn.Module):
    """Multi-head attention ``q [B, Nq, dim]`` over ``kv [B, Nk, kv_dim]`` -> ``[B, Nq, dim]``.

    ``key_bias [B, Nk]`` is added to the attention logits of every query (use
    :func:`key_padding_bias`); ``attn_bias`` ``[Nq, Nk]`` or ``[B, Nq, Nk]`` likewise.
    """

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} not divisible by heads {heads}")
        kv_dim = kv_dim or dim
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(kv_dim, dim, bias=qkv_bias)
        self.v = nn.Linear(kv_dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, N = x.shape[0], x.shape[1]
        return x.reshape(B, N, self.heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        q: torch.Tensor,
        kv: torch.Tensor,
        key_bias: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend ``q`` to ``kv``; see the class docstring for the bias shapes."""
        B, Nq = q.shape[0], q.shape[1]
        qh = self._split(self.q(q)) * self.scale
        kh = self._split(self.k(kv))
        vh = self._split(self.v(kv))
        a = torch.matmul(qh, kh.transpose(-2, -1))  # [B, h, Nq, Nk]
        if attn_bias is not None:
            a = a + (attn_bias.unsqueeze(1) if attn_bias.dim() == 3 else attn_bias)
        if key_bias is not None:
            a = a + key_bias[:, None, None, :]
        a = a.softmax(dim=-1)
        o = torch.matmul(a, vh).transpose(1, 2).reshape(B, Nq, self.heads * self.head_dim)
        return self.proj(o)


class _MLP(nn.Sequential):
    def __init__(self, dim: int, ratio: float = 4.0) -> None:
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class CrossAttentionBlock(nn.Module):
    """Pre-norm residual cross-attention: ``x + gamma * attn(LN(x), LN(ctx))``.

    ``gamma`` is a learnable per-channel scale (``gamma_init``; ``None`` disables it), so a
    small init lets the block start as the identity (used for description fusion).
    """

    def __init__(self, dim: int, heads: int, ctx_dim: int | None = None, gamma_init: float | None = 1e-4) -> None:
        super().__init__()
        ctx_dim = ctx_dim or dim
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(ctx_dim)
        self.attn = MultiHeadAttention(dim, heads, kv_dim=ctx_dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(gamma_init))) if gamma_init is not None else None

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, N, dim]`` attends to ``ctx [B, M, ctx_dim]``."""
        y = self.attn(self.norm_q(x), self.norm_kv(ctx), key_bias=key_bias)
        return x + (self.gamma * y if self.gamma is not None else y)


class _DecoderLayer(nn.Module):
    """Transformer decoder layer: self-attention, cross-attention to memory, MLP (pre-norm)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = MultiHeadAttention(dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = _MLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h)
        x = x + self.cross_attn(self.norm2(x), mem)
        return x + self.mlp(self.norm3(x))


class ContextDecoder(nn.Module):
    """DenseCLIP context decoder: text ``[B, K, D]`` attends to visual tokens ``[B, N, D]``.

    Returns ``t + gamma * v`` where ``v`` is the decoder output projected back to ``D``;
    ``gamma`` (per channel) starts at ``gamma_init`` so the text embeddings start unchanged.
    """

    def __init__(self, dim: int, width: int = 256, layers: int = 3, heads: int = 4, gamma_init: float = 1e-4) -> None:
        super().__init__()
        self.memory_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width), nn.LayerNorm(width))
        self.text_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width))
        self.layers = nn.ModuleList([_DecoderLayer(width, heads) for _ in range(layers)])
        self.out_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim))
        self.gamma = nn.Parameter(torch.full((dim,), float(gamma_init)))

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """``text [B, K, D]``, ``visual [B, N, D]`` -> adapted text ``[B, K, D]``."""
        mem = self.memory_proj(visual)
        x = self.text_proj(text)
        for layer in self.layers:
            x = layer(x, mem)
        return text + self.gamma * self.out_proj(x)


class MFRM(nn.Module):
    """Modality feature rectification module (CMX FRM style).

    Channel weights come from global average+max pooled statistics of both modalities through
    an MLP; spatial weights from a 1x1-conv stack on the concatenated maps. Each modality is
    rectified by the *other* one::

        a' = a + lc * wc_b * b + ls * ws_b * b
        b' = b + lc * wc_a * a + ls * ws_a * a

    A missing modality (zeros) therefore leaves the other one unchanged.
    """

    def __init__(self, dim: int, reduction: int = 4, lambda_c: float = 0.5, lambda_s: float = 0.5) -> None:
        super().__init__()
        self.dim = dim
        self.lambda_c = lambda_c
        self.lambda_s = lambda_s
        hidden_c = max(4 * dim // reduction, 8)
        self.channel_mlp = nn.Sequential(
            nn.Linear(4 * dim, hidden_c), nn.ReLU(inplace=True), nn.Linear(hidden_c, 2 * dim), nn.Sigmoid()
        )
        hidden_s = max(2 * dim // reduction, 8)
        self.spatial = nn.Sequential(
            nn.Conv2d(2 * dim, hidden_s, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden_s, 2, 1), nn.Sigmoid()
        )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rectify ``a`` and ``b`` (both ``[B, C, H, W]``)."""
        B = a.shape[0]
        stats = torch.cat([a.mean(dim=(2, 3)), a.amax(dim=(2, 3)), b.mean(dim=(2, 3)), b.amax(dim=(2, 3))], dim=1)
        cw = self.channel_mlp(stats).reshape(B, 2, self.dim, 1, 1)
        sw = self.spatial(torch.cat([a, b], dim=1))  # [B, 2, H, W]
        a_out = a + self.lambda_c * cw[:, 1] * b + self.lambda_s * sw[:, 1:2] * b
        b_out = b + self.lambda_c * cw[:, 0] * a + self.lambda_s * sw[:, 0:1] * a
        return a_out, b_out


class _EfficientCrossAttention(nn.Module):
    """CMX cross-attention: each modality queries the other's global (channel) context.

    ``ctx = softmax_tokens(k^T v)`` is ``[B, h, dh, dh]``, so the cost is linear in tokens.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.kv1 = nn.Linear(dim, 2 * dim, bias=False)
        self.kv2 = nn.Linear(dim, 2 * dim, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N = x.shape[0], x.shape[1]
        return x.reshape(B, N, self.heads, self.head_dim).transpose(1, 2)  # [B, h, N, dh]

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, C = x1.shape
        q1, q2 = self._heads(x1), self._heads(x2)
        k1, v1 = (self._heads(t) for t in self.kv1(x1).chunk(2, dim=-1))
        k2, v2 = (self._heads(t) for t in self.kv2(x2).chunk(2, dim=-1))
        ctx1 = (torch.matmul(k1.transpose(-2, -1), v1) * self.scale).softmax(dim=-2)
        ctx2 = (torch.matmul(k2.transpose(-2, -1), v2) * self.scale).softmax(dim=-2)
        o1 = torch.matmul(q1, ctx2).transpose(1, 2).reshape(B, N, C)
        o2 = torch.matmul(q2, ctx1).transpose(1, 2).reshape(B, N, C)
        return o1, o2


class MFFM(nn.Module):
    """Modality feature fusion module (CMX FFM style): two maps ``[B, C, H, W]`` -> one.

    Stage 1 (information exchange): per modality a linear layer splits into a residual path
    and an interaction path; the interaction paths cross-attend (efficient channel-context
    attention); each modality is updated ``LN(x + proj([res, cross]))``.
    Stage 2 (merge): ``[a, b]`` -> 1x1 conv residual + (1x1 -> depthwise 3x3 -> 1x1) embedding.
    """

    def __init__(self, dim: int, heads: int | None = None, reduction: int = 1) -> None:
        super().__init__()
        heads = heads or pick_heads(dim)
        self.dim = dim
        self.in1 = nn.Linear(dim, 2 * dim)
        self.in2 = nn.Linear(dim, 2 * dim)
        self.act = nn.ReLU(inplace=True)
        self.cross = _EfficientCrossAttention(dim, heads)
        self.out1 = nn.Linear(2 * dim, dim)
        self.out2 = nn.Linear(2 * dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = max(dim // reduction, 8)
        self.residual = nn.Conv2d(2 * dim, dim, 1, bias=False)
        self.embed = nn.Sequential(
            nn.Conv2d(2 * dim, hidden, 1, bias=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, dim, 1, bias=True),
            nn.BatchNorm2d(dim),
        )
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Fuse ``a`` and ``b`` (both ``[B, C, H, W]``) -> ``[B, C, H, W]``."""
        B, C, H, W = a.shape
        x1 = a.flatten(2).transpose(1, 2)
        x2 = b.flatten(2).transpose(1, 2)
        r1, u1 = self.act(self.in1(x1)).chunk(2, dim=-1)
        r2, u2 = self.act(self.in2(x2)).chunk(2, dim=-1)
        c1, c2 = self.cross(u1, u2)
        x1 = self.norm1(x1 + self.out1(torch.cat([r1, c1], dim=-1)))
        x2 = self.norm2(x2 + self.out2(torch.cat([r2, c2], dim=-1)))
        m = torch.cat([x1, x2], dim=-1).transpose(1, 2).reshape(B, 2 * C, H, W)
        return self.norm(self.residual(m) + self.embed(m))


class GlobalFusion(nn.Module):
    """Merge two global vectors given as ``[B, C, 1, 1]`` maps: ``LN(Linear([a, b]))`` -> ``[B, C, 1, 1]``.

    The global level has one token, so MFFM's token attention and BatchNorm do not apply; the
    rectification before it (an :class:`MFRM` on the 1x1 maps) is the same as at the other levels.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Fuse ``a`` and ``b`` (both ``[B, C, 1, 1]``)."""
        y = self.norm(self.proj(torch.cat([a.flatten(1), b.flatten(1)], dim=-1)))
        return y[:, :, None, None]
