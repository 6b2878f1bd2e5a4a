"""Vocabulary parsing, prompt averaging and the embedding cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rsvl_runtime.vocabulary import (VocabClass, VocabularyCache, VocabularyError, average_per_class,
                                     load_vocabulary_file, parse_vocabulary, prompts_for, vocabulary_key)


def test_cli_string_classes_and_synonyms() -> None:
    v = parse_vocabulary("water|lake|river, building ,road")
    assert [c.name for c in v] == ["water", "building", "road"]
    assert v[0].synonyms == ("lake", "river")
    assert v[0].phrases == ("water", "lake", "river")
    assert len({c.color for c in v}) == 3


def test_list_and_dict_forms() -> None:
    v = parse_vocabulary(["water, lake", {"name": "building", "synonyms": ["house"], "color": [1, 2, 3]}])
    assert v[0] == VocabClass("water", ("lake",), v[0].color)
    assert v[1].color == (1, 2, 3) and v[1].synonyms == ("house",)


@pytest.mark.parametrize("bad", [[], "", " , ,", ["  "]])
def test_empty_vocabulary_is_refused(bad) -> None:
    with pytest.raises(VocabularyError, match="empty|blank"):
        parse_vocabulary(bad)


def test_duplicate_class_is_refused() -> None:
    with pytest.raises(VocabularyError, match="appears twice"):
        parse_vocabulary("water,Water")


def test_prompts_and_average() -> None:
    v = parse_vocabulary(["water, lake", "road"])
    texts, owner = prompts_for(v, ["a photo of {}.", "{}"])
    assert texts == ["a photo of water.", "water", "a photo of lake.", "lake", "a photo of road.", "road"]
    assert owner.tolist() == [0, 0, 0, 0, 1, 1]
    emb = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [3, 0], [0, 0.0]], dtype=np.float32)
    avg = average_per_class(emb, owner, 2)
    np.testing.assert_allclose(avg[0], [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    np.testing.assert_allclose(avg[1], [1.0, 0.0], atol=1e-6)


def test_cache_roundtrip_and_key(tmp_path: Path) -> None:
    v = parse_vocabulary("water,road")
    k1 = vocabulary_key("abc", v, ["{}"])
    assert k1 != vocabulary_key("abd", v, ["{}"]) != vocabulary_key("abc", v, ["a {}"])
    calls = []

    def encode() -> np.ndarray:
        calls.append(1)
        return np.eye(2, dtype=np.float32)

    c = VocabularyCache(tmp_path)
    np.testing.assert_array_equal(c.get_or_encode(k1, v, encode), np.eye(2))
    np.testing.assert_array_equal(VocabularyCache(tmp_path).get_or_encode(k1, v, encode), np.eye(2))
    assert len(calls) == 1  # the second cache instance read the disk copy
    (tmp_path / f"{k1}.npz").write_bytes(b"garbage")
    assert VocabularyCache(tmp_path).get(k1) is None  # corrupt entries are recomputed, not trusted


def test_vocabulary_file(tmp_path: Path) -> None:
    f = tmp_path / "v.txt"
    f.write_text("# classes\nwater, lake\nbuilding\n\n")
    assert [c.name for c in load_vocabulary_file(f)] == ["water", "building"]
    with pytest.raises(VocabularyError, match="does not exist"):
        load_vocabulary_file(tmp_path / "none.txt")
