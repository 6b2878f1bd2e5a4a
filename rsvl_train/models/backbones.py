"""Image backbones that return a 4-scale feature pyramid (strides 4, 8, 16, 32).

Two families, chosen by ``cfg["type"]``:

- ``"open_clip_vit"``: an open_clip ``VisionTransformer`` (e.g. ``ViT-B-16``) whose tokens are
  tapped after four blocks and turned into a pyramid ViTDet-style (two 2x deconvs, one 2x
  deconv, identity, 2x max-pool). Weights load from an open_clip CLIP state dict
  (:meth:`ClipViTPyramid.load_clip_visual`), with the position embedding resized to the tile
  and a 1-band stem made by summing the RGB stem over its input channels.
- ``"timm"``: a timm ``features_only`` CNN (e.g. ``tf_efficientnet_lite0``), optionally with
  the offline ImageNet Lite0 weights (:meth:`TimmPyramid.load_imagenet`).

Every backbone exposes ``out_channels`` (4 ints) and ``forward(x) -> list[Tensor]`` (4 maps);
``forward_levels(x) -> (maps, global [B, C], local [B, C, h, w])`` adds the two extra levels of
TSMNet's six-level fusion (``C = out_channels[-1]``): the ViT's class token and final patch-token
map (stride 16), or a CNN's pooled and last map.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClipViTPyramid", "TimmPyramid", "build_backbone", "resize_pos_embed", "sum_rgb_stem"]


def sum_rgb_stem(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a 3-channel stem ``[O, 3, k, k]`` to ``in_chans`` inputs (1 band: sum over RGB)."""
    if weight.shape[1] == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    raise ValueError(f"cannot adapt a {weight.shape[1]}-channel stem to {in_chans} channels")


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int], extra_tokens: int = 1) -> torch.Tensor:
    """Bicubic resize of a ViT position embedding ``[extra + g*g, W]`` to a ``grid`` of patches."""
    n_new = grid[0] * grid[1] + extra_tokens
    if pos.shape[0] == n_new:
        return pos
    tok, img = pos[:extra_tokens], pos[extra_tokens:]
    old = math.isqrt(img.shape[0])
    img = img.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    img = F.interpolate(img, size=grid, mode="bicubic", align_corners=False, antialias=True)
    img = img.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([tok, img], dim=0)


class _Deconv2x(nn.Sequential):
    """2x transposed conv (+ BN + GELU unless ``last``)."""

    def __init__(self, cin: int, cout: int, last: bool = False) -> None:
        layers: list[nn.Module] = [nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)]
        if not last:
            layers += [nn.BatchNorm2d(cout), nn.GELU()]
        super().__init__(*layers)


def open_clip_config(name: str) -> dict[str, Any]:
    """open_clip's architecture config for ``name`` (e.g. ``"ViT-B-16"``); an unknown name raises."""
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"open_clip has no model config {name!r}")
    return cfg


