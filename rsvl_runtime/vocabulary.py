"""Vocabularies: class names with synonyms, prompt templates, and the embedding cache.

A vocabulary is a list of classes; each class has a display name, synonyms and a colour. Each
synonym is put through every prompt template, the prompts are encoded once by the bundle's text
graph, and the L2-normalised embeddings are averaged per class (then renormalised). Results are
cached in memory and on disk, keyed by the bundle's manifest hash and the exact text, so a
vocabulary change never needs a re-export and never re-encodes a vocabulary seen before.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

#: Distinct colours for classes that do not bring their own (tab20-like).
PALETTE: list[tuple[int, int, int]] = [
    (31, 119, 180), (214, 39, 40), (127, 127, 127), (44, 160, 44), (255, 187, 120),
    (140, 86, 75), (188, 189, 34), (148, 103, 189), (23, 190, 207), (227, 119, 194),
    (255, 127, 14), (152, 223, 138), (174, 199, 232), (197, 176, 213), (196, 156, 148),
    (247, 182, 210), (219, 219, 141), (158, 218, 229), (255, 152, 150), (199, 199, 199),
]


class VocabularyError(ValueError):
    """An empty or malformed vocabulary."""


@dataclass(frozen=True)
class VocabClass:
    name: str
    synonyms: tuple[str, ...] = field(default_factory=tuple)
    color: tuple[int, int, int] = (0, 0, 0)

    @property
    def phrases(self) -> tuple[str, ...]:
        """The name followed by its synonyms, each once."""
        return tuple(dict.fromkeys((self.name, *self.synonyms)))


def _one(item: Any, index: int) -> tuple[str, tuple[str, ...], tuple[int, int, int] | None]:
    if isinstance(item, VocabClass):
        return item.name, item.synonyms, item.color
    if isinstance(item, dict):
        if not str(item.get("name", "")).strip():
            raise VocabularyError(f"vocabulary entry {index} has no 'name': {item!r}")
        color = tuple(item["color"]) if item.get("color") is not None else None
        return str(item["name"]).strip(), tuple(s.strip() for s in item.get("synonyms", []) if s.strip()), color
    if isinstance(item, str):
        parts = [p.strip() for p in item.replace("|", ",").split(",") if p.strip()]
        if not parts:
            raise VocabularyError(f"vocabulary entry {index} is blank")
        return parts[0], tuple(parts[1:]), None
    raise VocabularyError(f"vocabulary entry {index} must be a string or a dict, got {type(item).__name__}")


def parse_vocabulary(items: Iterable[Any] | str) -> list[VocabClass]:
    """Normalise a vocabulary given as

    - a list of strings, one class each, synonyms after commas: ``["water, lake, river", "building"]``;
    - a list of dicts ``{"name", "synonyms", "color"}`` (the bundle's default vocabulary format);
    - a CLI string: classes separated by commas, synonyms by ``|``: ``"water|lake,building,road"``.
    """
    if isinstance(items, str):
        items = [c for c in items.split(",") if c.strip()]
    items = list(items)
    if not items:
        raise VocabularyError("the vocabulary is empty: give at least one class name, "
                              "e.g. --vocab \"water,building,vegetation\"")
    classes: list[VocabClass] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        name, syn, color = _one(item, i)
        if name.lower() in seen:
            raise VocabularyError(f"class {name!r} appears twice in the vocabulary; merge the entries "
                                  "into one class with synonyms (\"water|lake|river\")")
        seen.add(name.lower())
        classes.append(VocabClass(name, syn, color if color else PALETTE[i % len(PALETTE)]))
    return classes


def load_vocabulary_file(path: str | os.PathLike[str]) -> list[VocabClass]:
    """A JSON list (strings or dicts) or a text file with one class per line
    (synonyms after commas; ``#`` starts a comment)."""
    p = Path(path)
    if not p.is_file():
        raise VocabularyError(f"vocabulary file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        return parse_vocabulary(json.loads(text))
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    return parse_vocabulary([ln for ln in lines if ln])


def prompts_for(classes: Sequence[VocabClass], templates: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """All prompts of all classes, and for each prompt the index of its class."""
    if not templates:
        templates = ["{}"]
    texts: list[str] = []
    owner: list[int] = []
    for k, c in enumerate(classes):
        for phrase in c.phrases:
            for t in templates:
                texts.append(t.format(phrase))
                owner.append(k)
    return texts, np.asarray(owner, dtype=np.int64)


def average_per_class(emb: np.ndarray, owner: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean of the L2-normalised prompt embeddings of each class, renormalised: ``[K, D]``."""
    emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    out = np.zeros((n_classes, emb.shape[-1]), dtype=np.float32)
    np.add.at(out, owner, emb.astype(np.float32))
    return out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)


def text_signature(classes: Sequence[VocabClass], templates: Sequence[str]) -> str:
    """The exact text that gets encoded (names, synonyms, templates) as canonical JSON."""
    return json.dumps({"templates": list(templates), "classes": [[c.name, *c.synonyms] for c in classes]},
                      sort_keys=True)


def vocabulary_key(bundle_digest: str, classes: Sequence[VocabClass], templates: Sequence[str]) -> str:
    """Cache key: bundle manifest hash + the exact text that gets encoded."""
    payload = bundle_digest + "\n" + text_signature(classes, templates)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def default_cache_dir() -> Path:
    base = os.environ.get("RSVL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "rsvl")
    return Path(base) / "vocab"


class VocabularyCache:
    """Embeddings by key, in memory and as ``<dir>/<key>.npz`` on disk (atomic writes)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory else default_cache_dir()
        self._mem: dict[str, np.ndarray] = {}

    def get(self, key: str) -> np.ndarray | None:
        if key in self._mem:
            return self._mem[key]
        f = self.directory / f"{key}.npz"
        if f.is_file():
            try:
                with np.load(f, allow_pickle=False) as z:
                    arr = z["text_emb"].astype(np.float32)
            except (OSError, ValueError, KeyError):
                f.unlink(missing_ok=True)  # a corrupt cache entry is recomputed, never trusted
                return None
            self._mem[key] = arr
            return arr
        return None

    def put(self, key: str, emb: np.ndarray, classes: Sequence[VocabClass]) -> None:
        self._mem[key] = emb
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.directory / f".{key}.{os.getpid()}.tmp.npz"
            np.savez(tmp, text_emb=emb, names=np.asarray([c.name for c in classes]))
            os.replace(tmp, self.directory / f"{key}.npz")
        except OSError:
            pass  # read-only home: the in-memory cache still works

    def get_or_encode(self, key: str, classes: Sequence[VocabClass],
                      encode: Callable[[], np.ndarray]) -> np.ndarray:
        hit = self.get(key)
        if hit is not None and hit.shape[0] == len(classes):
            return hit
        emb = encode()
        self.put(key, emb, classes)
        return emb


def vocabulary_to_json(classes: Sequence[VocabClass]) -> list[dict[str, Any]]:
    return [{"name": c.name, "synonyms": list(c.synonyms), "color": list(c.color)} for c in classes]


__all__ = ["VocabClass", "VocabularyError", "VocabularyCache", "parse_vocabulary", "load_vocabulary_file",
           "prompts_for", "average_per_class", "text_signature", "vocabulary_key", "vocabulary_to_json"]
