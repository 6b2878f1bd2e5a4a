"""What a state dict is, in words, for the one-line refusals of the pretrained loaders."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = ["block_counts", "describe", "is_clip", "is_swin", "swin_name"]

_SWIN_NAMES = {(96, (2, 2, 6, 2)): "Swin-T", (96, (2, 2, 18, 2)): "Swin-S", (128, (2, 2, 18, 2)): "Swin-B",
               (192, (2, 2, 18, 2)): "Swin-L"}


def block_counts(sd: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    """Numbers of blocks per stage: ``pattern`` has two groups (stage, block), e.g. Swin
    ``r"layers\\.(\\d+)\\.blocks\\.(\\d+)\\."``; stages without blocks count 0."""
    found: dict[int, set[int]] = {}
    for k in sd:
        m = re.match(pattern, k)
        if m:
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return [len(found.get(i, ())) for i in range(max(found) + 1)] if found else []


def count_layers(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of ``{prefix}N.`` blocks (e.g. ``visual.transformer.resblocks.``)."""
    idx = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def is_clip(sd: Mapping[str, torch.Tensor]) -> bool:
    return "visual.conv1.weight" in sd and "token_embedding.weight" in sd


def is_swin(sd: Mapping[str, torch.Tensor]) -> bool:
    return "patch_embed.proj.weight" in sd and any(".relative_position_bias_table" in k for k in sd)


def swin_name(embed: int, depths: tuple[int, ...]) -> str:
    return _SWIN_NAMES.get((embed, depths), f"Swin (embed {embed})")


def clip_arch(sd: Mapping[str, torch.Tensor]) -> tuple[int, int, int]:
    """``(width, layers, patch)`` of a CLIP state dict's visual tower."""
    w = sd["visual.conv1.weight"]
    return int(w.shape[0]), count_layers(sd, "visual.transformer.resblocks."), int(w.shape[-1])


def describe(sd: Mapping[str, torch.Tensor]) -> str:
    """``"a timm Swin-T checkpoint (embed 96, depths 2,2,6,2)"`` and the like."""
    if is_clip(sd):
        width, layers, patch = clip_arch(sd)
        return f"a CLIP checkpoint (visual width {width}, {layers} layers, patch {patch})"
    if is_swin(sd):
        depths = tuple(block_counts(sd, r"layers\.(\d+)\.blocks\.(\d+)\."))
        embed = int(sd["patch_embed.proj.weight"].shape[0])
        return f"a timm {swin_name(embed, depths)} checkpoint (embed {embed}, depths {','.join(map(str, depths))})"
    if any(k.startswith(("bert.", "embeddings.word_embeddings")) for k in sd):
        return "a HuggingFace BERT state dict (give its folder, with config.json)"
    if any(k.startswith("backbone_sar.") for k in sd) and any(k.startswith("decode_head.") for k in sd):
        return "an official TSMNet (mmseg) checkpoint (use --checkpoint PATH --checkpoint-format official)"
    if any(k.startswith("decode_head.") for k in sd):
        return "an mmsegmentation checkpoint of a whole segmentor"
    first = next(iter(sd), "<none>")
    return f"a state dict of {len(sd)} tensors (first key {first!r})"
