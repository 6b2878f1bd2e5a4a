"""CADFormer: referring segmentation of remote-sensing images (RRSIS-D / RRSIS-HR).

Swin image encoder + BERT-style text encoder; semantic mutual guidance alignment (SMGA) after each
of the four Swin stages (pixels attend to words, words attend to pixels); a text-enhanced
cross-modal decoder with adaptive rotated convolution. Output: ``num_classes`` (2: background,
target) logits at input resolution, trained with 0.9 CE + 0.1 Dice.

The model splits into the two deployed graphs: :meth:`CADFormer.encode_text` (text graph) and
:meth:`CADFormer.forward_image` (image graph, which also carries the word-side alignment).

Config keys (``model_configs/cadformer*.json``)::

    tile_size       input H = W the Swin masks are built for (any size with
                    image_encoder.dynamic_img_size = true)
    embed_dim       D of the word / sentence features (text hidden size is projected to it)
    num_classes     2
    text            {"encoder": "minilm" | "bert-base", "max_length": 64, "freeze": bool,
                     "path": local HuggingFace BERT folder or null (bert-base only)}
    image_encoder   {"embed_dim", "depths", "num_heads", "window_size", "patch_size",
                     "mlp_ratio", "drop_path_rate", "dynamic_img_size"}
    align           {"num_heads"}
    decoder         {"dim", "num_heads", "text_fusion": [s16, s8, s4], "kernel_number",
                     "max_angle_deg", "arc_impl": "shift" | "grouped",
                     "self_attention": bool (pixel self-attention in the TCMD layer; default false)}

``text.max_length`` must cover the longest expression: RRSIS-HR expressions average 19.6 words
(max 41), i.e. more BERT word pieces, so both configs use 64 tokens.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..pretrained import PretrainedWeightsError
from .cadformer_align import additive_mask
from .cadformer_decoder import TextEnhancedDecoder
from .cadformer_encoder import AlignedSwinEncoder
from .cadformer_text import TextEncoder, build_tokenizer

log = logging.getLogger(__name__)

__all__ = ["CADFormer", "build"]


class CADFormer(nn.Module):
    """CADFormer referring segmentation model; build it with ``create_model("cadformer")``."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        text_cfg = config.get("text", {})
        img_cfg = dict(config.get("image_encoder", {}))
        img_cfg.pop("type", None)
        dec_cfg = config.get("decoder", {})
        embed_dim = int(config["embed_dim"])
        self.max_length = int(text_cfg.get("max_length", 20))
        self.num_classes = int(config.get("num_classes", 2))

        self.text = TextEncoder(text_cfg.get("encoder", "minilm"), embed_dim,
                                freeze=bool(text_cfg.get("freeze", False)), path=text_cfg.get("path"))
        self.image = AlignedSwinEncoder(img_size=config["tile_size"], text_dim=embed_dim,
                                        align_heads=int(config.get("align", {}).get("num_heads", 1)),
                                        **img_cfg)
        self.decoder = TextEnhancedDecoder(
            self.image.dims, text_dim=embed_dim, dim=int(dec_cfg.get("dim", 256)),
            num_heads=int(dec_cfg.get("num_heads", 8)), num_classes=self.num_classes,
            text_fusion=dec_cfg.get("text_fusion", (True, True, False)),
            kernel_number=int(dec_cfg.get("kernel_number", 1)),
            max_angle_deg=float(dec_cfg.get("max_angle_deg", 180.0)),
            arc_impl=dec_cfg.get("arc_impl", "shift"),
            self_attention=bool(dec_cfg.get("self_attention", False)))
        self._tokenizers: dict[int, Any] = {}

    # ---- text graph -------------------------------------------------------------------------
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask ``[B, L]`` (int64) -> ``(word_feats [B, L, D], sentence [B, D])``."""
        return self.text(input_ids, attention_mask)

    # ---- image graph ------------------------------------------------------------------------
    def forward_image(self, image: torch.Tensor, word_feats: torch.Tensor, sentence: torch.Tensor,
                      attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised ``image [B, 3, H, W]`` + text features -> ``{"logits": [B, num_classes, H, W]}``."""
        bias = additive_mask(attention_mask, image.dtype)
        feats, words = self.image(image, word_feats, bias, attention_mask)
        logits = self.decoder(feats, words, sentence, bias)
        logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": logits}

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training / reference path: ``encode_text`` then ``forward_image``."""
        words, sentence = self.encode_text(input_ids, attention_mask)
        return self.forward_image(image, words, sentence, attention_mask)

    # ---- tokenizer --------------------------------------------------------------------------
    def _tokenizer(self, max_length: int | None = None) -> Any:
        n = int(max_length or self.max_length)
        if n not in self._tokenizers:
            self._tokenizers[n] = build_tokenizer(n)
        return self._tokenizers[n]

    def tokenize(self, texts: Sequence[str] | str, max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)``, numpy int64 ``[N, max_length]`` (config ``text.max_length``)."""
        if isinstance(texts, str):
            texts = [texts]
        enc = self._tokenizer(max_length).encode_batch(list(texts))
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        return ids, mask

    def tokenizer_json(self) -> str:
        """The ``tokenizers`` JSON (padding + truncation at ``text.max_length``) matching :meth:`tokenize`."""
        return self._tokenizer().to_str()


def _load_whole_model(model: nn.Module, pretrained: str) -> None:
    """Deprecated: ``pretrained=`` naming weights of the whole model (CADFormer has no separate
    backbone/encoder weights file; ``text.path`` names a local BERT folder)."""
    from ..checkpoint_io import load_weights

    p = Path(pretrained)
    if not (p.is_file() or p.with_suffix(".safetensors").is_file()):
        raise PretrainedWeightsError(
            f"pretrained={pretrained!r} does not exist; CADFormer takes no backbone weights file — pass "
            "checkpoint=PATH to an rsvl-train checkpoint (NAME.safetensors with NAME.json beside it)")
    warnings.warn("cadformer: pretrained=<whole-model weights> is deprecated and will be removed in the next "
                  "release: pass checkpoint=PATH (an rsvl-train checkpoint)", DeprecationWarning, stacklevel=4)
    load_weights(model, p)


def build(config: dict[str, Any], pretrained: str | None = None, *, warn_random: bool = True) -> nn.Module:
    """Build CADFormer from its config (the factory's builder for architecture ``"cadformer"``).

    CADFormer has no separate backbone weights: the Swin encoder, the alignment and the decoder
    are randomly initialised (nothing is downloaded), and so is BERT-base unless ``text.path``
    names a local folder; MiniLM gets its real weights from its package. Trained weights come
    from ``create_model(..., checkpoint=PATH)``. Unless ``warn_random`` is False (a checkpoint
    follows), a warning lists what is random. ``pretrained`` (deprecated) is a whole-model
    weights file, the old meaning.
    """
    model = CADFormer(config)
    bert_path = config.get("text", {}).get("path")
    if bert_path and model.text.pretrained_weights:
        from ..weights_io.bert import load_bert_into_cadformer

        log.info("%s", load_bert_into_cadformer(model, bert_path).summary())  # strict: every tensor, or a refusal
    if pretrained:
        _load_whole_model(model, pretrained)
        return model
    if not warn_random:
        return model
    random_parts = ["Swin image encoder", "alignment", "decoder"]
    if not model.text.pretrained_weights:
        random_parts.insert(0, f"text encoder {config.get('text', {}).get('encoder')} (random weights)")
    log.warning("%s: weights are random for %s; pass checkpoint=PATH to an rsvl-train checkpoint "
                "to use trained weights", config.get("name", "cadformer"), ", ".join(random_parts))
    return model
