"""open_clip / OpenAI CLIP ViT-B/16 weights -> ``tsmnet``'s two ViT branches and CLIP text tower.

Accepted files (:func:`rsvl_train.pretrained.read_state_dict`): an open_clip checkpoint
(``open_clip_pytorch_model.bin`` / ``.safetensors``, or a training save ``{"state_dict": ...}``
with ``module.`` prefixes) and OpenAI's ``ViT-B-16.pt`` (a TorchScript archive, or its plain state
dict). Key layout: ``visual.*`` (vision tower), ``token_embedding``, ``positional_embedding``,
``transformer.*``, ``ln_final``, ``text_projection`` (text tower), ``logit_scale``.

Mapping, with the documented transforms:

- ``visual.*`` -> ``optical_backbone.vit.*`` **and** ``sar_backbone.vit.*`` (the same tensors);
  ``visual.positional_embedding`` is resized bicubically to the tile's patch grid when it differs
  (:func:`rsvl_train.models.backbones.resize_pos_embed`); the SAR branch's 1-band stem
  ``sar_backbone.vit.conv1.weight [768, 1, 16, 16]`` is the RGB stem **summed over its 3 input
  channels** (:func:`~rsvl_train.models.backbones.sum_rgb_stem`): a SAR band fed as a grey image
  ``(s, s, s)`` gives exactly the response of the summed stem to ``s``, so the pretrained filters
  see what they saw on grey images (the mean would scale activations by 1/3).
- text tower keys -> ``text_encoder.clip.*`` unchanged.
- intentionally unused: ``visual.ln_post``, ``visual.proj`` (our branches tap blocks, no pooled
  head), ``logit_scale`` (TSMNet's temperature is its own), OpenAI's ``input_resolution``,
  ``context_length``, ``vocab_size``.
- intentionally new (not in any CLIP file): everything outside ``*_backbone.vit`` and
  ``text_encoder.clip`` (pyramid deconvs, fusion, context tokens, decoder, ...).

OpenAI-trained weights use QuickGELU: a TorchScript archive is refused for a model built
without ``quick_gelu: true`` (backbone and text), as the activation is not a weight.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..pretrained import (
    LoadReport,
    PretrainedWeightsError,
    check_keys,
    is_torchscript,
    read_state_dict,
)
from .identify import clip_arch, describe, is_clip

__all__ = ["load_clip_into_tsmnet", "map_clip_to_tsmnet"]

#: Tensors of a CLIP file that have no place in TSMNet (see the module docstring).
CLIP_UNUSED = ("visual.ln_post.weight", "visual.ln_post.bias", "visual.proj", "logit_scale",
               "input_resolution", "context_length", "vocab_size")
#: The submodules of TSMNet that CLIP weights fill.
CLIP_TARGETS = ("optical_backbone.vit.", "sar_backbone.vit.", "text_encoder.clip.")


def _uses_quick_gelu(module: nn.Module) -> bool:
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in module.modules())


def map_clip_to_tsmnet(model: nn.Module, sd: Mapping[str, torch.Tensor], path: str
                       ) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Our state-dict entries made from a CLIP state dict, and the report; raises on any
    architecture or shape mismatch (the tensors are not loaded yet)."""
    from ..models.backbones import ClipViTPyramid, resize_pos_embed, sum_rgb_stem
    from ..models.text_encoders import ClipTextEncoder

    name = Path(path).name
    if not is_clip(sd):
        raise PretrainedWeightsError(f"{name} is {describe(sd)}, but tsmnet's --pretrained needs an open_clip / "
                                     "OpenAI CLIP checkpoint (keys visual.*, token_embedding, transformer.*)")
    branches = {"optical_backbone": model.optical_backbone, "sar_backbone": model.sar_backbone}
    if not all(isinstance(b, ClipViTPyramid) for b in branches.values()):
        raise PretrainedWeightsError(f"{name}: CLIP weights need tsmnet's 'open_clip_vit' backbone, this model has "
                                     f"{type(model.optical_backbone).__name__}; use --model tsmnet")
    vit = model.optical_backbone.vit
    want = (vit.conv1.weight.shape[0], len(vit.transformer.resblocks), model.optical_backbone.patch)
    width, layers, patch = clip_arch(sd)
    if width != want[0] or patch != want[2] or layers < want[1]:
        raise PretrainedWeightsError(
            f"{name} is a CLIP ViT checkpoint of visual width {width}, {layers} layers, patch {patch}, but "
            f"{model.config.get('name', 'tsmnet')} needs {model.config.get('backbone', {}).get('model', 'ViT-B-16')} "
            f"(width {want[0]}, {want[1]} layers, patch {want[2]})")
    report = LoadReport(source="open_clip", kind="clip", path=str(path))
    out: dict[str, torch.Tensor] = {}
    visual = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    for prefix, branch in branches.items():
        for k in branch.vit.state_dict():
            if k not in visual:
                continue  # reported as missing below
            v = visual[k]
            if k == "conv1.weight" and branch.in_chans != v.shape[1]:
                v = sum_rgb_stem(v, branch.in_chans)
                report.transformed[f"visual.{k} -> {prefix}"] = "summed over RGB"
            elif k == "positional_embedding":
                grid = tuple(branch.vit.grid_size)
                if v.shape[0] != grid[0] * grid[1] + 1:
                    report.transformed[f"visual.{k} -> {prefix}"] = f"resized to {grid[0]}x{grid[1]} patches"
                v = resize_pos_embed(v, grid)
            out[f"{prefix}.vit.{k}"] = v
    used = {f"visual.{k}" for k in visual if any(f"{p}.vit.{k}" in out for p in branches)}
    if isinstance(model.text_encoder, ClipTextEncoder):
        for k in model.text_encoder.clip.state_dict():
            if k in sd:
                out[f"text_encoder.clip.{k}"] = sd[k]
                used.add(k)
    unused = [k for k in sd if k not in used]
    unexpected = [k for k in unused if k not in CLIP_UNUSED and not _pruned_block(k, len(vit.transformer.resblocks))]
    own = model.state_dict()
    missing = [k for k in own if k.startswith(CLIP_TARGETS) and k not in out]
    check_keys(name, "CLIP ViT-B/16 checkpoint for tsmnet", missing, unexpected)
    for k, v in out.items():
        if v.shape != own[k].shape:
            raise PretrainedWeightsError(f"{name}: tensor for {k} has shape {tuple(v.shape)}, the model expects "
                                         f"{tuple(own[k].shape)}")
    report.loaded = len(out)
    report.unused = unused
    report.new = [k for k in own if k not in out]
    return out, report


