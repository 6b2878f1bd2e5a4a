"""Text encoders with learnable context tokens (DenseCLIP / CoOp style), export-friendly.

Both take ``input_ids [N, L]`` and ``attention_mask [N, L]`` (int64, as produced by the
tokenizers in :mod:`rsvl_train.tokenization`) and insert ``n_ctx`` learnable context vectors
right after the first token (SOT / ``[CLS]``) *inside* the module, so the tokenizer length
``L`` is the graph input length and the encoder sees ``L + n_ctx`` positions.

- :class:`ClipTextEncoder`: open_clip's CLIP text transformer (``ViT-B-16`` text tower);
  causal + key-padding mask (finite negatives), EOT pooling at ``argmax(input_ids) + n_ctx``,
  ``ln_final`` and ``text_projection``.
- :class:`MiniLMTextEncoder`: MiniLM-L6 (``transformers.BertModel``) fed ``inputs_embeds``;
  masked mean pooling over the valid positions (context tokens included), linear projection.

``forward`` returns the pooled (un-normalised) embedding ``[N, D]``; :meth:`TextEncoder.forward_tokens`
also returns per-token features projected to ``D`` (for description fusion / referring models).
With ``freeze=True`` the pretrained transformer is frozen (kept in eval mode); the context
tokens and any added projection stay trainable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import MASK_NEG

__all__ = ["ClipTextEncoder", "MiniLMTextEncoder", "TextEncoder", "TextFeatures", "build_text_encoder"]


class TextFeatures(NamedTuple):
    """Token features ``[N, S, D]``, their validity mask ``[N, S]`` (S = L + n_ctx) and pooled ``[N, D]``."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


