"""rsvl-train checkpoints: ``<stem>.safetensors`` (weights) + ``<stem>.json`` (full model config
and training info). No pickle. The file format itself (paths, reading, loading tensors into a
built model) is :mod:`rsvl_train.checkpoint_io`, below the factory; this module saves checkpoints
and builds models from them, above it.

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

from rsvl_runtime.files import atomic_open, atomic_write_text

from .checkpoint_io import (
    CheckpointError,
    checkpoint_paths,
    is_checkpoint,
    load_weights,
    read_checkpoint_config,
)
from .factory import create_model_from_config, get_model_config

log = logging.getLogger(__name__)

__all__ = ["CheckpointError", "checkpoint_paths", "default_weights", "is_checkpoint", "load_checkpoint",
           "load_default", "load_weights", "read_checkpoint_config", "reloadable_parameters",
           "save_checkpoint", "stored_state_dict"]


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
    from safetensors.torch import save

    wpath, cpath = checkpoint_paths(path)
    wpath.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": getattr(model, "config", {}), "info": info or {}}
    with atomic_open(wpath, "wb") as f:
        f.write(save(stored_state_dict(model, dtype), metadata={"format": "rsvl"}))
    atomic_write_text(cpath, json.dumps(meta, indent=2) + "\n")
    return wpath


def load_checkpoint(path: str | os.PathLike[str], **overrides: Any) -> nn.Module:
    """Model built from the checkpoint's config (top-level ``overrides`` applied, e.g.
    ``tile_size``) with its weights, in eval mode."""
    meta = read_checkpoint_config(path)
    config = {**(meta.get("config") or get_model_config(meta["info"]["model"])), **overrides}
    return create_model_from_config(config, checkpoint=path).eval()


def default_weights(config: dict[str, Any]) -> Path | None:
    """The registry's shipped weights for a model (``"default_weights"`` in its config), if present."""
    rel = config.get("default_weights")
    if not rel:
        return None
    p = Path(__file__).parent / rel
    return p if p.with_suffix(".safetensors").is_file() else None


#: Config keys the weights do not depend on: sizes, names and training-only settings. Any other
#: difference between the registry config and the shipped weights' config means they do not fit.
WEIGHT_INDEPENDENT_KEYS = frozenset({"tile_size", "default_weights", "name", "train_tile_size", "modality_dropout"})


#: seed of the random initialisation of a registry model without trained weights
#: (:func:`load_default`): two exports of the same untrained model hold the same weights, so
#: their parity gates and benchmarks give the same numbers
RANDOM_INIT_SEED = 0


def load_default(name: str, **overrides: Any) -> tuple[nn.Module, bool]:
    """Registry model with its shipped trained weights when it has them.
    Returns ``(model, trained)``; logs a warning when the weights are random (drawn with
    :data:`RANDOM_INIT_SEED`, so every call builds the same model)."""
    config = get_model_config(name, **overrides)
    ckpt = default_weights(config)
    if ckpt is not None:
        shipped = read_checkpoint_config(ckpt).get("config", {})
        ignore = WEIGHT_INDEPENDENT_KEYS
        diff = sorted(k for k in set(shipped) | set(config) if k not in ignore and shipped.get(k) != config.get(k))
        if diff:
            log.warning("%s: the shipped weights were trained with other settings (%s); they do not fit, "
                        "so the weights are random/ImageNet-initialised — train this variant with rsvl-train",
                        name, ", ".join(diff))
            ckpt = None
    with torch.random.fork_rng():  # untrained weights are the same on every export (and the caller's RNG is kept)
        torch.manual_seed(RANDOM_INIT_SEED)
        model = create_model_from_config(config, checkpoint=ckpt)
    if ckpt is None:
        log.warning("%s: no trained weights shipped for this model; exporting random/ImageNet-initialised "
                    "weights — pass --checkpoint runs/NAME/best.safetensors from rsvl-train", name)
    return model.eval(), ckpt is not None
