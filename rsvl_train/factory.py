"""open_clip-style model registry: one JSON config per model, ``create_model`` / ``list_models``.

A config file ``model_configs/<name>.json`` holds ``{"architecture": "tsmnet" | "cadformer",
"task": ..., ...}``; ``architecture`` picks the builder registered with :func:`register_architecture`.
Users can add a folder of their own configs with :func:`add_model_config` and builders of their
own architectures with :func:`register_architecture`; the built-in builders are imported here
(the model modules never import the factory, so the import graph has no circle).
Overrides apply on a deep copy, top-level keys first, then dotted keys (``"decoder.dim": 64``).

Two kinds of weights, two names:

- ``pretrained``: weights of a *part* of the model (backbone / encoder), from a local file; the
  builder knows how to map them (``tsmnet``: an open_clip CLIP checkpoint). Weights that come
  from pip packages (MiniLM, EfficientNet-Lite0 ImageNet) are switched by config keys
  (``text.pretrained``, ``backbone.imagenet``), not by this argument.
- ``checkpoint``: an rsvl-train checkpoint of the *whole* model (``NAME.safetensors`` with
  ``NAME.json`` beside it), loaded by the factory after building (:mod:`rsvl_train.checkpoint_io`).
  To build from the checkpoint's own config instead of the registry's, use
  :func:`rsvl_train.checkpoint.load_checkpoint`.

``pretrained=`` naming an rsvl-train checkpoint (the old CADFormer meaning) still loads it as
``checkpoint=`` with a :class:`DeprecationWarning`; that fallback goes in the next release.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint_io import is_checkpoint, load_weights

log = logging.getLogger(__name__)

_CONFIG_DIRS: list[Path] = [Path(__file__).parent / "model_configs"]
_CONFIGS: dict[str, dict[str, Any]] = {}
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


def _rescan() -> None:
    _CONFIGS.clear()
    for d in _CONFIG_DIRS:
        for f in sorted(d.glob("*.json")):
            cfg = json.loads(f.read_text(encoding="utf-8"))
            cfg.setdefault("name", f.stem)
            _CONFIGS[f.stem] = cfg


def add_model_config(path: str | Path) -> None:
    """Register a user config file or a folder of them."""
    p = Path(path)
    _CONFIG_DIRS.append(p if p.is_dir() else p.parent)
    _rescan()


def register_architecture(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator for a user architecture: ``@register_architecture("mine") def build(config,
    pretrained=None, *, warn_random=True) -> nn.Module``. ``pretrained`` is a local backbone/encoder
    weights path or None; ``warn_random`` is False when a checkpoint will overwrite the weights.
    A registered name takes precedence over a built-in one."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Names of all registered model configs."""
    if not _CONFIGS:
        _rescan()
    return sorted(_CONFIGS)


def _unknown(name: str) -> UnknownModelError:
    close = difflib.get_close_matches(name, list_models(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return UnknownModelError(f"unknown model {name!r}.{hint} Available: {', '.join(list_models())}")


def _set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def get_model_config(name: str, **overrides: Any) -> dict[str, Any]:
    """Deep copy of a model's config with overrides applied (dotted keys reach nested dicts)."""
    if name not in list_models():
        raise _unknown(name)
    cfg = copy.deepcopy(_CONFIGS[name])
    for key in sorted(overrides, key=lambda k: k.count(".")):
        _set_dotted(cfg, key, copy.deepcopy(overrides[key]))
    return cfg


def _builders() -> dict[str, Callable[..., nn.Module]]:
    from .models import cadformer, tsmnet, tsmnet_official

    return {"tsmnet": tsmnet.build, "cadformer": cadformer.build, "tsmnet-official": tsmnet_official.build,
            **_BUILDERS}


WeightsPath = str | os.PathLike[str] | None


def _deprecated_checkpoint(pretrained: WeightsPath, checkpoint: WeightsPath) -> tuple[WeightsPath, WeightsPath]:
    """The old meaning: ``pretrained`` naming an rsvl-train checkpoint. Returns ``(pretrained, checkpoint)``."""
    if pretrained and checkpoint is None and is_checkpoint(pretrained):
        warnings.warn("pretrained=<rsvl-train checkpoint> is deprecated and will be removed in the next "
                      "release: pass checkpoint=PATH (pretrained= is for backbone/encoder weights only)",
                      DeprecationWarning, stacklevel=3)
        return None, pretrained
    return pretrained, checkpoint


def create_model_from_config(config: dict[str, Any], pretrained: WeightsPath = None, *,
                             checkpoint: WeightsPath = None) -> nn.Module:
    """Build a model from a full config dict (e.g. the one saved beside a checkpoint).

    ``pretrained``: local backbone/encoder weights for the builder; ``checkpoint``: an rsvl-train
    checkpoint of the whole model, loaded after building (see the module docstring).
    """
    pretrained, checkpoint = _deprecated_checkpoint(pretrained, checkpoint)
    arch = config.get("architecture")
    builders = _builders()
    if arch not in builders:
        raise UnknownModelError(f"config names architecture {arch!r}; known: {sorted(builders)}")
    model = builders[arch](copy.deepcopy(config), str(pretrained) if pretrained else None,
                           warn_random=checkpoint is None)
    model.config = copy.deepcopy(config)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model


def create_model(name: str, pretrained: WeightsPath = None, *, checkpoint: WeightsPath = None,
                 **overrides: Any) -> nn.Module:
    """Build a registered model; nothing is downloaded.

    ``pretrained`` is a local backbone/encoder weights path (``tsmnet``: an open_clip CLIP
    checkpoint); ``checkpoint`` an rsvl-train checkpoint of this model (any architecture).
    ``overrides`` change the registry config (dotted keys reach nested dicts).
    """
    pretrained, checkpoint = _deprecated_checkpoint(pretrained, checkpoint)
    return create_model_from_config(get_model_config(name, **overrides), pretrained, checkpoint=checkpoint)
