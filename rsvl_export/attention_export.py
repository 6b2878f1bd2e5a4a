"""Export-time attention form that ONNX Runtime's fusion rules recognise (kept apart from the
models, as SAM keeps its export wrappers apart).

open_clip's ``ResidualAttentionBlock`` (the ViT branches of ``tsmnet``, the CLIP text tower,
``tsmnet-official``) calls ``nn.MultiheadAttention``. The dynamo exporter decomposes it through
``F.multi_head_attention_forward``, which works sequence-first: the packed projection is split
with ``Unsqueeze/Transpose/Squeeze/Gather`` and the heads with ``Reshape [S, B*H, Dh]`` +
``Transpose`` (+ ``Reshape [B, H, S, Dh]``, which the optimizer folds away for the key).
onnxscript's ORT fusion rules (``onnxscript.rewriter.ort_fusions``: SDPA -> ``MultiHeadAttention``
-> ``Attention``) match none of it: the SDPA rule's check fails because the key reaching
``MatMul(Q, K^T)`` is the 3-D ``[B*H, S, Dh]`` tensor ("rank 3 does not match the expected rank
4"), and the MHA rule needs Q/K/V as ``Reshape [B, S, H, Dh]`` + ``Transpose [0, 2, 1, 3]`` of
``[B, S, D]`` projections (measured on ``tsmnet``: 0 of the 24 ViT blocks and 0 of the 12 text
blocks fused).

:class:`SDPAMultiheadAttention` computes the same function the way the rules expect: one packed
``MatMul`` of ``in_proj_weight``, ``Slice`` on axis 2 into Q/K/V, the bias as an ``Add`` per
projection, heads split by ``Reshape [B, S, H, Dh]`` + ``Transpose [0, 2, 1, 3]``,
``F.scaled_dot_product_attention`` with the attention mask as an additive ``[B|1, H|1, S, S]``
bias (the causal + key-padding bias of the CLIP text tower included), heads merged by
``Transpose`` + ``Reshape [B, S, D]``, then ``out_proj``; the rules then fuse one
``MultiHeadAttention`` (QKV bias folded in) per block. It holds the *same* parameter objects
as the module it stands in for (same names, so the graph's initializers keep the module paths
that the INT8 selection reads), and is only in place inside :func:`sdpa_attention`, which puts
the original modules back when the export is done: training code, checkpoints and the eager
parity reference never see it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["SDPAMultiheadAttention", "SwapReport", "sdpa_attention", "swap_reason"]


def swap_reason(mha: nn.MultiheadAttention) -> str | None:
    """Why ``mha`` cannot be expressed by :class:`SDPAMultiheadAttention` (None: it can)."""
    if not mha._qkv_same_embed_dim:
        return "separate kdim/vdim projections"
    if mha.bias_k is not None or mha.bias_v is not None:
        return "add_bias_kv=True"
    if mha.add_zero_attn:
        return "add_zero_attn=True"
    if mha.training and mha.dropout > 0:
        return f"training mode with dropout={mha.dropout} (export runs in eval mode)"
    return None


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An ``nn.MultiheadAttention`` mask as an additive bias: a bool mask is True where attention
    is *not* allowed (the opposite of SDPA's bool convention); a float mask is added as is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


class SDPAMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (``need_weights=False``) through ``F.scaled_dot_product_attention``,
    written in the form ONNX Runtime's attention fusions match (see the module docstring).

    Shares ``in_proj_weight``, ``in_proj_bias`` and ``out_proj`` with ``mha`` (the same objects).
    Masks follow ``nn.MultiheadAttention``: ``attn_mask`` ``[Sq, Sk]`` or ``[B*H, Sq, Sk]`` (float:
    added to the logits; bool: True = masked), ``key_padding_mask`` ``[B, Sk]``; ``is_causal=True``
    (which, as in ``nn.MultiheadAttention``, needs ``attn_mask``) applies SDPA's causal mask in place
    of ``attn_mask`` when there is no key padding mask.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        reason = swap_reason(mha)
        if reason:
            raise ValueError(f"cannot express this nn.MultiheadAttention with SDPA: {reason}")
        self.embed_dim = int(mha.embed_dim)
        self.num_heads = int(mha.num_heads)
        self.head_dim = int(mha.head_dim)
        self.batch_first = bool(mha.batch_first)
        self.in_proj_weight = mha.in_proj_weight
        self.in_proj_bias = mha.in_proj_bias
        self.out_proj = mha.out_proj
        self.train(mha.training)

    def _project(self, x: torch.Tensor, part: int) -> torch.Tensor:
        d = self.embed_dim
        w = self.in_proj_weight[part * d:(part + 1) * d]
        b = self.in_proj_bias[part * d:(part + 1) * d] if self.in_proj_bias is not None else None
        return F.linear(x, w, b)

    def _qkv(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K, V ``[B, S, D]``: self-attention as one packed MatMul sliced on axis 2, the bias
        added after the slice (so the bias rule folds it into ``MultiHeadAttention``'s packed
        bias input); cross-attention as three projections. onnxscript's packed ``Attention``
        rule does not match this (its ``Slice`` pattern has no ``steps`` input, the exporter's
        ``Slice`` has one): the result is ``MultiHeadAttention`` after the QKV MatMul."""
        d = self.embed_dim
        if key is query and value is query:
            qkv = torch.matmul(query, self.in_proj_weight.t())
            q, k, v = qkv[:, :, 0:d], qkv[:, :, d:2 * d], qkv[:, :, 2 * d:3 * d]
            b = self.in_proj_bias
            if b is not None:
                q, k, v = q + b[0:d], k + b[d:2 * d], v + b[2 * d:3 * d]
            return q, k, v
        return self._project(query, 0), self._project(key, 1), self._project(value, 2)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, S, D]`` -> ``[B, H, S, Dh]``."""
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def _bias(self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, batch: int,
              sq: int, sk: int, dtype: torch.dtype) -> torch.Tensor | None:
        """The additive SDPA bias ``[B|1, H|1, Sq, Sk]`` of the two masks (None: no mask)."""
        bias = None
        if attn_mask is not None:
            m = _additive(attn_mask, dtype)
            if m.dim() == 2:
                bias = m.reshape(1, 1, sq, sk)
            elif m.dim() == 3:
                bias = m.reshape(batch, self.num_heads, sq, sk)
            else:
                raise ValueError(f"attn_mask has rank {m.dim()} (shape {tuple(m.shape)}); "
                                 "nn.MultiheadAttention takes [Sq, Sk] or [B*heads, Sq, Sk]")
        if key_padding_mask is not None:
            kp = _additive(key_padding_mask, dtype).reshape(batch, 1, 1, sk)
            bias = kp if bias is None else bias + kp
        return bias

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        """Same arguments and result as ``nn.MultiheadAttention.forward`` with ``need_weights=False``:
        ``(output, None)``."""
        del average_attn_weights  # no weights are returned
        if need_weights:
            raise ValueError("SDPAMultiheadAttention is called with need_weights=True: the SDPA export form "
                             "returns no attention weights; swap only modules whose callers pass need_weights=False")
        if not self.batch_first:  # [S, B, D] -> [B, S, D]; `is` is kept for the self-attention check
            same_k, same_v = key is query, value is query
            query = query.transpose(0, 1)
            key = query if same_k else key.transpose(0, 1)
            value = query if same_v else value.transpose(0, 1)
        if is_causal and attn_mask is None:
            raise ValueError("is_causal=True needs attn_mask (the causal mask), as in nn.MultiheadAttention")
        batch, sq, sk = query.shape[0], query.shape[1], key.shape[1]
        q, k, v = (self._heads(t) for t in self._qkv(query, key, value))
        # as nn.MultiheadAttention: is_causal replaces attn_mask unless there is a key padding mask
        causal = is_causal and key_padding_mask is None
        bias = None if causal else self._bias(attn_mask, key_padding_mask, batch, sq, sk, q.dtype)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal)
        o = o.transpose(1, 2).reshape(batch, sq, self.embed_dim)
        o = self.out_proj(o)
        return (o.transpose(0, 1) if not self.batch_first else o), None


@dataclass
class SwapReport:
    """What :func:`sdpa_attention` swapped: module paths of the swapped ``attn`` modules and of
    those left as they are, with the reason."""

    swapped: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.swapped)


def _open_clip_blocks() -> tuple[type[nn.Module], ...]:
    """open_clip's block classes that call ``self.attn`` with ``need_weights=False``."""
    try:
        from open_clip.transformer import ResidualAttentionBlock
    except ImportError:  # pragma: no cover - open_clip is a dependency of rsvl_train
        return ()
    return (ResidualAttentionBlock,)


