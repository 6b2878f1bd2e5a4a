"""HuggingFace BERT weights (a local folder, e.g. ``bert-base-uncased``) -> CADFormer's text encoder.

The folder holds ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin`` (what
``save_pretrained`` writes and what the hub snapshots hold). The config must be a BERT of our
encoder's size (hidden, layers, heads, intermediate, vocabulary, positions); another one (MiniLM,
a cased vocabulary, RoBERTa) is refused naming both.

Mapping: ``bert.X`` / ``X`` -> ``text.bert.X`` (``BertForPreTraining`` / ``BertForMaskedLM``
saves carry the ``bert.`` prefix; old files' ``LayerNorm.gamma``/``beta`` read as
``weight``/``bias``). Intentionally unused: ``pooler.*`` (our encoder has no pooler),
``cls.*`` (pre-training heads), ``embeddings.position_ids``. Intentionally new: everything outside
``text.bert`` (projection, image encoder, alignment, decoder).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..pretrained import LoadReport, PretrainedWeightsError, check_keys, read_state_dict

__all__ = ["load_bert_into_cadformer", "weights_file"]

BERT_UNUSED_PREFIXES = ("pooler.", "cls.", "embeddings.position_ids")
_SIZE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
              "max_position_embeddings")
TARGET = "text.bert."


def weights_file(folder: Path) -> Path:
    """The weights file of a HuggingFace folder (``model.safetensors`` first)."""
    for fname in ("model.safetensors", "pytorch_model.bin"):
        if (folder / fname).is_file():
            return folder / fname
    raise PretrainedWeightsError(f"{folder} has no model.safetensors or pytorch_model.bin; give the folder "
                                 "save_pretrained wrote (config.json + weights)")


def _rename(key: str) -> str:
    key = key.removeprefix("bert.")
    if key.endswith("LayerNorm.gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith("LayerNorm.beta"):
        return key[: -len("beta")] + "bias"
    return key


def load_bert_into_cadformer(model: nn.Module, folder: str | Path) -> LoadReport:
    """Load a local HuggingFace BERT folder into CADFormer's text encoder; returns the report."""
    d = Path(folder)
    if not (d / "config.json").is_file():
        raise PretrainedWeightsError(f"{d} is not a HuggingFace model folder (no config.json); give the folder of "
                                     "a BERT checkpoint (config.json + model.safetensors), e.g. bert-base-uncased")
    cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    bert = model.text.bert
    ours = bert.config.to_dict()
    if cfg.get("model_type", "bert") != "bert":
        raise PretrainedWeightsError(f"{d} is a HuggingFace {cfg.get('model_type')!r} model, but CADFormer's text "
                                     "encoder is BERT (model_type 'bert')")
    diff = [f"{k} {cfg.get(k)} (needs {ours[k]})" for k in _SIZE_KEYS if cfg.get(k, ours[k]) != ours[k]]
    if diff:
        raise PretrainedWeightsError(f"{d} is a BERT of another size: {', '.join(diff)}; text.encoder "
                                     f"{model.config.get('text', {}).get('encoder')!r} needs bert-base-uncased's sizes")
    wfile = weights_file(d)
    sd = {_rename(k): v for k, v in read_state_dict(wfile, "a HuggingFace BERT checkpoint").items()}
    own = bert.state_dict()
    out = {k: v for k, v in sd.items() if k in own}
    unused = [k for k in sd if k not in own]
    unexpected = [k for k in unused if not k.startswith(BERT_UNUSED_PREFIXES)]
    missing = [k for k in own if k not in out]
    check_keys(str(wfile), "BERT checkpoint for CADFormer's text encoder", missing, unexpected)
    for k, v in out.items():
        if v.shape != own[k].shape:
            raise PretrainedWeightsError(f"{wfile}: tensor {k} has shape {tuple(v.shape)}, the model expects "
                                         f"{tuple(own[k].shape)}")
    bert.load_state_dict({k: v.to(own[k].dtype) for k, v in out.items()}, strict=True)
    model.text.pretrained_weights = True
    report = LoadReport(source="huggingface", kind="bert", path=str(d), loaded=len(out), unused=unused,
                        new=[k for k in model.state_dict() if not k.startswith(TARGET)])
    return report
