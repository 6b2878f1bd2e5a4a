"""The TSMNet authors' released checkpoint (``--checkpoint-format official``) -> ``tsmnet-official``.

The official code (yeyuanxin110/TSMNet, ``TSMNet_fpn_vit-b_256x256_100epoches.py``) saves an
mmseg checkpoint ``{"meta": ..., "state_dict": ...}``. :data:`RULES` renames every key of its
inference path onto :class:`rsvl_train.models.tsmnet_official.TSMNetOfficial` (shapes unchanged;
:func:`to_ours` / :func:`to_official` are inverse); the official modules that only feed training
losses (:data:`TRAINING_ONLY`: the description fusion, contrastive and similarity heads, never
called by the official ``encode_decode``) are dropped and reported. The key list this was
written against is ``tests/fixtures/tsmnet_official_keys.json`` (transcribed from the official
code: verified on key names and shapes, not on the released weights).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .pretrained import LoadReport, PretrainedWeightsError, check_keys, read_state_dict
from .weights_io.identify import describe

__all__ = ["RULES", "TRAINING_ONLY", "load_official_checkpoint", "map_official", "to_official", "to_ours"]

#: (official, ours) key templates: a template ending in "." is a prefix, else a whole key;
#: ``{i}`` stands for a block index. Read left to right or right to left, first match wins.
RULES: tuple[tuple[str, str], ...] = (
    ("channel_conv.conv.", "sar_stem."),
    ("backbone_sar.", "sar_backbone."),
    ("backbone.", "optical_backbone."),
    ("contexts", "text_encoder.contexts"),
    ("text_encoder.", "text_encoder."),
    ("gamma", "gamma"),
    ("context_decoder.", "context_decoder."),
    ("FRM.", "rectify."),
    ("FFM.", "fuse."),
    ("neck.lateral_convs.{i}.conv.", "neck.lateral.{i}."),
    ("neck.fpn_convs.{i}.conv.", "neck.smooth.{i}."),
    ("decode_head.conv_seg.", "decoder.classifier."),
    ("decode_head.scale_heads.", "decoder.scale_heads."),
)
#: Official top-level modules on the training path only (not used by ``encode_decode``).
TRAINING_ONLY = ("conv1x11", "conv768_512", "inner_blocks", "inner_blocks2", "Linear", "cls_seg", "cross_attn",
                 "proj", "img_projectors", "text_projector", "logit_scale", "cross_attentions")


def _rename(key: str, src: str, dst: str) -> str | None:
    """``key`` with template ``src`` replaced by ``dst``, or None when ``src`` does not match."""
    pat = "^" + re.escape(src).replace(r"\{i\}", r"(\d+)") + ("" if src.endswith(".") else "$")
    m = re.match(pat, key)
    if not m:
        return None
    head = dst.replace("{i}", m.group(1)) if m.groups() else dst
    return head + key[m.end():]


def to_ours(key: str) -> str | None:
    """Our key for an official key; None for a training-only key; raises KeyError for an unknown one."""
    if key.split(".")[0] in TRAINING_ONLY:
        return None
    for official, ours in RULES:
        new = _rename(key, official, ours)
        if new is not None:
            return new
    raise KeyError(key)


def to_official(key: str) -> str:
    """The official key of one of our keys (inverse of :func:`to_ours`)."""
    for official, ours in RULES:
        new = _rename(key, ours, official)
        if new is not None:
            return new
    raise KeyError(key)


def check_official(sd: dict[str, torch.Tensor], name: str) -> None:
    """Refuse, in one line, a state dict that is not an official TSMNet one (before any model is built)."""
    if "backbone_sar.conv1.weight" not in sd or "decode_head.conv_seg.weight" not in sd:
        raise PretrainedWeightsError(f"{name} is {describe(sd)}, not an official TSMNet checkpoint (mmseg state_dict "
                                     "with backbone.*, backbone_sar.*, decode_head.*); for an rsvl-train checkpoint "
                                     "use --checkpoint-format rsvl")


def map_official(model: nn.Module, sd: dict[str, torch.Tensor], path: str) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Our state dict from an official one + the report; raises unless every model key is filled,
    every official key is mapped or training-only, and all shapes agree."""
    name = Path(path).name
    check_official(sd, name)
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    unexpected: list[str] = []
    for k, v in sd.items():
        try:
            ours = to_ours(k)
        except KeyError:
            unexpected.append(k)
            continue
        if ours is None:
            unused.append(k)
        elif ours not in own:
            unexpected.append(k)
        else:
            out[ours] = v
    missing = [k for k in own if k not in out]
    check_keys(name, "official TSMNet ViT-B/16 checkpoint", [to_official(k) for k in missing], unexpected)
    for k, v in out.items():
        if v.shape != own[k].shape:
            hint = ""
            if k == "decoder.classifier.weight":
                hint = f" (the checkpoint has {v.shape[0]} classes: set num_classes and classes to match)"
            raise PretrainedWeightsError(f"{name}: {to_official(k)} has shape {tuple(v.shape)}, "
                                         f"tsmnet-official expects {tuple(own[k].shape)}{hint}")
    report = LoadReport(source="official", kind="tsmnet-official", path=str(path), loaded=len(out), unused=unused)
    return out, report


def load_official_checkpoint(path: str | os.PathLike[str], **overrides: Any) -> tuple[nn.Module, LoadReport]:
    """Build ``tsmnet-official`` (registry config + ``overrides``) and load the authors' checkpoint."""
    from .factory import create_model_from_config, get_model_config

    sd = read_state_dict(path, "an official TSMNet checkpoint")
    check_official(sd, Path(path).name)
    model = create_model_from_config(get_model_config("tsmnet-official", **overrides))
    out, report = map_official(model, sd, str(path))
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in out.items()}, strict=True)
    return model.eval(), report
