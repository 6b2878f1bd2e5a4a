"""rsvl-train checkpoints: ``<stem>.safetensors`` (weights) + ``<stem>.json`` (full model config
and training info). No pickle.

Frozen parameters that come from pip-installed pretrained weights (the MiniLM text encoder and
the early Lite0 blocks of the tiny models) are not stored: :func:`load_checkpoint` builds the
model from its config — which loads those weights offline — and then loads the stored tensors,
refusing any other missing key. Frozen parameters that are random are stored.
Optimiser state for ``--resume`` is stored the same way in ``<stem>.optim.safetensors``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .factory import create_model_from_config, get_model_config

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit its config."""


def _paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def reloadable_parameters(model: nn.Module) -> set[str]:
    """Frozen parameters that building the model from its config reproduces exactly (weights loaded
    from pip packages: MiniLM, Lite0 ImageNet). Found by comparing with a fresh build, once per
    model; frozen parameters that are random (e.g. a CLIP tower without a local checkpoint) are
    not reloadable and must be stored."""
    cached = getattr(model, "_rsvl_reloadable", None)
    if cached is not None:
        return cached
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    same: set[str] = set()
    if frozen and getattr(model, "config", None):
        with torch.random.fork_rng():  # the reference build must not disturb training's RNG
            torch.manual_seed(12345)
            fresh = dict(create_model_from_config(model.config).named_parameters())
        same = {n for n, p in frozen.items()
                if n in fresh and fresh[n].shape == p.shape and torch.equal(fresh[n].detach(), p.detach().cpu())}
    model._rsvl_reloadable = same  # type: ignore[attr-defined]
    return same


def stored_state_dict(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Everything but the frozen parameters a fresh build reloads from pip packages."""
    skip = reloadable_parameters(model)
    out = {}
    for k, v in model.state_dict().items():
        if k in skip:
            continue
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous()
    return out


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], info: dict[str, Any] | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write weights + config atomically. ``dtype=torch.float16`` halves the file (shipping)."""
    from safetensors.torch import save_file

    wpath, cpath = _paths(path)
    wpath.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": getattr(model, "config", {}), "info": info or {}}
    tmp_w = wpath.with_name(f".{wpath.name}.tmp")
    tmp_c = cpath.with_name(f".{cpath.name}.tmp")
    save_file(stored_state_dict(model, dtype), str(tmp_w), metadata={"format": "rsvl"})
    tmp_c.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for tmp in (tmp_w, tmp_c):
        os.chmod(tmp, 0o644)
    os.replace(tmp_w, wpath)
    os.replace(tmp_c, cpath)
    return wpath


def read_checkpoint_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    wpath, cpath = _paths(path)
    if not cpath.is_file():
        raise CheckpointError(f"{cpath} is missing: an rsvl checkpoint is a .safetensors file with a "
                              f".json config beside it (written by rsvl-train)")
    return json.loads(cpath.read_text(encoding="utf-8"))


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load stored tensors; every model key not stored must be a frozen pretrained parameter."""
    from safetensors.torch import load_file

    wpath, _ = _paths(path)
    if not wpath.is_file():
        raise CheckpointError(f"checkpoint weights {wpath} do not exist")
    sd = load_file(str(wpath))
    own = model.state_dict()
    sd = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v for k, v in sd.items()}
    result = model.load_state_dict(sd, strict=False)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    missing = [k for k in result.missing_keys if k not in frozen]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{wpath} does not fit the model: missing {missing[:5]}"
                              f"{'…' if len(missing) > 5 else ''}, unexpected {result.unexpected_keys[:5]}")


def load_checkpoint(path: str | os.PathLike[str], **overrides: Any) -> nn.Module:
    """Model built from the checkpoint's config (top-level ``overrides`` applied, e.g.
    ``tile_size``) with its weights, in eval mode."""
    meta = read_checkpoint_config(path)
    config = {**(meta.get("config") or get_model_config(meta["info"]["model"])), **overrides}
    model = create_model_from_config(config)
    load_weights(model, path)
    return model.eval()


def default_weights(config: dict[str, Any]) -> Path | None:
    """The registry's shipped weights for a model (``"default_weights"`` in its config), if present."""
    rel = config.get("default_weights")
    if not rel:
        return None
    p = Path(__file__).parent / rel
    return p if p.with_suffix(".safetensors").is_file() else None


def load_default(name: str, **overrides: Any) -> tuple[nn.Module, bool]:
    """Registry model with its shipped trained weights when it has them.
    Returns ``(model, trained)``; logs a warning when the weights are random."""
    config = get_model_config(name, **overrides)
    ckpt = default_weights(config)
    if ckpt is not None:
        shipped = read_checkpoint_config(ckpt).get("config", {})
        ignore = {"tile_size", "default_weights", "name"}  # sizes the weights do not depend on
        diff = sorted(k for k in set(shipped) | set(config) if k not in ignore and shipped.get(k) != config.get(k))
        if diff:
            log.warning("%s: the shipped weights were trained with other settings (%s); they do not fit, "
                        "so the weights are random/ImageNet-initialised — train this variant with rsvl-train",
                        name, ", ".join(diff))
            ckpt = None
    model = create_model_from_config(config)
    if ckpt is None:
        log.warning("%s: no trained weights shipped for this model; exporting random/ImageNet-initialised "
                    "weights — pass --checkpoint runs/NAME/best.safetensors from rsvl-train", name)
        return model.eval(), False
    load_weights(model, ckpt)
    return model.eval(), True