class ClipViTPyramid(nn.Module):
    """open_clip ViT (CLIP visual tower architecture) -> 4-scale pyramid.

    Args:
        image_size: square tile size the position embedding is built for.
        in_chans: input bands (3 optical, 1 SAR).
        clip_model: open_clip model config name (``"ViT-B-16"``).
        taps: 1-based block numbers whose outputs feed strides 4, 8, 16, 32.
        quick_gelu: True for OpenAI-trained weights (``ViT-B-16-quickgelu``).
    """

    def __init__(
        self,
        image_size: int,
        in_chans: int = 3,
        clip_model: str = "ViT-B-16",
        taps: Sequence[int] = (3, 6, 9, 12),
        quick_gelu: bool = False,
    ) -> None:
        super().__init__()
        from open_clip.transformer import LayerNorm, QuickGELU, VisionTransformer

        cfg = open_clip_config(clip_model)
        vc = cfg["vision_cfg"]
        width, patch = int(vc["width"]), int(vc["patch_size"])
        self.vit = VisionTransformer(
            image_size=image_size,
            patch_size=patch,
            width=width,
            layers=int(vc["layers"]),
            heads=width // int(vc.get("head_width", 64)),
            mlp_ratio=float(vc.get("mlp_ratio", 4.0)),
            output_dim=int(cfg["embed_dim"]),
            act_layer=QuickGELU if quick_gelu else nn.GELU,
            norm_layer=LayerNorm,
        )
        if in_chans != 3:
            self.vit.conv1 = nn.Conv2d(in_chans, width, kernel_size=patch, stride=patch, bias=False)
        self.taps = tuple(int(t) for t in taps)
        if len(self.taps) != 4:
            raise ValueError("taps must name 4 blocks")
        # only the tapped blocks are needed: drop later blocks, the final norm and the projection
        self.vit.prune_intermediate_layers([t - 1 for t in self.taps], prune_norm=True, prune_head=True)
        self.in_chans = in_chans
        self.patch = patch
        self.width = width
        self.out_channels = (width // 4, width // 2, width, width)
        self.fpn1 = nn.Sequential(_Deconv2x(width, width // 2), _Deconv2x(width // 2, width // 4, last=True))
        self.fpn2 = _Deconv2x(width, width // 2, last=True)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[B, C, H, W]`` -> maps at strides 4, 8, 16, 32 with ``out_channels`` channels."""
        return self.forward_levels(x)[0]

    def forward_levels(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The 4 maps of :meth:`forward` + global (class token ``[B, width]``) + local (last tapped
        block's patch tokens ``[B, width, H/16, W/16]``)."""
        B = x.shape[0]
        gh, gw = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        t = self.vit._embeds(x)
        taps: list[torch.Tensor] = []
        cls = t[:, 0]
        for i, blk in enumerate(self.vit.transformer.resblocks):
            t = blk(t)
            if i + 1 in self.taps:
                taps.append(t[:, 1:].transpose(1, 2).reshape(B, self.width, gh, gw))
                cls = t[:, 0]
        maps = [self.fpn1(taps[0]), self.fpn2(taps[1]), self.fpn3(taps[2]), self.fpn4(taps[3])]
        return maps, cls, taps[3]

    def load_clip_visual(self, state_dict: Mapping[str, torch.Tensor]) -> int:
        """Copy CLIP visual weights (keys without the ``visual.`` prefix) into the ViT.

        The position embedding is resized to this tile's grid; a 1-band stem receives the RGB
        stem summed over channels. Returns the number of tensors copied.
        """
        own = self.vit.state_dict()
        new: dict[str, torch.Tensor] = {}
        for k, v in state_dict.items():
            if k not in own:
                continue  # ln_post / proj / later blocks are pruned
            if k == "conv1.weight":
                v = sum_rgb_stem(v, self.in_chans)
            elif k == "positional_embedding":
                v = resize_pos_embed(v, tuple(self.vit.grid_size))
            if v.shape != own[k].shape:
                raise ValueError(
                    f"CLIP visual tensor {k} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}"
                )
            new[k] = v
        missing = [k for k in own if k not in new]
        if missing:
            raise ValueError(
                f"CLIP checkpoint lacks visual tensors {missing[:5]} (not a {type(self).__name__} layout?)"
            )
        self.vit.load_state_dict(new, strict=True)
        return len(new)


class TimmPyramid(nn.Module):
    """timm ``features_only`` CNN returning 4 maps (``out_indices`` picks strides 4..32)."""

    def __init__(self, model: str, in_chans: int = 3, out_indices: Sequence[int] = (1, 2, 3, 4),
                 frozen_blocks: int = 0) -> None:
        super().__init__()
        import timm

        self.model_name = model
        self.body = timm.create_model(
            model, pretrained=False, features_only=True, out_indices=tuple(out_indices), in_chans=in_chans
        )
        self.out_channels = tuple(int(c) for c in self.body.feature_info.channels())
        self.reductions = tuple(int(r) for r in self.body.feature_info.reduction())
        self.freeze_early(frozen_blocks)

    def freeze_early(self, n_blocks: int) -> None:
        """Freeze the stem and the first ``n_blocks`` block groups (their BatchNorm statistics still
        adapt). Depthwise-convolution backward at high resolution dominates a CPU training step
        (measured: ~15x slower steps with the stride-2/4 blocks trainable); the frozen weights are
        the pretrained ones and are not stored in checkpoints."""
        if n_blocks <= 0:
            return
        for mod in [self.body.conv_stem, self.body.bn1, *list(self.body.blocks)[:n_blocks]]:
            for p in mod.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[B, C, H, W]`` -> the 4 selected feature maps."""
        return list(self.body(x))

    def forward_levels(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The 4 maps + global (last map average-pooled ``[B, C]``) + local (the last map)."""
        maps = self.forward(x)
        return maps, maps[-1].mean(dim=(2, 3)), maps[-1]

    def load_imagenet(self) -> int:
        """Load the offline ImageNet weights (Lite0 only); a 1-band stem gets the summed RGB stem."""
        if self.model_name != "tf_efficientnet_lite0":
            raise ValueError(f"offline ImageNet weights exist only for tf_efficientnet_lite0, not {self.model_name}")
        from ..pretrained import load_lite0_imagenet

        return load_lite0_imagenet(self.body)


def build_backbone(cfg: Mapping[str, Any], in_chans: int, image_size: int) -> nn.Module:
    """Build one branch from a backbone config (see module docstring for the keys)."""
    kind = cfg.get("type", "timm")
    if kind == "open_clip_vit":
        return ClipViTPyramid(
            image_size=image_size,
            in_chans=in_chans,
            clip_model=cfg.get("model", "ViT-B-16"),
            taps=cfg.get("taps", (3, 6, 9, 12)),
            quick_gelu=bool(cfg.get("quick_gelu", False)),
        )
    if kind == "timm":
        return TimmPyramid(cfg.get("model", "tf_efficientnet_lite0"), in_chans, cfg.get("out_indices", (1, 2, 3, 4)),
                           frozen_blocks=int(cfg.get("frozen_blocks", 0)))
    raise ValueError(f"unknown backbone type {kind!r}; expected 'open_clip_vit' or 'timm'")
