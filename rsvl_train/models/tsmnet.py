"""TSMNet: optical + SAR + text open-vocabulary semantic segmentation.

Architecture (see ``docs/design.md``)::

    optical [B,3,H,W] --backbone--> O1..O4 \\                                  (strides 4,8,16,32)
                                           MFRM_i (rectify) -> MFFM_i (fuse) -> F1..F4
    sar     [B,1,H,W] --backbone--> S1..S4 /
    F4 --1x1--> z [B,D,h,w] (+ description cross-attention, optional)
    text_emb [K,D] --context decoder (attends to [mean(z), z])--> t [B,K,D]
    s = norm(z)^T norm(t)                                    score map [B,K,h,w]
    open head : F4' = [F4, softmax_k(s) @ t, max_k s]   (K-independent channels)
    paper head: F4' = [F4, s]                            (fixed K = num_classes)
    FPN(F1, F2, F3, F4') -> pixel embeddings [B,D,H/4,W/4]
    open head : logits = tau * cos(pixel_emb, t_k), upsampled to H,W
    paper head: logits = 1x1 conv classifier, upsampled to H,W

Two configs use it: ``tsmnet`` (paper scale: two open_clip ViT-B/16 branches + CLIP text
transformer) and ``tsmnet-tiny`` (EfficientNet-Lite0 branches + MiniLM-L6), both registered
as architecture ``"tsmnet"``.

A missing modality is a normalised input of zeros: ``forward_image(optical=None, ...)`` fills
it in; :func:`modality_dropout` zeroes one modality per sample during training.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .backbones import ClipViTPyramid, TimmPyramid, build_backbone
from .fusion import (
    MFFM,
    MFRM,
    ContextDecoder,
    CrossAttentionBlock,
    key_padding_bias,
    pick_heads,
)
from .text_encoders import (
    ClipTextEncoder,
    TextEncoder,
    TextFeatures,
    build_text_encoder,
    l2_normalize,
)
from .tsmnet_decoder import FPNPixelDecoder, upsample_to

log = logging.getLogger(__name__)

__all__ = ["TSMNet", "build", "modality_dropout"]

#: Upper bound of the learnable logit scale ``tau`` (CLIP convention).
MAX_LOGIT_SCALE = 100.0


def modality_dropout(
    optical: torch.Tensor, sar: torch.Tensor, p: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero one modality per sample with probability ``p`` (never both).

    Inputs are *normalised* ``optical [B,3,H,W]`` and ``sar [B,1,H,W]``; a dropped sample loses
    optical or SAR with equal chance. Returns new tensors (inputs are not modified).
    """
    if p <= 0.0:
        return optical, sar
    B = optical.shape[0]
    drop = torch.rand(B, generator=generator) < p
    which = torch.rand(B, generator=generator) < 0.5  # True: drop optical, False: drop SAR
    keep_opt = (~(drop & which)).to(optical.dtype).view(B, 1, 1, 1).to(optical.device)
    keep_sar = (~(drop & ~which)).to(sar.dtype).view(B, 1, 1, 1).to(sar.device)
    return optical * keep_opt, sar * keep_sar