@contextmanager
def sdpa_attention(model: nn.Module, enabled: bool = True) -> Iterator[SwapReport]:
    """Within the block, every ``nn.MultiheadAttention`` of an open_clip ``ResidualAttentionBlock``
    in ``model`` is replaced by an :class:`SDPAMultiheadAttention` holding the same parameters;
    on exit (also on an exception) the original modules are put back. Modules that SDPA cannot
    express (:func:`swap_reason`) stay and are logged. ``enabled=False`` swaps nothing."""
    report = SwapReport()
    blocks = _open_clip_blocks() if enabled else ()
    originals: list[tuple[nn.Module, nn.MultiheadAttention]] = []
    for name, parent in model.named_modules():
        attn = getattr(parent, "attn", None)
        if not blocks or not isinstance(parent, blocks) or not isinstance(attn, nn.MultiheadAttention):
            continue
        path = f"{name}.attn" if name else "attn"
        reason = swap_reason(attn)
        if reason:
            report.skipped[path] = reason
            continue
        originals.append((parent, attn))
        report.swapped.append(path)
    try:
        for parent, attn in originals:
            parent.attn = SDPAMultiheadAttention(attn)
        if report.skipped:
            log.warning("attention left as nn.MultiheadAttention (not fused by ONNX Runtime): %s",
                        "; ".join(f"{p}: {r}" for p, r in report.skipped.items()))
        yield report
    finally:
        for parent, attn in originals:
            parent.attn = attn
