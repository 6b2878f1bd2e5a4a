"""Pretrained weights of model *parts*, from the local files users have, mapped onto our models.

- :mod:`.clip`: an open_clip CLIP checkpoint or OpenAI's ``ViT-B-16.pt`` -> both ViT branches and
  the CLIP text tower of ``tsmnet``;
- :mod:`.swin`: a timm Swin checkpoint (``.safetensors`` / ``.pth``, ImageNet-22K) -> the CADFormer
  Swin encoder (window and relative-position-bias resizing by timm's own filter);
- :mod:`.bert`: a HuggingFace BERT folder -> the CADFormer text encoder;
- :mod:`.official_tsmnet`: the TSMNet authors' released mmseg checkpoint (a *whole* model).

Every loader returns a :class:`rsvl_train.pretrained.LoadReport` and refuses, in one line, a
file that is not the source it expects (:func:`.identify.describe`). :func:`load_pretrained`
picks the loader from the model and the path. The file formats are read by
:func:`rsvl_train.pretrained.read_state_dict`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn

from ..pretrained import LoadReport, PretrainedWeightsError

log = logging.getLogger(__name__)

__all__ = ["load_pretrained", "weights_file"]


def load_pretrained(model: nn.Module, path: str | os.PathLike[str]) -> LoadReport:
    """Load local pretrained part weights into a built model and log the report.

    ``tsmnet`` (CLIP backbone): an open_clip / OpenAI CLIP file. ``cadformer``: a folder is a
    HuggingFace BERT (text encoder), a file a timm Swin checkpoint (image encoder).
    """
    arch = (getattr(model, "config", None) or {}).get("architecture")
    p = Path(path)
    if arch == "tsmnet":
        from .clip import load_clip_into_tsmnet

        report = load_clip_into_tsmnet(model, p)
    elif arch == "cadformer":
        if p.is_dir():
            from .bert import load_bert_into_cadformer

            report = load_bert_into_cadformer(model, p)
        else:
            from .swin import load_swin_into_cadformer

            report = load_swin_into_cadformer(model, p)
    else:
        raise PretrainedWeightsError(f"--pretrained {p}: no pretrained-weights loader for architecture {arch!r} "
                                     "(tsmnet: a CLIP checkpoint; cadformer: a timm Swin file or a HuggingFace BERT folder)")
    log.info("%s", report.summary())
    return report


def weights_file(path: str | os.PathLike[str]) -> Path:
    """The file whose sha256 identifies a ``--pretrained`` source: the path itself, or the weights
    file inside a HuggingFace folder."""
    p = Path(path)
    if p.is_dir():
        from .bert import weights_file as hf_weights

        return hf_weights(p)
    return p
