"""Prompt templates and the tokenizer of a semantic model with a text encoder: the one
implementation :class:`~rsvl_train.models.tsmnet.TSMNet` and
:class:`~rsvl_train.models.tsmnet_official.TSMNetOfficial` share.

A model using :class:`PromptTokenizer` sets ``config`` (``text.encoder`` names the tokenizer,
default ``"minilm"``; ``classes``), ``max_length``, ``templates`` and an empty ``_tokenizers``
dict, and its ``text_encoder`` has ``check_length(L)`` (raises when ``L`` plus its context tokens
exceeds its positions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class PromptTokenizer:
    """Tokenizers per text length (built once), tokenisation, prompts and the default class names."""

    config: dict[str, Any]
    max_length: int
    templates: list[str]
    _tokenizers: dict[int, Any]
    text_encoder: Any

    def _get_tokenizer(self, max_length: int) -> Any:
        if max_length not in self._tokenizers:
            from ..tokenization import build_tokenizer

            self.text_encoder.check_length(max_length)
            encoder = self.config.get("text", {}).get("encoder", "minilm")
            self._tokenizers[max_length] = build_tokenizer(encoder, max_length)
        return self._tokenizers[max_length]

    @property
    def tokenizer(self) -> Any:
        """The ``tokenizers.Tokenizer`` matching the text encoder (fixed length ``max_length``)."""
        return self._get_tokenizer(self.max_length)

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)`` numpy int64 ``[N, max_length]`` (default: config)."""
        from ..tokenization import encode_batch

        return encode_batch(self._get_tokenizer(int(max_length or self.max_length)), list(texts))

    def tokenizer_json(self) -> str:
        """The tokenizer as a ``tokenizers`` JSON string (padding/truncation to ``max_length`` built in)."""
        return self.tokenizer.to_str()

    def prompts(self, class_names: Sequence[str]) -> list[str]:
        """Apply the prompt templates: ``len(class_names) * len(templates)`` strings, class-major.

        With several templates, average the embeddings of a class's prompts (then re-normalise).
        """
        return [t.format(c) for c in class_names for t in self.templates]

    @property
    def class_names(self) -> list[str]:
        """Default vocabulary (names of ``config["classes"]``)."""
        return [c["name"] for c in self.config.get("classes", [])]
