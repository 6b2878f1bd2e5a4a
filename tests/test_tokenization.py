"""Tokenizers used by the runtime match the reference tokenizers id for id."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer

from rsvl_train.tokenization import (
    CLIP_VOCAB_SIZE,
    build_tokenizer,
    clip_tokenizer,
    encode_batch,
    minilm_tokenizer,
)

PHRASES = [
    "a satellite image of water.",
    "Bare Soil",
    "BUILDING, road & river!!",
    "  multiple   spaces\tand\nnewlines ",
    "Sentinel-2 band 8A at 10m resolution",
    "it's the farmer's field; don't",
    "123 4567 89.5% (2023)",
    "CamelCaseWordsHere",
    "über café naïve",
    "e-mail: test@example.com",
    "[brackets] {braces} <angle>",
    "hello...world?!",
    "",
    "a " * 90,  # longer than every max_length below: truncation
]


@pytest.mark.parametrize("length", [77, 16, 5])
def test_clip_tokenizer_matches_open_clip(length: int) -> None:
    import open_clip

    ids, mask = encode_batch(clip_tokenizer(length), PHRASES)
    ref = open_clip.tokenize(PHRASES, context_length=length).numpy()
    assert ids.dtype == np.int64 and ids.shape == (len(PHRASES), length)
    np.testing.assert_array_equal(ids, ref)
    # mask covers SOT..EOT, padding is 0; truncated rows still end with EOT
    np.testing.assert_array_equal(mask, (np.arange(length)[None] <= ref.argmax(1)[:, None]).astype(np.int64))
    assert ids[-1, -1] == CLIP_VOCAB_SIZE - 1


def test_clip_tokenizer_matches_simple_tokenizer_encode() -> None:
    from open_clip.tokenizer import SimpleTokenizer

    st = SimpleTokenizer()
    tk = clip_tokenizer(77)
    for text in PHRASES[:-1]:
        enc = tk.encode(text)
        n = sum(enc.attention_mask)
        assert enc.ids[1 : n - 1] == st.encode(text), text
        assert enc.ids[0] == st.sot_token_id and enc.ids[n - 1] == st.eot_token_id


def test_clip_tokenizer_json_roundtrip() -> None:
    tk = clip_tokenizer(24)
    tk2 = Tokenizer.from_str(tk.to_str())
    a = encode_batch(tk, PHRASES)
    b = encode_batch(tk2, PHRASES)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("length", [16, 64])
def test_minilm_tokenizer_matches_transformers(length: int) -> None:
    from transformers import AutoTokenizer

    from rsvl_train.pretrained import minilm_path

    ref_tk = AutoTokenizer.from_pretrained(str(minilm_path()))
    ref = ref_tk(PHRASES, padding="max_length", truncation=True, max_length=length, return_tensors="np")
    ids, mask = encode_batch(minilm_tokenizer(length), PHRASES)
    assert ids.shape == (len(PHRASES), length)
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"])


def test_minilm_tokenizer_trap_fixed() -> None:
    """The shipped tokenizer.json pads to 128; ours pads to exactly the length asked for."""
    from rsvl_train.pretrained import minilm_tokenizer_file

    raw = Tokenizer.from_file(str(minilm_tokenizer_file()))
    assert len(raw.encode("water").ids) == 128  # the trap
    tk = minilm_tokenizer(12)
    assert len(tk.encode("water").ids) == 12
    assert tk.encode("water").ids[:3] == [101, 2300, 102]
    # and through the JSON the runtime reads
    assert len(Tokenizer.from_str(tk.to_str()).encode("a " * 100).ids) == 12


def test_build_tokenizer_unknown() -> None:
    with pytest.raises(ValueError, match="unknown text encoder"):
        build_tokenizer("gpt", 8)
