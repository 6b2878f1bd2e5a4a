"""Losses on tiny hand-computed inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rsvl_train.losses import cadformer_loss, ce_loss, dice_loss, info_nce, object_loss, tsmnet_loss


def test_ce_by_hand() -> None:
    logits = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])[None, :, None, :]  # [1,3,1,2]
    target = torch.tensor([[[0, 2]]])
    lse0 = math.log(math.exp(1) + math.exp(0) + math.exp(3))
    lse1 = math.log(math.exp(2) + math.exp(0) + math.exp(-1))
    expect = ((lse0 - 1.0) + (lse1 - (-1.0))) / 2
    assert ce_loss(logits, target).item() == pytest.approx(expect, rel=1e-6)
    # the ignored pixel drops out
    assert ce_loss(logits, torch.tensor([[[0, 255]]])).item() == pytest.approx(lse0 - 1.0, rel=1e-6)


def test_all_ignored_is_zero_with_grad() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.full((1, 2, 2), 255)
    loss = ce_loss(logits, target) + dice_loss(logits, target)
    assert torch.isfinite(loss)
    loss.backward()


def test_dice_by_hand() -> None:
    logits = torch.zeros(1, 2, 1, 2)  # p = 0.5 everywhere
    target = torch.tensor([[[0, 1]]])
    # per class: inter 0.5, sum p 1, sum y 1
    assert dice_loss(logits, target, smooth=0.0).item() == pytest.approx(1 - 1.0 / 2.0)
    assert dice_loss(logits, target, smooth=1.0).item() == pytest.approx(1 - 2.0 / 3.0)


def test_dice_perfect_and_ignore() -> None:
    target = torch.tensor([[[0, 1, 2], [2, 1, 255]]])
    safe = target.clamp(max=2)
    logits = 50.0 * F.one_hot(safe, 3).permute(0, 3, 1, 2).float()
    assert dice_loss(logits, target).item() < 1e-4
    worse = logits.clone()
    worse[0, :, 1, 2] = torch.tensor([0.0, 0.0, 99.0])  # change only the ignored pixel
    assert dice_loss(worse, target).item() == pytest.approx(dice_loss(logits, target).item(), abs=1e-7)
    wrong = logits.roll(1, dims=1)
    assert dice_loss(wrong, target).item() > 0.7  # smooth=1 keeps it below 1 on 5 pixels


def test_object_loss_downsamples_target() -> None:
    torch.manual_seed(0)
    score = torch.randn(2, 4, 3, 3)
    target = torch.randint(0, 4, (2, 6, 6))
    target[0, 0, 0] = 255
    expect = ce_loss(score, target[:, ::2, ::2])
    assert object_loss(score, target).item() == pytest.approx(expect.item(), rel=1e-6)


def test_info_nce() -> None:
    a = torch.eye(2)
    by_hand = math.log(1 + math.exp(-1.0))  # logits [[1,0],[0,1]] at temperature 1
    assert info_nce(a, a, temperature=1.0).item() == pytest.approx(by_hand, rel=1e-6)
    torch.manual_seed(0)
    x = torch.randn(8, 16)
    aligned = info_nce(x, x + 0.01 * torch.randn(8, 16))
    shuffled = info_nce(x, x[torch.randperm(8)])
    assert aligned < shuffled
    y = torch.randn(8, 16)
    assert info_nce(x, y).item() == pytest.approx(info_nce(y, x).item(), rel=1e-6)  # symmetric


def test_tsmnet_loss_parts() -> None:
    torch.manual_seed(0)
    target = torch.randint(0, 5, (2, 16, 16))
    out = {"logits": torch.randn(2, 5, 8, 8, requires_grad=True), "score_map": torch.randn(2, 5, 4, 4)}
    total, parts = tsmnet_loss(out, target)
    assert set(parts) == {"ce", "dice", "object"}
    assert total.item() == pytest.approx((parts["ce"] + parts["dice"] + 0.4 * parts["object"]).item(), rel=1e-6)
    out.update(visual_global=torch.randn(2, 8), desc_emb=torch.randn(2, 8))
    total2, parts2 = tsmnet_loss(out, target, scene_weight=0.5)
    assert "scene" in parts2
    assert total2.item() == pytest.approx(total.item() + 0.5 * parts2["scene"].item(), rel=1e-5)
    total2.backward()
    assert out["logits"].grad is not None


def test_cadformer_loss() -> None:
    torch.manual_seed(0)
    mask = torch.randint(0, 2, (2, 8, 8))
    l1 = torch.randn(2, 1, 8, 8)
    two = torch.cat([torch.zeros_like(l1), l1], 1)
    expect = 0.9 * ce_loss(two, mask) + 0.1 * dice_loss(two, mask)
    assert cadformer_loss(l1, mask).item() == pytest.approx(expect.item(), rel=1e-6)
    assert cadformer_loss(two, mask).item() == pytest.approx(expect.item(), rel=1e-6)
    perfect = 40.0 * F.one_hot(mask, 2).permute(0, 3, 1, 2).float()
    assert cadformer_loss(perfect, mask).item() < 1e-3


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="B, K, H, W"):
        ce_loss(torch.zeros(3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="resize"):
        dice_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 5, 5, dtype=torch.long))


def test_object_loss_is_temperature_scaled_by_tau() -> None:
    """The score map holds cosines: the object CE runs on ``tau * s`` (hand-computed)."""
    score = torch.tensor([0.5, -0.5]).view(1, 2, 1, 1)  # class 0 wins by a cosine margin of 1
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    tau = torch.tensor(3.0)
    # logits [1.5, -1.5]: CE = log(1 + exp(-3)) = 0.04859; unscaled it would be log(1 + exp(-1)) = 0.3133
    by_hand = math.log(1 + math.exp(-3.0))
    assert object_loss(score, target, temperature=1 / tau).item() == pytest.approx(by_hand, rel=1e-4)
    assert object_loss(score, target).item() == pytest.approx(math.log(1 + math.exp(-1.0)), rel=1e-6)
    out = {"logits": torch.zeros(1, 2, 2, 2), "score_map": score, "logit_scale": tau}
    _, parts = tsmnet_loss(out, target)
    assert parts["object"].item() == pytest.approx(by_hand, rel=1e-4)


def test_loss_weight_sets() -> None:
    from rsvl_train.losses import CADFORMER_LOSS_WEIGHTS, PAPER_LOSS_WEIGHTS, TSMNET_LOSS_WEIGHTS

    assert PAPER_LOSS_WEIGHTS == {"ce": 1.0, "dice": 1.0, "object": 1.0, "scene": 1.0}
    assert TSMNET_LOSS_WEIGHTS == {"ce": 1.0, "dice": 1.0, "object": 0.4, "scene": 0.1}
    assert CADFORMER_LOSS_WEIGHTS == {"ce": 0.9, "dice": 0.1}
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8))
    out = {"logits": torch.randn(2, 3, 8, 8), "score_map": torch.randn(2, 3, 2, 2).tanh(),
           "logit_scale": torch.tensor(14.0), "visual_global": torch.randn(2, 4), "desc_emb": torch.randn(2, 4)}
    total, parts = tsmnet_loss(out, target, **{f"{k}_weight": v for k, v in PAPER_LOSS_WEIGHTS.items()})
    assert total.item() == pytest.approx(sum(parts[k].item() for k in ("ce", "dice", "object", "scene")), rel=1e-5)
