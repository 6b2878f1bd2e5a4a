"""CADFormer's text side: a BERT-style encoder (MiniLM-L6 or BERT-base) and its tokenizer.

Both encoders use the uncased BERT WordPiece vocabulary (30522 ids), so one tokenizer file (the
MiniLM one, installed offline) serves both.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..pretrained import PretrainedWeightsError, load_minilm, minilm_tokenizer_file

log = logging.getLogger(__name__)

__all__ = ["TextEncoder", "build_tokenizer"]

TEXT_ENCODERS = ("minilm", "bert-base")


def build_tokenizer(max_length: int) -> Any:
    """The MiniLM/BERT ``tokenizers.Tokenizer`` padding and truncating to exactly ``max_length``.

    The shipped ``tokenizer.json`` has padding and truncation fixed at 128: both are cleared
    before ours are set. (To be swapped for ``rsvl_train.tokenization.minilm_tokenizer``.)
    """
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(minilm_tokenizer_file()))
    tk.no_padding()
    tk.no_truncation()
    tk.enable_truncation(max_length)
    tk.enable_padding(length=max_length, pad_id=0, pad_token="[PAD]")
    return tk


def _bert_base(path: str | None) -> tuple[nn.Module, bool]:
    """BERT-base at random init; ``True`` when ``path`` (a local HuggingFace folder) will fill it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertConfig, BertModel

    if path:
        if not Path(path).is_dir():
            raise PretrainedWeightsError(
                f"text.path={path!r} is not a folder; give a local HuggingFace BERT folder "
                "(config.json + model.safetensors, e.g. bert-base-uncased) or null for random init")
        # built at bert-base's sizes, then filled strictly by rsvl_train.weights_io.bert (cadformer.build)
        return BertModel(BertConfig(attn_implementation="eager"), add_pooling_layer=False), True
    return BertModel(BertConfig(attn_implementation="eager"), add_pooling_layer=False), False


class TextEncoder(nn.Module):
    """Word features ``[B, L, D]`` (projected to ``embed_dim``) and the sentence feature ``[B, D]``.

    The sentence feature is the attention-masked mean of the word features. ``pretrained_weights``
    tells whether the backbone holds real weights. A frozen backbone stays in eval mode.
    """

    def __init__(self, encoder: str, embed_dim: int, freeze: bool = False, path: str | None = None) -> None:
        super().__init__()
        if encoder not in TEXT_ENCODERS:
            raise ValueError(f"text.encoder must be one of {TEXT_ENCODERS}, got {encoder!r}")
        if encoder == "minilm":
            self.bert, self.pretrained_weights = load_minilm(), True
        else:
            self.bert, self.pretrained_weights = _bert_base(path)
        hidden = int(self.bert.config.hidden_size)
        self.hidden_size = hidden
        self.proj: nn.Module = nn.Identity() if hidden == embed_dim else nn.Linear(hidden, embed_dim)
        self.freeze = freeze
        if freeze:
            for p in self.bert.parameters():
                p.requires_grad_(False)
            self.bert.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.freeze:
            self.bert.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                        token_type_ids=torch.zeros_like(input_ids))
        words = self.proj(out.last_hidden_state)
        m = attention_mask.to(words.dtype).unsqueeze(-1)
        sentence = (words * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
        return words, sentence
