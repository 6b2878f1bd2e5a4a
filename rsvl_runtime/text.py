"""Tokenisation with the bundle's ``tokenizer.json`` (HuggingFace ``tokenizers``; no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


class BundleTokenizer:
    """Pads and truncates every text to the bundle's fixed ``max_length`` (the graph's L)."""

    def __init__(self, path: str | Path, max_length: int, pad_id: int = 0) -> None:
        from tokenizers import Tokenizer

        self.path = Path(path)
        self.max_length = int(max_length)
        self.pad_id = int(pad_id)
        try:
            self._tk = Tokenizer.from_file(str(self.path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"{self.path}: not a valid tokenizers JSON file ({e}); re-export the bundle") from e
        # The shipped file decides the special tokens; we decide the shape.
        self._tk.no_padding()
        self._tk.no_truncation()
        self._tk.enable_truncation(self.max_length)
        self._tk.enable_padding(length=self.max_length, pad_id=self.pad_id)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``texts`` -> (input_ids, attention_mask), both int64 ``[N, max_length]``."""
        if not texts:
            raise ValueError("nothing to tokenise: the text list is empty")
        enc = self._tk.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        return ids, mask
