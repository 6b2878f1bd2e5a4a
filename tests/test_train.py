"""rsvl-train: a tiny run end to end, checkpoints (safetensors + JSON), resume, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def _cfg(out: Path, **kw):
    from rsvl_train.train import TrainConfig

    base = {"model": "tsmnet-tiny", "data": "synthetic", "out": str(out), "epochs": 1, "batch_size": 4,
            "tile": 64, "train_tiles": 8, "val_tiles": 4, "seed": 0, "workers": 0}
    return TrainConfig(**{**base, **kw})


def test_train_checkpoint_and_resume(tmp_path: Path) -> None:
    from rsvl_train.checkpoint import load_checkpoint
    from rsvl_train.train import Trainer

    out = tmp_path / "run"
    t = Trainer(_cfg(out))
    summary = t.fit()
    assert 0.0 <= summary["best"] <= 1.0 and summary["metric"] == "mIoU"
    for f in ("best.safetensors", "best.json", "last.safetensors", "last.json", "last.optim.safetensors",
              "history.jsonl", "summary.json"):
        assert (out / f).is_file(), f
    assert not list(out.glob("*.pt")) and not list(out.glob("*.pth"))
    hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert len(hist) == 1 and {"mIoU", "OA", "Kappa", "train_loss"} <= set(hist[0])

    # the checkpoint reproduces the trained model exactly (frozen MiniLM/Lite0 parts come from pip)
    model = load_checkpoint(out / "last")
    x, s = torch.randn(1, 3, 64, 64), torch.randn(1, 1, 64, 64)
    ids, mask = (torch.from_numpy(a) for a in model.tokenize(["water", "road"]))
    t.model.eval()
    with torch.no_grad():
        a = t.model.forward_image(x, s, t.model.encode_text(ids, mask))["logits"]
        b = model.forward_image(x, s, model.encode_text(ids, mask))["logits"]
    torch.testing.assert_close(a, b)

    resumed = Trainer(_cfg(out, epochs=2, resume=True))
    assert resumed.start_epoch == 1
    assert resumed.sched.last_epoch == t.sched.last_epoch
    resumed.fit()
    assert len((out / "history.jsonl").read_text().splitlines()) == 2


def test_bad_data_arguments_are_clear(tmp_path: Path) -> None:
    from rsvl_train.cli import main

    assert main(["--data", "nope:x", "--out", str(tmp_path / "a")]) == 2
    assert main(["--data", "yeseg", "--out", str(tmp_path / "b")]) == 2
    assert main(["--data", f"yeseg:{tmp_path / 'missing'}", "--out", str(tmp_path / "c")]) == 2


def test_resume_without_checkpoint_fails(tmp_path: Path) -> None:
    from rsvl_train.train import Trainer

    with pytest.raises(FileNotFoundError, match="--resume"):
        Trainer(_cfg(tmp_path / "none", resume=True))


def test_paper_settings_tiny_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Model-config modality dropout, paper loss weights, poly + iterations, descriptions in train and val."""
    from rsvl_train.losses import PAPER_LOSS_WEIGHTS
    from rsvl_train.models import tsmnet as tsm
    from rsvl_train.train import Trainer

    rates: list[float] = []
    orig = tsm.modality_dropout
    monkeypatch.setattr(tsm, "modality_dropout", lambda o, s, p, generator=None: (rates.append(p), orig(o, s, p))[1])
    overrides = {"description_fusion": True, "description_fusion_levels": "all", "modality_dropout": 0.3,
                 "text.pretrained": False, "backbone.imagenet": False}
    t = Trainer(_cfg(tmp_path / "run", loss_weights=dict(PAPER_LOSS_WEIGHTS), schedule="poly", iterations=1,
                     overrides=overrides))
    assert t.cfg.modality_dropout == 0.3 and t.cfg.tile == 64
    with_desc: list[bool] = []
    fi = t.model.forward_image
    t.model.forward_image = lambda *a, **k: (with_desc.append((a[3:] or [k.get("description")])[0] is not None),
                                             fi(*a, **k))[1]
    t.fit()
    assert rates == [0.3] and t.sched.last_epoch == 1  # one iteration, then validation
    assert len(with_desc) == 2 and all(with_desc)  # the training step and the validation batch
    hist = json.loads((tmp_path / "run" / "history.jsonl").read_text().splitlines()[0])
    parts = {k: hist[f"train_{k}"] for k in ("ce", "dice", "object", "scene")}
    assert hist["train_loss"] == pytest.approx(sum(parts.values()), rel=1e-4)  # 1:1:1:1
