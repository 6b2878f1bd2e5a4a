"""Export-time query chunking of CADFormer's pixel self-attention (kept apart from the model, as
SAM keeps its export wrappers apart).

The paper ``cadformer`` decoder lets the pixels attend to each other at strides 16, 8 and 4
(:class:`rsvl_train.models.cadformer_decoder.PixelSelfAttention`). At stride 4 of a 480 tile that
is N = 14 400 tokens. In eager mode ``F.scaled_dot_product_attention`` never holds the N x N
scores, but the dynamo exporter decomposes it into ``MatMul -> Softmax -> MatMul``, and ONNX
Runtime's CPU provider then materialises them: 8 heads x 14 400^2 x 4 B = 6.6 GB per batch item
for the scores and again for the softmax. Measured here on one such layer (B=1): 7.7 GB peak
and 26 s in ONNX Runtime; the export of the whole model (whose runtime check runs B=2) was
OOM-killed at 24 GB.

Within :func:`chunked_pixel_attention` every ``PixelSelfAttention.attend`` computes the same
attention in query chunks of :data:`QUERY_CHUNK` rows (each chunk sees all keys, so the result
is the same function; the chunks are concatenated on the token axis). The exported graph then
holds ``heads x QUERY_CHUNK x N`` scores at a time: the same layer ran in 1.25 GB and 2.0 s.
Sequences no longer than the chunk are left as one SDPA. Only the bound method is replaced (an
instance attribute, deleted on exit), so parameter names, checkpoints and the eager parity
reference are untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["QUERY_CHUNK", "chunked_attend", "chunked_pixel_attention"]

#: query rows per chunk: at N = 14 400 and 8 heads, 8 x 512 x 14 400 x 4 B = 236 MB of scores
QUERY_CHUNK = 512


def chunked_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int = QUERY_CHUNK) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v)`` on ``[B, h, N, hd]``, ``chunk`` query rows at a
    time (one call when ``N <= chunk``). ``N`` must be static (a Python int) to be chunked."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    n = q.shape[2]
    if not isinstance(n, int) or n <= chunk:
        return F.scaled_dot_product_attention(q, k, v)
    parts = [F.scaled_dot_product_attention(q[:, :, i:i + chunk], k, v) for i in range(0, n, chunk)]
    return torch.cat(parts, dim=2)


@contextmanager
def chunked_pixel_attention(model: nn.Module, chunk: int = QUERY_CHUNK,
                            enabled: bool = True) -> Iterator[list[str]]:
    """Within the block every ``PixelSelfAttention`` of ``model`` attends in query chunks of
    ``chunk`` rows (:func:`chunked_attend`); yields their module paths. The original method is
    back on exit, also on an exception. ``enabled=False`` changes nothing."""
    from rsvl_train.models.cadformer_decoder import PixelSelfAttention

    found = [(name, m) for name, m in model.named_modules() if isinstance(m, PixelSelfAttention)] if enabled else []
    try:
        for _, m in found:
            m.attend = lambda q, k, v, _c=chunk: chunked_attend(q, k, v, _c)  # type: ignore[method-assign]
        if found:
            log.info("pixel self-attention exported in query chunks of %d: %s", chunk,
                     ", ".join(n for n, _ in found))
        yield [n for n, _ in found]
    finally:
        for _, m in found:
            m.__dict__.pop("attend", None)
