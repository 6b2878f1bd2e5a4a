"""TSMNet: optical + SAR + text open-vocabulary semantic segmentation.

Architecture (see ``docs/design.md``)::

    optical [B,3,H,W] --backbone--> O1..O4 (+ Og, Ol) \\                   (strides 4,8,16,32)
                                           MFRM_i (rectify) -> MFFM_i (fuse) -> F1..F4 (+ Fg, Fl)
    sar     [B,1,H,W] --backbone--> S1..S4 (+ Sg, Sl) /
    (optional) every level cross-attends to the scene description tokens
    Fl (six levels) or F4 --1x1--> z [B,D,h,w] (+ description cross-attention, optional)
    text_emb [K,D] --context decoder (attends to [Fg or mean(z), z])--> t [B,K,D]
    s = norm(z)^T norm(t)                                    score map [B,K,h,w]
    open head : F4' = [F4, softmax_k(s) @ t, max_k s]   (K-independent channels)
    paper head: F4' = [F4, s]                            (fixed K = num_classes)
    FPN(F1, F2, F3, F4') -> pixel embeddings [B,D,H/4,W/4]
    both heads: logits = tau * cos(pixel_emb, t_k), upsampled to H,W

The two heads differ only in what the score map adds to the FPN input:

==========  ==========================================  ===========================================
head        FPN input F4'                               vocabulary
==========  ==========================================  ===========================================
``paper``   ``[F4, s]``: the K-channel score map, as in  fixed K (``num_classes``, default the
            the TSMNet paper / DenseCLIP                 number of ``classes``); the export fixes K
                                                         and records ``fixed_vocabulary_size``
``open``    ``[F4, softmax_k(s) @ t, max_k s]``:         any K at run time (our deployed head)
            D + 1 channels whatever K is
==========  ==========================================  ===========================================

Config keys read here (``model_configs/tsmnet*.json``)::

    head                        "open" (default) | "paper"
    num_classes                 paper head: K (default len(classes))
    embed_dim, tile_size, neck_dim, logit_scale_init
    backbone                    see backbones.py
    fusion.reduction            MFRM reduction
    fusion.levels               4 (default: the 4 pyramid maps) | 6 (+ global and local levels:
                                the ViT class token and final patch tokens, as in the paper)
    context_decoder             {"width", "layers", "heads", "gamma_init"}
    description_fusion          scene-description cross-attention on/off (default off)
    description_fusion_levels   "top" (default: on z only) | "all" (every image level, the paper)
    desc_gamma_init             initial gate of the description cross-attention (1e-4)
    text                        see text_encoders.py; ``desc_max_length`` is the description
                                token length (:meth:`TSMNet.tokenize_descriptions`)

Two configs use it: ``tsmnet`` (paper scale: two open_clip ViT-B/16 branches + CLIP text
transformer, six-level fusion, description fusion at every level) and ``tsmnet-tiny``
(EfficientNet-Lite0 branches + MiniLM-L6), both registered as architecture ``"tsmnet"``.

A missing modality is a normalised input of zeros: ``forward_image(optical=None, ...)`` fills
it in; :func:`modality_dropout` zeroes one modality per sample during training (rate: the
config's ``modality_dropout``, read by ``rsvl_train.train``).
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
    GlobalFusion,
    key_padding_bias,
    pick_heads,
)
from .prompting import PromptTokenizer
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


class TSMNet(PromptTokenizer, nn.Module):
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
        self.desc_max_length = int(tcfg.get("desc_max_length", self.max_length))
        self.templates: list[str] = list(tcfg.get("templates", ["{}"]))
        self._tokenizers: dict[int, Any] = {}

        bcfg = config.get("backbone", {})
        self.optical_backbone = build_backbone(bcfg, in_chans=3, image_size=self.tile_size)
        self.sar_backbone = build_backbone(bcfg, in_chans=1, image_size=self.tile_size)
        chans: Sequence[int] = self.optical_backbone.out_channels
        fcfg = config.get("fusion", {})
        self.num_levels = int(fcfg.get("levels", 4))
        if self.num_levels not in (4, 6):
            raise ValueError(f"fusion.levels must be 4 or 6, got {self.num_levels}")
        reduction = int(fcfg.get("reduction", 4))
        self.rectify = nn.ModuleList([MFRM(c, reduction=reduction) for c in chans])
        self.fuse = nn.ModuleList([MFFM(c) for c in chans])
        level_chans = list(chans)
        if self.num_levels == 6:  # level 5: global (class token / pooled), level 6: local tokens
            self.rectify.extend([MFRM(chans[-1], reduction=reduction), MFRM(chans[-1], reduction=reduction)])
            self.fuse.extend([GlobalFusion(chans[-1]), MFFM(chans[-1])])
            level_chans += [chans[-1], chans[-1]]

        self.text_encoder: TextEncoder = build_text_encoder(tcfg, output_dim=D)
        self.visual_proj = nn.Conv2d(chans[-1], D, 1)
        self.global_in = nn.Linear(chans[-1], D) if self.num_levels == 6 else None
        cd = config.get("context_decoder", {})
        self.context_decoder = ContextDecoder(
            D,
            width=int(cd.get("width", 256)),
            layers=int(cd.get("layers", 3)),
            heads=int(cd.get("heads", 4)),
            gamma_init=float(cd.get("gamma_init", 1e-4)),
        )
        self.description_fusion = bool(config.get("description_fusion", False))
        desc_levels = config.get("description_fusion_levels", "top")
        if desc_levels not in ("top", "all"):
            raise ValueError(f"description_fusion_levels must be 'top' or 'all', got {desc_levels!r}")
        desc_gamma = float(config.get("desc_gamma_init", 1e-4))
        self.desc_attn = (
            CrossAttentionBlock(D, pick_heads(D), gamma_init=desc_gamma)
            if self.description_fusion and desc_levels == "top"
            else None
        )
        self.desc_attn_levels = (
            nn.ModuleList([CrossAttentionBlock(c, pick_heads(c), ctx_dim=D, gamma_init=desc_gamma) for c in level_chans])
            if self.description_fusion and desc_levels == "all"
            else None
        )
        self.global_proj = nn.Linear(D, D)

        neck = int(config.get("neck_dim", 64))
        if self.head == "open":
            inject = D + 1
            self.num_classes = None
        else:
            self.num_classes = int(config.get("num_classes") or len(config.get("classes", [])))
            if self.num_classes < 1:
                raise ValueError("the 'paper' head needs num_classes (or a non-empty classes list) in the config")
            inject = self.num_classes
        self.decoder = FPNPixelDecoder([*chans[:3], chans[3] + inject], neck, D)
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
        """Both branches, then MFRM + MFFM at each level -> 4 fused maps (strides 4..32), or 6 with
        ``fusion.levels = 6``: + global ``[B, C, 1, 1]`` + local ``[B, C, h, w]``."""
        if self.num_levels == 6:
            fo, go, lo = self.optical_backbone.forward_levels(optical)
            fs, gs, ls = self.sar_backbone.forward_levels(sar)
            fo = [*fo, go[:, :, None, None], lo]
            fs = [*fs, gs[:, :, None, None], ls]
        else:
            fo = self.optical_backbone(optical)
            fs = self.sar_backbone(sar)
        fused = []
        for rect, fuse, a, b in zip(self.rectify, self.fuse, fo, fs):
            a, b = rect(a, b)
            fused.append(fuse(a, b))
        return fused

    def _describe_levels(self, levels: list[torch.Tensor], description: TextFeatures) -> list[torch.Tensor]:
        """Every level's pixels cross-attend to the description tokens (``description_fusion_levels: all``)."""
        assert self.desc_attn_levels is not None
        bias = key_padding_bias(description.mask, levels[0].dtype)
        out = []
        for block, f in zip(self.desc_attn_levels, levels):
            B, C, h, w = f.shape
            t = block(f.flatten(2).transpose(1, 2), description.tokens, bias)
            out.append(t.transpose(1, 2).reshape(B, C, h, w))
        return out

    def _visual(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``z = visual_proj(local or F4)`` and the global vector ``[B, D]`` (six levels) or None."""
        z = self.visual_proj(levels[5] if self.num_levels == 6 else levels[3])
        g = self.global_in(levels[4].flatten(1)) if self.global_in is not None else None
        return z, g

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

        Returns a dict: ``logits [B,K,H,W]`` (``tau * cos(pixel_emb, t_k)`` for both heads);
        ``score_map [B,K,h,w]`` (cosine at z's stride: 32, or 16 for six-level ViT — use
        ``tau * score_map`` for the auxiliary CE); ``pixel_emb [B,D,H/4,W/4]``;
        ``text_emb_img [B,K,D]`` (per-image adapted, L2-normalised); ``logit_scale`` (tau);
        ``visual_global [B,D]`` (normalised pooled visual embedding, before description fusion).
        """
        optical, sar = self._fill_missing(optical, sar)
        H, W = optical.shape[-2], optical.shape[-1]
        levels = self.fused_features(optical, sar)
        z, g = self._visual(levels)
        B, D, h, w = z.shape
        tokens = z.flatten(2).transpose(1, 2)  # [B, hw, D]
        out: dict[str, torch.Tensor] = {}
        out["visual_global"] = l2_normalize(self.global_proj(g if g is not None else tokens.mean(dim=1)), dim=-1)
        if self.desc_attn_levels is not None and description is not None:
            levels = self._describe_levels(levels, description)
            z, g = self._visual(levels)
            tokens = z.flatten(2).transpose(1, 2)
        if self.desc_attn is not None and description is not None:
            tokens = self.desc_attn(tokens, description.tokens, key_padding_bias(description.mask, tokens.dtype))
        top = levels[3]

        gtok = g.unsqueeze(1) if g is not None else tokens.mean(dim=1, keepdim=True)
        visual = torch.cat([gtok, tokens], dim=1)
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
            extra = torch.cat([tfeat, smax], dim=1)
        else:
            if not (torch.compiler.is_compiling() or torch.jit.is_tracing()) and text_emb.shape[0] != self.num_classes:
                raise ValueError(
                    f"the 'paper' head has a fixed vocabulary of {self.num_classes} classes, got {text_emb.shape[0]}"
                )
            extra = score_map
        if extra.shape[-2:] != top.shape[-2:]:  # six-level ViT: z at stride 16, F4 at stride 32
            extra = upsample_to(extra, top)
        pix = self.decoder([*levels[:3], torch.cat([top, extra], dim=1)])
        tau = self.tau
        h4, w4 = pix.shape[-2], pix.shape[-1]
        pn = l2_normalize(pix, dim=1).flatten(2)  # [B, D, h4*w4]
        logits = (torch.matmul(t, pn) * tau).reshape(B, -1, h4, w4)
        out["pixel_emb"] = pix
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

    # ------------------------------------------------------------- tokenizer (the rest: PromptTokenizer)
    def tokenize_descriptions(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Scene descriptions -> ``(desc_ids, desc_mask)`` ``[N, text.desc_max_length]``."""
        return self.tokenize(texts, max_length=self.desc_max_length)

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
        from ..weights_io.clip import load_clip_into_tsmnet

        report = load_clip_into_tsmnet(model, path, sd)  # strict: every CLIP tensor lands, or a clear refusal
        log.info("tsmnet: %s", report.summary())
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
