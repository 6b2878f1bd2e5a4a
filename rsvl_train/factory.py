"""open_clip-style model registry: one JSON config per model, ``create_model`` / ``list_models``.

A config file ``model_configs/<name>.json`` holds ``{"architecture": "tsmnet" | "cadformer",
"task": ..., ...}``; ``architecture`` picks the builder registered with :func:`register_architecture`.
Users can add a folder of their own configs with :func:`add_model_config`.
Overrides apply on a deep copy, top-level keys first, then dotted keys (``"decoder.dim": 64``).
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
from pathlib import Path
from typing import Any, Callable

from torch import nn

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
    """Decorator: ``@register_architecture("tsmnet") def build(config, pretrained) -> nn.Module``."""

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


def create_model_from_config(config: dict[str, Any], pretrained: str | None = None) -> nn.Module:
    """Build a model from a full config dict (e.g. the one saved beside a checkpoint)."""
    from . import models  # noqa: F401  (registers the architectures)

    arch = config.get("architecture")
    if arch not in _BUILDERS:
        raise UnknownModelError(f"config names architecture {arch!r}; known: {sorted(_BUILDERS)}")
    model = _BUILDERS[arch](copy.deepcopy(config), pretrained)
    model.config = copy.deepcopy(config)
    return model


def create_model(name: str, pretrained: str | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model. ``pretrained`` is a local weights path (CLIP checkpoint for
    ``tsmnet``, an rsvl-train checkpoint for any model); nothing is downloaded."""
    return create_model_from_config(get_model_config(name, **overrides), pretrained)
