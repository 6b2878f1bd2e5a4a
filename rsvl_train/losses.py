"""Training losses for TSMNet (CE + Dice + object CE + scene InfoNCE) and CADFormer (0.9 CE + 0.1 Dice).

Loss weights: :data:`TSMNET_LOSS_WEIGHTS` (our default, used for the tiny models) and
:data:`PAPER_LOSS_WEIGHTS` (the TSMNet paper's ``object : scene : CE : Dice = 1 : 1 : 1 : 1``, the
default of the ``tsmnet-*`` recipes).

All losses take raw logits, ignore pixels labelled ``ignore_index`` (255) and return a scalar
tensor. A batch whose pixels are all ignored gives a zero loss that still has a graph (so
``backward()`` works), never NaN.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CADFORMER_LOSS_WEIGHTS",
    "PAPER_LOSS_WEIGHTS",
    "TSMNET_LOSS_WEIGHTS",
    "cadformer_loss",
    "ce_loss",
    "dice_loss",
    "info_nce",
    "object_loss",
    "tsmnet_loss",
]


#: Our default weights (``ce``, ``dice``, ``object``, ``scene``): the shipped ``tsmnet-tiny`` was
#: trained with them (synthetic mIoU 0.880); 1:1:1:1 has not been measured on the tiny model.
TSMNET_LOSS_WEIGHTS: dict[str, float] = {"ce": 1.0, "dice": 1.0, "object": 0.4, "scene": 0.1}
#: The TSMNet paper's total loss: object + scene + CE + Dice, weighted 1:1:1:1.
PAPER_LOSS_WEIGHTS: dict[str, float] = {"ce": 1.0, "dice": 1.0, "object": 1.0, "scene": 1.0}
#: CADFormer (paper and ours): 0.9 CE + 0.1 Dice.
CADFORMER_LOSS_WEIGHTS: dict[str, float] = {"ce": 0.9, "dice": 0.1}


def _check(logits: Tensor, target: Tensor, name: str) -> None:
    if logits.dim() != 4 or target.dim() != 3:
        raise ValueError(
            f"{name}: expected logits [B, K, H, W] and target [B, H, W], got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}"
        )
    if logits.shape[0] != target.shape[0] or logits.shape[-2:] != target.shape[-2:]:
        raise ValueError(
            f"{name}: logits {tuple(logits.shape)} and target {tuple(target.shape)} disagree in batch or "
            "spatial size; resize the logits to the target first"
        )


def ce_loss(logits: Tensor, target: Tensor, ignore_index: int = 255, weight: Tensor | None = None) -> Tensor:
    """Pixel-wise cross entropy ``mean(-log softmax(logits)[target])`` over non-ignored pixels.

    Args:
        logits: ``[B, K, H, W]`` raw scores.
        target: ``[B, H, W]`` class ids, ``ignore_index`` for ignored pixels.
        weight: optional per-class weights ``[K]`` (weighted mean, as in ``F.cross_entropy``).
    """
    _check(logits, target, "ce_loss")
    target = target.long()
    if not (target != ignore_index).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index)


def dice_loss(logits: Tensor, target: Tensor, ignore_index: int = 255, smooth: float = 1.0) -> Tensor:
    """Multi-class soft Dice loss on softmax probabilities, ignoring ``ignore_index`` pixels.

    Per class ``k`` over the whole batch: ``dice_k = (2 * sum(p_k * y_k) + smooth) /
    (sum(p_k) + sum(y_k) + smooth)``; the loss is ``1 - mean_k dice_k`` over all ``K``
    classes (a class absent from both prediction and target scores ~1 thanks to ``smooth``).
    A perfect confident prediction gives ~0.
    """
    _check(logits, target, "dice_loss")
    k = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)  # [B,1,H,W]
    probs = logits.float().softmax(dim=1) * valid
    safe = torch.where(target == ignore_index, torch.zeros_like(target), target).long()
    onehot = F.one_hot(safe, k).permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2.0 * inter + smooth) / (denom + smooth)
    return 1.0 - dice.mean()


def object_loss(score_map: Tensor, target: Tensor, ignore_index: int = 255,
                temperature: float | Tensor = 1.0) -> Tensor:
    """Object-level CE (DenseCLIP-style) on the low-resolution text-pixel score map.

    The target ``[B, H, W]`` is nearest-downsampled to the score map's ``[h, w]`` (ignored
    pixels stay ignored), then ``ce_loss(score_map / temperature, target_small)``. The score
    map holds cosines in [-1, 1]: pass the model's temperature (``1 / tau``, :func:`tsmnet_loss`
    does) or the softmax over K is nearly flat.
    """
    if score_map.dim() != 4 or target.dim() != 3:
        raise ValueError(
            f"object_loss: expected score_map [B, K, h, w] and target [B, H, W], got "
            f"{tuple(score_map.shape)} and {tuple(target.shape)}"
        )
    h, w = score_map.shape[-2:]
    small = F.interpolate(target[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    return ce_loss(score_map / temperature, small, ignore_index=ignore_index)


def info_nce(a: Tensor, b: Tensor, temperature: float = 0.07) -> Tensor:
    """Symmetric InfoNCE (CLIP loss) between paired embeddings ``a[i] <-> b[i]``.

    Both ``[B, D]`` are L2-normalised here; ``logits = a @ b.T / temperature``; the loss is
    the mean of the row-wise and column-wise cross entropies against the diagonal.
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"info_nce: expected two [B, D] tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    logits = a @ b.t() / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def tsmnet_loss(
    outputs: Mapping[str, Tensor],
    target: Tensor,
    ce_weight: float = TSMNET_LOSS_WEIGHTS["ce"],
    dice_weight: float = TSMNET_LOSS_WEIGHTS["dice"],
    object_weight: float = TSMNET_LOSS_WEIGHTS["object"],
    scene_weight: float = TSMNET_LOSS_WEIGHTS["scene"],
    temperature: float = 0.07,
    ignore_index: int = 255,
) -> tuple[Tensor, dict[str, Tensor]]:
    """TSMNet training loss: ``ce + dice + object CE + scene InfoNCE`` (weighted).

    Args:
        outputs: the model's training outputs. ``logits`` ``[B, K, H', W']`` is required
            (bilinearly resized to the target when its size differs); ``score_map``
            ``[B, K, h, w]`` adds the object loss, on ``logit_scale * score_map`` (the model's
            tau; without ``logit_scale``, ``score_map / temperature``); ``visual_global``
            ``[B, D]`` together with ``desc_emb`` ``[B, D]`` adds the scene InfoNCE (skipped
            for B < 2).
        target: ``[B, H, W]`` class ids, ``ignore_index`` ignored.
        temperature: the InfoNCE temperature, and the object loss's when the outputs carry no
            ``logit_scale``.

    Returns:
        ``(total, parts)`` where ``parts`` holds the detached unweighted terms
        (``ce``, ``dice`` and, when computed, ``object``, ``scene``).
    """
    logits = outputs["logits"]
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    parts: dict[str, Tensor] = {
        "ce": ce_loss(logits, target, ignore_index),
        "dice": dice_loss(logits, target, ignore_index),
    }
    total = ce_weight * parts["ce"] + dice_weight * parts["dice"]
    if outputs.get("score_map") is not None and object_weight:
        tau = outputs.get("logit_scale")
        obj_t = 1.0 / tau if tau is not None else temperature
        parts["object"] = object_loss(outputs["score_map"], target, ignore_index, temperature=obj_t)
        total = total + object_weight * parts["object"]
    vg, de = outputs.get("visual_global"), outputs.get("desc_emb")
    if vg is not None and de is not None and scene_weight and vg.shape[0] > 1:
        parts["scene"] = info_nce(vg, de, temperature)
        total = total + scene_weight * parts["scene"]
    return total, {k: v.detach() for k, v in parts.items()}


def cadformer_loss(logits: Tensor, mask: Tensor, ce_weight: float = CADFORMER_LOSS_WEIGHTS["ce"],
                   dice_weight: float = CADFORMER_LOSS_WEIGHTS["dice"]) -> Tensor:
    """CADFormer loss ``0.9 * CE + 0.1 * Dice`` for binary referring masks.

    Args:
        logits: ``[B, 2, H, W]`` (background, object) scores, or ``[B, 1, H, W]`` object
            logits (treated as the two-class logits ``[0, l]``, i.e. ``p = sigmoid(l)``);
            resized bilinearly to the mask when the size differs.
        mask: ``[B, H, W]`` in {0, 1} (255 ignored).
    """
    if logits.dim() != 4 or logits.shape[1] not in (1, 2):
        raise ValueError(f"cadformer_loss: expected logits [B, 2, H, W] or [B, 1, H, W], got {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
    if logits.shape[-2:] != mask.shape[-2:]:
        logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
    mask = mask.long()
    return ce_weight * ce_loss(logits, mask) + dice_weight * dice_loss(logits, mask)
