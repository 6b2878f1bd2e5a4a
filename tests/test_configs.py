"""Every key of the shipped model configs is read by the code (no dead config values).

A key counts as read when its name appears, as a quoted string or (for sections passed on as
keyword arguments) as an identifier, in the source of the modules that read its section. This
static check would have caught ``modality_dropout`` (only a CLI default was read) and
``text.desc_max_length`` (read nowhere) before issue 15. Keys starting with ``_`` are comments.
The paper configs' new switches are also checked to be on, and the tiny ones off.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "rsvl_train" / "model_configs"
CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.json"))

M = "rsvl_train/models/"
#: top-level section -> modules that read its keys.
READERS: dict[str, tuple[str, ...]] = {
    "architecture": ("rsvl_train/factory.py",),
    "name": ("rsvl_train/factory.py",),
    "task": ("rsvl_train/train.py", "rsvl_export/pipeline.py"),
    "tile_size": (M + "tsmnet.py", M + "cadformer.py", "rsvl_train/train.py"),
    "train_tile_size": ("rsvl_train/train.py",),
    "modality_dropout": ("rsvl_train/train.py",),
    "modes": ("rsvl_export/pipeline.py",),
    "preprocess": ("rsvl_export/pipeline.py", "rsvl_runtime/normalization.py", "rsvl_runtime/manifest.py"),
    "classes": ("rsvl_train/train.py", "rsvl_export/pipeline.py", "rsvl_runtime/manifest.py"),
    "export": ("rsvl_export/pipeline.py",),
    "default_weights": ("rsvl_train/checkpoint.py",),
    "text": (M + "tsmnet.py", M + "text_encoders.py", M + "cadformer.py", M + "cadformer_text.py"),
    "backbone": (M + "tsmnet.py", M + "backbones.py"),
    "image_encoder": (M + "cadformer.py", M + "cadformer_encoder.py"),
    "align": (M + "cadformer.py",),
    "decoder": (M + "cadformer.py",),
    "num_classes": (M + "tsmnet.py", M + "cadformer.py", "rsvl_export/wrappers.py"),
}
#: sections whose keys are passed on as keyword arguments (identifiers count as reads).
KWARG_SECTIONS = {"image_encoder"}
#: every other top-level key is read by the TSMNet module.
DEFAULT_READER = (M + "tsmnet.py",)


def _walk(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        if key.startswith("_"):
            continue
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, dict) and key not in ("preprocess",):
            yield from _walk(value, path + ".")
        elif key == "preprocess":
            for modality, spec in value.items():
                yield from (f"{path}.{modality}.{k}" for k in spec if not k.startswith("_"))
        elif key == "classes":
            yield from sorted({f"{path}.{k}" for c in value for k in c})


def _source(files: tuple[str, ...]) -> str:
    return "\n".join((ROOT / f).read_text(encoding="utf-8") for f in files if (ROOT / f).is_file())


def _all_train_sources() -> tuple[str, ...]:
    return tuple(str(p.relative_to(ROOT)) for p in (ROOT / "rsvl_train").rglob("*.py"))


def _is_read(path: str, architecture: str = "tsmnet") -> bool:
    parts = path.split(".")
    top, leaf = parts[0], parts[-1]
    if architecture not in ("tsmnet", "cadformer"):  # a config of another builder: any rsvl_train module
        files = READERS.get(top, ()) + _all_train_sources()
    else:
        files = READERS.get(top, DEFAULT_READER)
    src = _source(files)
    if re.search(rf"[\"']{re.escape(leaf)}[\"']", src):
        return True
    return top in KWARG_SECTIONS and re.search(rf"\b{re.escape(leaf)}\b", src) is not None


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_key_is_read(name: str) -> None:
    cfg = json.loads((CONFIG_DIR / name).read_text(encoding="utf-8"))
    paths = list(_walk(cfg))
    assert len(paths) > 20
    unread = [p for p in paths if not _is_read(p, cfg["architecture"])]
    assert not unread, f"{name}: keys nothing reads: {unread}"


def test_the_walker_catches_a_dead_key() -> None:
    assert not _is_read("text.no_such_key_anywhere")
    assert not _is_read("fusion.no_such_key_anywhere")
    assert _is_read("text.desc_max_length") and _is_read("modality_dropout") and _is_read("fusion.levels")


def test_paper_switches_on_and_tiny_off() -> None:
    from rsvl_train import get_model_config

    paper, tiny = get_model_config("tsmnet"), get_model_config("tsmnet-tiny")
    assert paper["fusion"]["levels"] == 6 and paper["description_fusion"] is True
    assert paper["description_fusion_levels"] == "all" and paper["text"]["desc_max_length"] == 64
    assert tiny["fusion"].get("levels", 4) == 4 and tiny["description_fusion"] is False
    cad, cad_tiny = get_model_config("cadformer"), get_model_config("cadformer-tiny")
    assert cad["decoder"]["self_attention"] is True and cad["decoder"]["text_fusion"] == [True, True, True]
    assert not cad_tiny["decoder"].get("self_attention", False)
    assert cad_tiny["decoder"]["text_fusion"] == [True, True, False]
    assert cad["text"]["max_length"] >= 64 and cad_tiny["text"]["max_length"] >= 64


def test_paper_classes_in_official_order() -> None:
    from rsvl_train import get_model_config

    classes = get_model_config("tsmnet")["classes"]
    assert [c["name"] for c in classes] == [
        "bare ground", "low vegetation", "trees", "houses", "water", "roads", "others"]
    for c in classes:
        assert c["synonyms"] and len(c["color"]) == 3 and all(0 <= v <= 255 for v in c["color"])
    assert len({tuple(c["color"]) for c in classes}) == 7


def test_shipped_weights_still_fit_their_config() -> None:
    """The shipped tsmnet-tiny weights load for the registry config (a config edit that changes
    anything the weights depend on would silently fall back to random weights)."""
    import json

    from rsvl_train.checkpoint import WEIGHT_INDEPENDENT_KEYS, default_weights, read_checkpoint_config
    from rsvl_train.factory import get_model_config

    config = get_model_config("tsmnet-tiny")
    ckpt = default_weights(config)
    assert ckpt is not None
    shipped = read_checkpoint_config(ckpt)["config"]
    diff = sorted(k for k in set(shipped) | set(config)
                  if k not in WEIGHT_INDEPENDENT_KEYS and shipped.get(k) != config.get(k))
    assert diff == [], json.dumps({k: [shipped.get(k), config.get(k)] for k in diff})


def test_untrained_registry_model_is_reproducible() -> None:
    """A registry model without shipped weights is drawn with a fixed seed: two loads (two
    exports) hold the same weights, and the caller's RNG is left as it was."""
    import torch

    from rsvl_train.checkpoint import load_default

    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    a, trained_a = load_default("cadformer-tiny")
    assert torch.equal(torch.random.get_rng_state(), before)
    from rsvl_export.pipeline import ExportOptions, load_model
    from rsvl_runtime.manifest import WeightsEntry

    b, weights = load_model(ExportOptions(model="cadformer-tiny"))  # what rsvl-export records
    assert weights == {"source": "random-init", "trained": False, "seed": 0}
    assert WeightsEntry.from_dict(weights).extra == {"seed": 0}
    assert trained_a is False
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
