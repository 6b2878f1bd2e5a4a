"""Paper recipes: the shipped files, their numbers, ``rsvl-train --recipe`` dry runs and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsvl_train.cli import main
from rsvl_train.losses import CADFORMER_LOSS_WEIGHTS, PAPER_LOSS_WEIGHTS
from rsvl_train.recipes import UnknownRecipeError, apply_recipe, get_recipe, list_recipes

RECIPES = ["cadformer-rrsisd", "cadformer-rrsishr", "tsmnet-swjtu", "tsmnet-yeseg"]


def _table(out: str) -> dict[str, str]:
    rows = {}
    for line in out.splitlines():
        key, sep, value = line.partition("  ")
        if sep:
            rows[key.strip()] = value.strip()
    return rows


def test_list_and_numbers() -> None:
    assert list_recipes() == RECIPES
    from rsvl_train.data.swjtu import SWJTU_CLASSES
    from rsvl_train.data.yeseg import YESEG_CLASSES

    for name, classes in (("tsmnet-yeseg", YESEG_CLASSES), ("tsmnet-swjtu", SWJTU_CLASSES)):
        r = get_recipe(name)
        # the class list of the official loader, in its order (ids 0..K-1 of the labels)
        assert r.model == "tsmnet" and r.overrides["head"] == "paper"
        assert [c["name"] for c in r.overrides["classes"]] == list(classes)
        assert r.overrides["num_classes"] == len(classes)
        s = r.settings
        assert s["loss_weights"] == PAPER_LOSS_WEIGHTS == {"ce": 1.0, "dice": 1.0, "object": 1.0, "scene": 1.0}
        assert (s["epochs"], s["tile"], s["batch_size"]) == (100, 256, 10)
        assert (s["optimizer"], s["lr"], s["weight_decay"], s["backbone_lr_mult"]) == ("adamw", 1e-4, 1e-4, 0.1)
        assert (s["schedule"], s["poly_power"], s["min_lr"], s["warmup_iters"]) == ("poly", 0.9, 1e-6, 1500)
        assert "TSMNet_fpn_vit-b_256x256_100epoches" in r.sources["epochs, tile"]
    assert get_recipe("tsmnet-yeseg").data_kind == "yeseg" and get_recipe("tsmnet-swjtu").data_kind == "swjtu"
    for name, kind in (("cadformer-rrsisd", "rrsisd"), ("cadformer-rrsishr", "rrsishr")):
        r = get_recipe(name)
        assert r.model == "cadformer" and r.data_kind == kind
        assert r.data_spec("/x") == f"{kind}:/x" and r.data_spec("rrsis:/x") == "rrsis:/x"
        assert r.settings["tile"] == 480 and r.settings["loss_weights"] == CADFORMER_LOSS_WEIGHTS
        assert all(r.sources.values())


@pytest.mark.parametrize("name", RECIPES)
def test_dry_run_prints_the_table(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--recipe", name, "--dry-run"]) == 0
    rows = _table(capsys.readouterr().out)
    r = get_recipe(name)
    assert rows["recipe"] == name and rows["model"] == r.model
    assert rows["data"] == f"{r.data_kind}:<--data PATH>"
    assert rows["length"] == f"{r.settings['epochs']} epochs" and rows["batch"] == str(r.settings["batch_size"])
    assert rows["lr"].startswith(f"{r.settings['lr']:g} ") and rows["schedule"].startswith("poly (power 0.9)")
    assert rows["tile"] == f"{r.settings['tile']} x {r.settings['tile']}"
    assert rows["loss weights"] == ", ".join(f"{k} {v:g}" for k, v in r.settings["loss_weights"].items())
    assert rows["output folder"] == f"runs/{name}"


def test_explicit_flags_override_the_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "yeseg"
    data.mkdir()
    argv = ["--recipe", "tsmnet-yeseg", "--data", str(data), "--lr", "0.5", "--epochs", "3",
            "--loss-weights", "ce=2,dice=1,object=1,scene=0", "--out", str(tmp_path / "o"), "--dry-run"]
    assert main(argv) == 0
    rows = _table(capsys.readouterr().out)
    assert rows["data"] == f"yeseg:{data}"  # a bare PATH gets the recipe's dataset kind
    assert rows["lr"].startswith("0.5 ") and rows["length"] == "3 epochs" and rows["batch"] == "10"
    assert rows["loss weights"] == "ce 2, dice 1, object 1, scene 0" and rows["output folder"] == str(tmp_path / "o")
    kw = apply_recipe(get_recipe("tsmnet-yeseg"), {"data": "swjtu:/x", "overrides": {"neck_dim": 64}})
    assert kw["data"] == "swjtu:/x" and kw["overrides"]["neck_dim"] == 64 and kw["overrides"]["head"] == "paper"
    assert kw["overrides"]["num_classes"] == 8


def test_recipe_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--recipe", "tsmnet-yeseg"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rsvl-train: error: --recipe tsmnet-yeseg needs --data PATH") and "\n" not in err
    assert main(["--recipe", "tsmnet-yesge", "--dry-run"]) == 2
    assert "Did you mean 'tsmnet-yeseg'" in capsys.readouterr().err
    assert main(["--recipe", "tsmnet-yeseg", "--data", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--recipe", "cadformer-rrsisd", "--dry-run", "--loss-weights", "ce=1,object=1"]) == 2
    assert "unknown terms ['object']" in capsys.readouterr().err
    with pytest.raises(UnknownRecipeError):
        get_recipe("nope")


def test_model_defaults_without_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    """``rsvl-train --model cadformer`` takes its tile (480) from the model config, not 128."""
    assert main(["--model", "cadformer", "--dry-run"]) == 0
    rows = _table(capsys.readouterr().out)
    assert rows["tile"] == "480 x 480" and rows["loss weights"] == "ce 0.9, dice 0.1"
    assert main(["--model", "tsmnet-tiny", "--dry-run"]) == 0
    rows = _table(capsys.readouterr().out)
    assert rows["tile"] == "128 x 128" and rows["modality dropout"] == "0.15"
    assert rows["loss weights"] == "ce 1, dice 1, object 0.4, scene 0.1"
    assert main(["--model", "tsmnet", "--dry-run", "--set", "modality_dropout=0.3"]) == 0
    rows = _table(capsys.readouterr().out)
    assert rows["tile"] == "256 x 256" and rows["modality dropout"] == "0.3"
    assert main(["--model", "cadformer", "--tile", "128", "--dry-run"]) == 2
    assert "built for 480" in capsys.readouterr().err


def test_lr_schedules_by_hand() -> None:
    import math

    from rsvl_train.train import TrainConfig, lr_factor

    cos = TrainConfig()  # our default: warmup min(100, total/10) from 0, cosine to 0
    total = 50
    for step in (0, 3, 10, 30, 49):
        old = min(1.0, (step + 1) / 5) * 0.5 * (1 + math.cos(math.pi * step / total))
        assert lr_factor(step, total, cos) == pytest.approx(old, rel=1e-12)
    poly = TrainConfig(lr=1e-4, schedule="poly", poly_power=0.9, min_lr=1e-6, warmup_iters=10, warmup_ratio=1e-6)
    assert lr_factor(0, 100, poly) == pytest.approx((1e-6 + (1 - 1e-6) * 0.1) * 1.0, rel=1e-9)
    p = 40 / 100
    assert lr_factor(40, 100, poly) == pytest.approx(0.01 + 0.99 * (1 - p) ** 0.9, rel=1e-9)
    assert lr_factor(100, 100, poly) * 1e-4 == pytest.approx(1e-6)  # ends at min_lr