class TextEncoder(nn.Module):
    """Base class: context-token insertion and freezing; subclasses implement ``forward_tokens``."""

    #: positions the underlying transformer supports (L + n_ctx must not exceed it)
    max_positions: int = 0
    output_dim: int = 0
    n_ctx: int = 0
    freeze: bool = False

    def frozen_part(self) -> nn.Module | None:
        """The pretrained transformer that ``freeze`` freezes (None: nothing to freeze)."""
        return None

    def insert_context(
        self, emb: torch.Tensor, attention_mask: torch.Tensor, ctx: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Insert ``ctx [n_ctx, W]`` after position 0 of ``emb [N, L, W]``; extend the mask."""
        if ctx is None:
            return emb, attention_mask
        N = emb.shape[0]
        c = ctx.unsqueeze(0).expand(N, -1, -1).to(emb.dtype)
        emb = torch.cat([emb[:, :1], c, emb[:, 1:]], dim=1)
        ones = torch.ones_like(attention_mask[:, :1]).expand(-1, ctx.shape[0])
        mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
        return emb, mask

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """Token features ``[N, L + n_ctx, D]``, their mask and the pooled embedding ``[N, D]``."""
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled text embedding ``[N, D]`` (not normalised)."""
        return self.forward_tokens(input_ids, attention_mask).pooled

    def check_length(self, length: int) -> None:
        """Raise if a tokenizer length ``L`` plus the context tokens exceeds the positions."""
        if length + self.n_ctx > self.max_positions:
            raise ValueError(
                f"text length {length} + {self.n_ctx} context tokens exceeds the encoder's "
                f"{self.max_positions} positions; lower text.max_length or text.n_ctx"
            )

    def _freeze(self) -> None:
        part = self.frozen_part()
        if self.freeze and part is not None:
            part.requires_grad_(False)
            part.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        """Like ``nn.Module.train`` but a frozen transformer stays in eval mode (no dropout)."""
        super().train(mode)
        part = self.frozen_part()
        if self.freeze and part is not None:
            part.eval()
        return self


class ClipTextEncoder(TextEncoder):
    """open_clip CLIP text tower with ``n_ctx`` learnable context tokens after SOT.

    Args:
        n_ctx: number of context tokens.
        clip_model: open_clip model config name whose ``text_cfg`` is used (``"ViT-B-16"``).
        output_dim: embedding size D; a linear layer is added if it differs from CLIP's.
        freeze: freeze the CLIP transformer (context tokens + extra projection still train).
        quick_gelu: True for OpenAI-trained weights.
    """

    def __init__(
        self,
        n_ctx: int = 8,
        clip_model: str = "ViT-B-16",
        output_dim: int | None = None,
        freeze: bool = True,
        quick_gelu: bool = False,
    ) -> None:
        super().__init__()
        from open_clip.transformer import LayerNorm, QuickGELU, TextTransformer

        from .backbones import open_clip_config

        cfg = open_clip_config(clip_model)
        tc = cfg["text_cfg"]
        clip_dim = int(cfg["embed_dim"])
        self.clip = TextTransformer(
            context_length=int(tc.get("context_length", 77)),
            vocab_size=int(tc.get("vocab_size", 49408)),
            width=int(tc.get("width", 512)),
            heads=int(tc.get("heads", 8)),
            layers=int(tc.get("layers", 12)),
            mlp_ratio=float(tc.get("mlp_ratio", 4.0)),
            output_dim=clip_dim,
            act_layer=QuickGELU if quick_gelu else nn.GELU,
            norm_layer=LayerNorm,
        )
        width = self.clip.width
        self.heads = self.clip.heads
        self.max_positions = self.clip.context_length
        self.n_ctx = int(n_ctx)
        self.ctx = nn.Parameter(torch.randn(self.n_ctx, width) * 0.02) if self.n_ctx > 0 else None
        self.output_dim = int(output_dim or clip_dim)
        self.extra_proj = nn.Linear(clip_dim, self.output_dim) if self.output_dim != clip_dim else nn.Identity()
        causal = torch.full((self.max_positions, self.max_positions), MASK_NEG).triu_(1)
        self.register_buffer("causal_mask", causal, persistent=False)
        self.freeze = bool(freeze)
        self._freeze()

    def frozen_part(self) -> nn.Module:
        """The CLIP text transformer."""
        return self.clip

    def load_clip_text(self, state_dict: Mapping[str, torch.Tensor]) -> int:
        """Copy CLIP text weights (top-level keys of an open_clip CLIP state dict)."""
        own = self.clip.state_dict()
        new = {k: v for k, v in state_dict.items() if k in own}
        missing = [k for k in own if k not in new]
        if missing:
            raise ValueError(f"CLIP checkpoint lacks text tensors {missing[:5]}")
        for k, v in new.items():
            if v.shape != own[k].shape:
                raise ValueError(
                    f"CLIP text tensor {k} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}"
                )
        self.clip.load_state_dict(new, strict=True)
        self._freeze()
        return len(new)

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """Token features (after ``ln_final`` and projection), mask and EOT-pooled embedding."""
        N = input_ids.shape[0]
        x = self.clip.token_embedding(input_ids)
        x, mask = self.insert_context(x, attention_mask, self.ctx)
        S = x.shape[1]
        x = x + self.clip.positional_embedding[:S].to(x.dtype)
        bias = self.causal_mask[:S, :S].unsqueeze(0) + (1.0 - mask.to(x.dtype)).unsqueeze(1) * MASK_NEG
        bias = bias.unsqueeze(1).expand(N, self.heads, S, S).reshape(N * self.heads, S, S)
        x = self.clip.transformer(x, attn_mask=bias)
        x = self.clip.ln_final(x)
        proj = self.clip.text_projection
        x = x @ proj if isinstance(proj, torch.Tensor) else proj(x)
        x = self.extra_proj(x)
        eot = input_ids.argmax(dim=-1) + self.n_ctx  # [N]
        onehot = (torch.arange(S, device=x.device).unsqueeze(0) == eot.unsqueeze(1)).to(x.dtype)  # [N, S]
        pooled = torch.matmul(onehot.unsqueeze(1), x).squeeze(1)
        return TextFeatures(x, mask, pooled)


class MiniLMTextEncoder(TextEncoder):
    """MiniLM-L6 (BERT) with ``n_ctx`` learnable context tokens after ``[CLS]``.

    Args:
        n_ctx: number of context tokens.
        output_dim: embedding size D (linear projection from 384).
        freeze: freeze BERT (context tokens and projection train).
        pretrained: load the real MiniLM weights (offline package); False: random BERT of the
            same configuration.
    """

    def __init__(self, n_ctx: int = 4, output_dim: int = 128, freeze: bool = True, pretrained: bool = True) -> None:
        super().__init__()
        from ..pretrained import load_minilm, minilm_path

        if pretrained:
            self.bert = load_minilm()
        else:
            from transformers import BertConfig, BertModel

            cfg = BertConfig.from_pretrained(str(minilm_path()))
            cfg._attn_implementation = "eager"
            self.bert = BertModel(cfg, add_pooling_layer=False)
        hidden = int(self.bert.config.hidden_size)
        self.max_positions = int(self.bert.config.max_position_embeddings)
        self.n_ctx = int(n_ctx)
        self.ctx = nn.Parameter(torch.randn(self.n_ctx, hidden) * 0.02) if self.n_ctx > 0 else None
        self.output_dim = int(output_dim)
        self.proj = nn.Linear(hidden, self.output_dim)
        self.freeze = bool(freeze)
        self._freeze()

    def frozen_part(self) -> nn.Module:
        """The BERT model."""
        return self.bert

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """Token features (projected), mask and masked-mean pooled embedding."""
        x = self.bert.embeddings.word_embeddings(input_ids)
        x, mask = self.insert_context(x, attention_mask, self.ctx)
        h = self.bert.embeddings(inputs_embeds=x)
        m = mask.to(h.dtype)
        bias = ((1.0 - m) * MASK_NEG)[:, None, None, :]  # [N, 1, 1, S]
        for layer in self.bert.encoder.layer:
            out = layer(h, bias)
            h = out[0] if isinstance(out, tuple) else out
        pooled = (h * m.unsqueeze(-1)).sum(dim=1) / m.sum(dim=1, keepdim=True).clamp_min(1.0)
        return TextFeatures(self.proj(h), mask, self.proj(pooled))


def build_text_encoder(cfg: Mapping[str, Any], output_dim: int) -> TextEncoder:
    """Build the text encoder named by ``cfg["encoder"]`` (``"minilm"`` or ``"clip"``)."""
    kind = cfg.get("encoder", "minilm")
    if kind == "clip":
        enc: TextEncoder = ClipTextEncoder(
            n_ctx=int(cfg.get("n_ctx", 8)),
            clip_model=cfg.get("clip_model", "ViT-B-16"),
            output_dim=output_dim,
            freeze=bool(cfg.get("freeze", True)),
            quick_gelu=bool(cfg.get("quick_gelu", False)),
        )
    elif kind == "minilm":
        enc = MiniLMTextEncoder(
            n_ctx=int(cfg.get("n_ctx", 4)),
            output_dim=output_dim,
            freeze=bool(cfg.get("freeze", True)),
            pretrained=bool(cfg.get("pretrained", True)),
        )
    else:
        raise ValueError(f"unknown text encoder {kind!r}; expected 'minilm' or 'clip'")
    for key in ("max_length", "desc_max_length"):
        if key in cfg:
            enc.check_length(int(cfg[key]))
    return enc


def l2_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x / max(||x||, 1e-6)`` along ``dim`` (FP16-safe epsilon)."""
    return F.normalize(x, dim=dim, eps=1e-6)