def _pruned_block(key: str, kept: int) -> bool:
    """A visual block after the last tapped one (our ViT drops them)."""
    prefix = "visual.transformer.resblocks."
    return key.startswith(prefix) and int(key[len(prefix):].split(".")[0]) >= kept


def load_clip_into_tsmnet(model: nn.Module, path: str | Path,
                          state_dict: Mapping[str, torch.Tensor] | None = None) -> LoadReport:
    """Load a local CLIP checkpoint into ``tsmnet`` (see the module docstring); returns the report.
    ``state_dict``: the file's tensors when the caller has read them already (not read again)."""
    p = Path(path)
    sd = dict(state_dict) if state_dict is not None else read_state_dict(p, "an open_clip CLIP checkpoint")
    if p.is_file() and is_torchscript(p) and not (
            _uses_quick_gelu(model.optical_backbone) and _uses_quick_gelu(model.text_encoder)):
        raise PretrainedWeightsError(
            f"{p.name} is an OpenAI CLIP TorchScript archive (trained with QuickGELU) but the model uses GELU: "
            "build it with backbone.quick_gelu=true and text.quick_gelu=true")
    out, report = map_clip_to_tsmnet(model, sd, str(p))
    if p.is_file() and is_torchscript(p):
        report.source = "openai"
    dtype = {k: v.dtype for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.to(dtype[k]) for k, v in out.items()}, strict=False)
    if hasattr(model.text_encoder, "_freeze"):
        model.text_encoder._freeze()
    return report
