"""The on-disk rsvl-train checkpoint: ``<stem>.safetensors`` (tensors) + ``<stem>.json`` (config).

This module reads the files and loads tensors into a model that already exists; it builds no
model, so :mod:`rsvl_train.factory` can use it (``create_model(..., checkpoint=PATH)``) while
:mod:`rsvl_train.checkpoint` (saving, building a model from a checkpoint's own config) sits above
the factory. No pickle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit its config."""


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(weights .safetensors, config .json)`` of a checkpoint given by either file or the stem."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an rsvl-train checkpoint (both files present)."""
    wpath, cpath = checkpoint_paths(path)
    return wpath.is_file() and cpath.is_file()


def read_checkpoint_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's JSON: ``{"config": full model config, "info": training info}``."""
    _, cpath = checkpoint_paths(path)
    if not cpath.is_file():
        raise CheckpointError(f"{cpath} is missing: an rsvl checkpoint is a .safetensors file with a "
                              f".json config beside it (written by rsvl-train)")
    return json.loads(cpath.read_text(encoding="utf-8"))


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load stored tensors; every model key not stored must be a frozen pretrained parameter."""
    from safetensors.torch import load_file

    wpath, _ = checkpoint_paths(path)
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