class TSMNet(nn.Module):
    """TSMNet model; see the module docstring. Build it with ``rsvl_train.create_model``.

    Public methods (used by training, export and runtime): :meth:`encode_text`,
    :meth:`encode_description`, :meth:`forward_image`, :meth:`forward`, :meth:`tokenize`,
    :meth:`tokenizer_json`, :meth:`prompts`.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        self.head = config.get("head", "open")
        if self.head not in ("open", "paper"):
            raise ValueError(f"head must be 'open' or 'paper', got {self.head!r}")
        self.embed_dim = D = int(config["embed_dim"])
        self.tile_size = int(config.get("tile_size", 256))
        tcfg = dict(config.get("text", {}))
        self.max_length = int(tcfg.get("max_length", 16))
        self.templates: list[str] = list(tcfg.get("templates", ["{}"]))
        self._tokenizers: dict[int, Any] = {}

        bcfg = config.get("backbone", {})
        self.optical_backbone = build_backbone(bcfg, in_chans=3, image_size=self.tile_size)
        self.sar_backbone = build_backbone(bcfg, in_chans=1, image_size=self.tile_size)
        chans: Sequence[int] = self.optical_backbone.out_channels
        fcfg = config.get("fusion", {})
        self.rectify = nn.ModuleList([MFRM(c, reduction=int(fcfg.get("reduction", 4))) for c in chans])
        self.fuse = nn.ModuleList([MFFM(c) for c in chans])

        self.text_encoder: TextEncoder = build_text_encoder(tcfg, output_dim=D)
        self.visual_proj = nn.Conv2d(chans[-1], D, 1)
        cd = config.get("context_decoder", {})
        self.context_decoder = ContextDecoder(
            D,
            width=int(cd.get("width", 256)),
            layers=int(cd.get("layers", 3)),
            heads=int(cd.get("heads", 4)),
            gamma_init=float(cd.get("gamma_init", 1e-4)),
        )
        self.description_fusion = bool(config.get("description_fusion", False))
        self.desc_attn = (
            CrossAttentionBlock(D, pick_heads(D), gamma_init=float(config.get("desc_gamma_init", 1e-4)))
            if self.description_fusion
            else None
        )
        self.global_proj = nn.Linear(D, D)

        neck = int(config.get("neck_dim", 64))
        if self.head == "open":
            inject = D + 1
            out_dim = D
            self.num_classes = None
        else:
            self.num_classes = int(config["num_classes"])
            inject = self.num_classes
            out_dim = self.num_classes
        self.decoder = FPNPixelDecoder([*chans[:3], chans[3] + inject], neck, out_dim)
        init_scale = float(config.get("logit_scale_init", 1.0 / 0.07))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.score_logit_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    # ------------------------------------------------------------------ text
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids``/``attention_mask`` int64 ``[K, L]`` -> L2-normalised ``[K, D]``."""
        return l2_normalize(self.text_encoder(input_ids, attention_mask), dim=-1)

    def encode_description(self, desc_ids: torch.Tensor, desc_mask: torch.Tensor) -> TextFeatures:
        """Scene descriptions ``[B, Ld]`` -> token features ``[B, Ld+n_ctx, D]``, mask, pooled."""
        return self.text_encoder.forward_tokens(desc_ids, desc_mask)

    @property
    def tau(self) -> torch.Tensor:
        """Logit scale ``exp(logit_scale)`` clamped to ``MAX_LOGIT_SCALE``."""
        return self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    # ----------------------------------------------------------------- image
    @staticmethod
    def _fill_missing(optical: torch.Tensor | None, sar: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if optical is None and sar is None:
            raise ValueError("forward_image needs at least one of optical, sar")
        if optical is None:
            assert sar is not None
            optical = sar.new_zeros(sar.shape[0], 3, sar.shape[2], sar.shape[3])
        if sar is None:
            sar = optical.new_zeros(optical.shape[0], 1, optical.shape[2], optical.shape[3])
        return optical, sar

    def fused_features(self, optical: torch.Tensor, sar: torch.Tensor) -> list[torch.Tensor]:
        """Both branches, then MFRM + MFFM at each of the 4 scales -> 4 fused maps."""
        fo = self.optical_backbone(optical)
        fs = self.sar_backbone(sar)
        fused = []
        for rect, fuse, a, b in zip(self.rectify, self.fuse, fo, fs):
            a, b = rect(a, b)
            fused.append(fuse(a, b))
        return fused

    def forward_image(
        self,
        optical: torch.Tensor | None,
        sar: torch.Tensor | None,
        text_emb: torch.Tensor,
        description: TextFeatures | None = None,
    ) -> dict[str, torch.Tensor]:
        """Segment with a vocabulary given as text embeddings.

        Args:
            optical: normalised ``[B, 3, H, W]`` or None (zeros).
            sar: normalised ``[B, 1, H, W]`` or None (zeros).
            text_emb: ``[K, D]`` from :meth:`encode_text` (any K for the ``open`` head;
                K = ``num_classes`` for the ``paper`` head).
            description: optional :meth:`encode_description` output ``[B, ...]`` (scene-level
                fusion; only used when ``description_fusion`` is on).

        Returns a dict: ``logits [B,K,H,W]``; ``score_map [B,K,h,w]`` (cosine, stride 32 — use
        ``tau * score_map`` for the auxiliary CE); ``pixel_emb [B,D,H/4,W/4]`` (``open`` head);
        ``text_emb_img [B,K,D]`` (per-image adapted, L2-normalised); ``logit_scale`` (tau);
        ``visual_global [B,D]`` (normalised pooled visual embedding, before description fusion).
        """
        optical, sar = self._fill_missing(optical, sar)
        H, W = optical.shape[-2], optical.shape[-1]
        fused = self.fused_features(optical, sar)
        top = fused[-1]
        z = self.visual_proj(top)  # [B, D, h, w]
        B, D, h, w = z.shape
        tokens = z.flatten(2).transpose(1, 2)  # [B, hw, D]
        out: dict[str, torch.Tensor] = {}
        out["visual_global"] = l2_normalize(self.global_proj(tokens.mean(dim=1)), dim=-1)
        if self.desc_attn is not None and description is not None:
            tokens = self.desc_attn(tokens, description.tokens, key_padding_bias(description.mask, tokens.dtype))

        visual = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        t = l2_normalize(text_emb, dim=-1).unsqueeze(0).expand(B, -1, -1)
        t = l2_normalize(self.context_decoder(t, visual), dim=-1)  # [B, K, D]
        zn = l2_normalize(tokens, dim=-1)
        score = torch.matmul(t, zn.transpose(1, 2))  # [B, K, hw]
        score_map = score.reshape(B, -1, h, w)
        if self.head == "open":
            s_scale = self.score_logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
            attn = (score * s_scale).softmax(dim=1)  # over K
            tfeat = torch.matmul(t.transpose(1, 2), attn).reshape(B, D, h, w)  # [B, D, h, w]
            smax = score_map.amax(dim=1, keepdim=True)
            inject = torch.cat([top, tfeat, smax], dim=1)
        else:
            if not (torch.compiler.is_compiling() or torch.jit.is_tracing()) and text_emb.shape[0] != self.num_classes:
                raise ValueError(
                    f"the 'paper' head has a fixed vocabulary of {self.num_classes} classes, got {text_emb.shape[0]}"
                )
            inject = torch.cat([top, score_map], dim=1)
        pix = self.decoder([*fused[:3], inject])
        tau = self.tau
        if self.head == "open":
            h4, w4 = pix.shape[-2], pix.shape[-1]
            pn = l2_normalize(pix, dim=1).flatten(2)  # [B, D, h4*w4]
            logits = (torch.matmul(t, pn) * tau).reshape(B, -1, h4, w4)
            out["pixel_emb"] = pix
        else:
            logits = pix
        out["logits"] = upsample_to(logits, (H, W))
        out["score_map"] = score_map
        out["text_emb_img"] = t
        out["logit_scale"] = tau
        return out

    def forward(
        self,
        optical: torch.Tensor | None,
        sar: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        desc_ids: torch.Tensor | None = None,
        desc_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Training forward: encode the class prompts ``[K, L]`` then :meth:`forward_image`.

        With descriptions (``desc_ids``/``desc_mask`` ``[B, Ld]``) the output also holds
        ``desc_emb [B, D]`` (normalised) for the scene InfoNCE against ``visual_global``.
        """
        text_emb = self.encode_text(input_ids, attention_mask)
        description = None
        if desc_ids is not None:
            if desc_mask is None:
                desc_mask = (desc_ids != 0).long()
            description = self.encode_description(desc_ids, desc_mask)
        out = self.forward_image(optical, sar, text_emb, description)
        out["text_emb"] = text_emb
        if description is not None:
            out["desc_emb"] = l2_normalize(description.pooled, dim=-1)
        return out

    # ------------------------------------------------------------- tokenizer
    def _get_tokenizer(self, max_length: int) -> Any:
        if max_length not in self._tokenizers:
            from ..tokenization import build_tokenizer

            self.text_encoder.check_length(max_length)
            encoder = self.config.get("text", {}).get("encoder", "minilm")
            self._tokenizers[max_length] = build_tokenizer(encoder, max_length)
        return self._tokenizers[max_length]

    @property
    def tokenizer(self) -> Any:
        """The ``tokenizers.Tokenizer`` matching the text encoder (fixed length ``max_length``)."""
        return self._get_tokenizer(self.max_length)

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)`` numpy int64 ``[N, max_length]`` (default: config)."""
        from ..tokenization import encode_batch

        return encode_batch(self._get_tokenizer(int(max_length or self.max_length)), list(texts))

    def tokenizer_json(self) -> str:
        """The tokenizer as a ``tokenizers`` JSON string (padding/truncation to ``max_length`` built in)."""
        return self.tokenizer.to_str()

    def prompts(self, class_names: Sequence[str]) -> list[str]:
        """Apply the prompt templates: ``len(class_names) * len(templates)`` strings, class-major.

        With several templates, average the embeddings of a class's prompts (then re-normalise).
        """
        return [t.format(c) for c in class_names for t in self.templates]

    @property
    def class_names(self) -> list[str]:
        """Default vocabulary (names of ``config["classes"]``)."""
        return [c["name"] for c in self.config.get("classes", [])]

    # --------------------------------------------------------------- weights
    def load_clip(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load an open_clip CLIP state dict: visual -> both ViT branches, text -> text encoder."""
        visual = {k[len("visual.") :]: v for k, v in state_dict.items() if k.startswith("visual.")}
        n = 0
        for branch in (self.optical_backbone, self.sar_backbone):
            if not isinstance(branch, ClipViTPyramid):
                raise TypeError("CLIP weights need the 'open_clip_vit' backbone")
            n += branch.load_clip_visual(visual)
        if isinstance(self.text_encoder, ClipTextEncoder):
            n += self.text_encoder.load_clip_text(state_dict)
        else:
            log.warning("tsmnet: text encoder is not CLIP; CLIP text weights were not loaded")
        log.info("tsmnet: loaded %d CLIP tensors", n)


def _is_clip_state_dict(sd: Mapping[str, Any]) -> bool:
    return "visual.conv1.weight" in sd and "token_embedding.weight" in sd


def _load_pretrained(model: TSMNet, path: str) -> None:
    from ..pretrained import PretrainedWeightsError, load_open_clip_checkpoint

    sd = load_open_clip_checkpoint(path)
    if _is_clip_state_dict(sd):
        model.load_clip(sd)
        return
    # Deprecated: a state dict of the whole model (the old second meaning of ``pretrained``).
    for key in ("model", "state_dict", "model_state"):
        if isinstance(sd.get(key), Mapping):
            sd = {k.removeprefix("module."): v for k, v in sd[key].items()}
            break
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise PretrainedWeightsError(
            f"{path} is neither an open_clip CLIP checkpoint nor a checkpoint of this model: {e}"
        ) from e
    warnings.warn(
        "tsmnet: pretrained=<state dict of the whole model> is deprecated and will be removed in the next "
        "release: save it with rsvl_train.checkpoint.save_checkpoint and pass checkpoint=PATH "
        "(pretrained= is for CLIP backbone/text weights only)",
        DeprecationWarning,
        stacklevel=4,
    )


def build(config: dict[str, Any], pretrained: str | None = None, *, warn_random: bool = True) -> TSMNet:
    """Build TSMNet from a config (the factory's builder for architecture ``"tsmnet"``).

    ``pretrained``: a local open_clip CLIP checkpoint (paper model: CLIP visual weights into
    both ViT branches, SAR stem = RGB stem summed; CLIP text weights into the text encoder).
    Without it a CLIP-based model is randomly initialised (a warning says so unless
    ``warn_random`` is False, i.e. an rsvl-train checkpoint follows); a timm Lite0 model gets the
    offline ImageNet weights in both branches (``backbone.imagenet``) and MiniLM its real
    weights (``text.pretrained``) regardless. Whole-model weights are ``create_model(...,
    checkpoint=PATH)``.
    """
    model = TSMNet(config)
    bcfg = config.get("backbone", {})
    if isinstance(model.optical_backbone, TimmPyramid) and bcfg.get("imagenet", True):
        model.optical_backbone.load_imagenet()
        model.sar_backbone.load_imagenet()
    if pretrained:
        _load_pretrained(model, pretrained)
    elif warn_random and (isinstance(model.optical_backbone, ClipViTPyramid)
                          or isinstance(model.text_encoder, ClipTextEncoder)):
        log.warning(
            "%s: no pretrained CLIP checkpoint given (pretrained=None): the ViT branches and the CLIP "
            "text encoder have RANDOM weights; pass pretrained=PATH to a local open_clip ViT-B-16 checkpoint",
            config.get("name", "tsmnet"),
        )
    return model
