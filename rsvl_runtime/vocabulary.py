"""Vocabularies: class names with synonyms, prompt templates, and the embedding cache.

A vocabulary is a list of classes; each class has a display name, synonyms and a colour (given,
or chosen by meaning: :func:`rsvl_runtime.colours.class_palette`). Each
synonym is put through every prompt template, the prompts are encoded once by the bundle's text
graph, and the L2-normalised embeddings are averaged per class (then renormalised). Results are
cached in memory and on disk, keyed by the bundle's digest and the exact text, so a vocabulary
change never needs a re-export and never re-encodes a vocabulary seen before.

A vocabulary has at least :data:`MIN_CLASSES` class and at most :data:`MAX_CLASSES` (labels are
uint8 and 255 is the nodata value). With two or more classes every pixel gets its most likely
class (a softmax over the classes); a one-class vocabulary (``--vocab water``) labels the pixels
whose cosine score passes the threshold and leaves the others "unclassified"
(:mod:`rsvl_runtime.postprocess`).

Disk cache entries (``<cache>/vocab/<key>.npz``, no pickle) record the key, the bundle digest, the
text signature, the shape and the sha256 of the float32 values. An entry that is unreadable, of the
wrong shape, not finite, fails its checksum or belongs to another bundle/text is discarded with one
warning naming the file and encoded again; entries are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .colours import class_palette
from .files import atomic_open, cache_root
from .manifest import BundleError

log = logging.getLogger("rsvl.runtime")

#: Fewest classes a vocabulary may have: one class is scored by cosine against a threshold
#: (:mod:`rsvl_runtime.postprocess`), two or more by softmax.
MIN_CLASSES = 1
#: Most classes a vocabulary may have: labels are uint8 and 255 is reserved for nodata.
MAX_CLASSES = 255
#: Version of the disk cache entry layout (the ``meta`` record).
CACHE_FORMAT = 1



class VocabularyError(ValueError):
    """An empty or malformed vocabulary."""


@dataclass(frozen=True)
class VocabClass:
    name: str
    synonyms: tuple[str, ...] = field(default_factory=tuple)
    color: tuple[int, int, int] | None = None  # None: chosen by meaning in parse_vocabulary

    @property
    def phrases(self) -> tuple[str, ...]:
        """The name followed by its synonyms, each once."""
        return tuple(dict.fromkeys((self.name, *self.synonyms)))


def _color(value: Any, name: str) -> tuple[int, int, int]:
    """A class colour ``[r, g, b]`` (0..255 each), or :class:`VocabularyError` naming the class."""
    try:
        ok = len(value) == 3 and all(float(v) == int(v) and 0 <= int(v) <= 255 for v in value)
    except (TypeError, ValueError):
        ok = False
    if not ok or isinstance(value, (str, bytes)):
        raise VocabularyError(f"class {name!r} has the colour {value!r}: give three integers 0..255, "
                              "e.g. \"color\": [31, 120, 180] (or leave it out: rsvl picks one by meaning)")
    return int(value[0]), int(value[1]), int(value[2])


def _one(item: Any, index: int) -> tuple[str, tuple[str, ...], tuple[int, int, int] | None]:
    if isinstance(item, VocabClass):
        return item.name, item.synonyms, item.color
    if isinstance(item, dict):
        if not str(item.get("name") or "").strip():
            raise VocabularyError(f"vocabulary entry {index} has no 'name': {item!r}; give each class a "
                                  "non-empty name, e.g. {\"name\": \"water\", \"synonyms\": [\"lake\"]}")
        color = _color(item["color"], str(item["name"]).strip()) if item.get("color") is not None else None
        return str(item["name"]).strip(), tuple(s.strip() for s in item.get("synonyms", []) if s.strip()), color
    if isinstance(item, str):
        parts = [p.strip() for p in item.replace("|", ",").split(",") if p.strip()]
        if not parts:
            raise VocabularyError(f"vocabulary entry {index} ({item!r}) is blank: give it a class name or remove it")
        return parts[0], tuple(parts[1:]), None
    raise VocabularyError(f"vocabulary entry {index} must be a string or a dict, got {type(item).__name__}")


def parse_vocabulary(items: Iterable[Any] | str | None) -> list[VocabClass]:
    """Normalise a vocabulary given as

    - a list of strings, one class each, synonyms after commas: ``["water, lake, river", "building"]``;
    - a list of dicts ``{"name", "synonyms", "color"}`` (the bundle's default vocabulary format);
    - a CLI string: classes separated by commas, synonyms by ``|``: ``"water|lake,building,road"``.

    Raises :class:`VocabularyError` for ``None``, an empty or blank vocabulary, a duplicate class,
    an invalid colour or more than :data:`MAX_CLASSES` classes. Classes without a colour get one by
    meaning (:func:`rsvl_runtime.colours.class_palette`).
    """
    example = "e.g. --vocab \"water,building,vegetation\" or set_vocabulary([\"water\", \"building\"])"
    if items is None:
        raise VocabularyError(f"the vocabulary is None: give a list of class names, {example}")
    if isinstance(items, str):
        items = [c for c in items.split(",") if c.strip()]
    elif isinstance(items, (bytes, dict)) or not isinstance(items, Iterable):
        raise VocabularyError(f"the vocabulary must be a list of class names or a string, got "
                              f"{type(items).__name__} {items!r:.80}; {example}")
    items = list(items)
    if not items:
        raise VocabularyError(f"the vocabulary is empty: give at least one class name, {example}")
    parsed: list[tuple[str, tuple[str, ...], tuple[int, int, int] | None]] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        name, syn, color = _one(item, i)
        if name.lower() in seen:
            raise VocabularyError(f"class {name!r} appears twice in the vocabulary; merge the entries "
                                  "into one class with synonyms (\"water|lake|river\")")
        seen.add(name.lower())
        parsed.append((name, syn, color))
    classes = [VocabClass(n, syn) for n, syn, _ in parsed]
    if len(classes) > MAX_CLASSES:
        raise VocabularyError(f"the vocabulary has {len(classes)} classes, more than the limit of {MAX_CLASSES} "
                              "(labels are stored as uint8 and 255 means nodata); merge classes as synonyms "
                              "(\"water|lake|river\") or split the vocabulary over several runs")
    colors = class_palette([c.phrases for c in classes], [c for _, _, c in parsed])
    return [VocabClass(c.name, c.synonyms, col) for c, col in zip(classes, colors)]


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


def check_templates(templates: Sequence[str]) -> list[str]:
    """The prompt templates as a list, each with exactly one ``{}`` where the class name goes;
    :class:`VocabularyError` naming the template otherwise."""
    fix = "each template needs exactly one {} where the class name goes, e.g. \"a satellite image of {}.\""
    if isinstance(templates, (str, bytes)) or not isinstance(templates, Iterable):
        raise VocabularyError(f"prompt templates must be a list of strings, got {templates!r:.80}; {fix}")
    out = list(templates)
    for t in out:
        if not isinstance(t, str):
            raise VocabularyError(f"prompt template {t!r} is not a string; {fix}")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
        except ValueError as e:
            raise VocabularyError(f"prompt template {t!r} is not a valid template ({e}); {fix} "
                                  "(write literal braces as {{ and }})") from None
        if len(fields) != 1:
            raise VocabularyError(f"prompt template {t!r} has {len(fields)} placeholders; {fix}")
        if fields[0] not in ("", "0"):
            raise VocabularyError(f"prompt template {t!r} has the placeholder {{{fields[0]}}}; {fix}")
    return out


def prompts_for(classes: Sequence[VocabClass], templates: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """All prompts of all classes, and for each prompt the index of its class."""
    templates = check_templates(templates or []) or ["{}"]
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
    return json.dumps({"templates": check_templates(templates), "classes": [[c.name, *c.synonyms] for c in classes]},
                      sort_keys=True)


def _entry_key(bundle_digest: str, signature: str) -> str:
    return hashlib.sha256((bundle_digest + "\n" + signature).encode("utf-8")).hexdigest()


def vocabulary_key(bundle_digest: str, classes: Sequence[VocabClass], templates: Sequence[str]) -> str:
    """Cache key: bundle digest + the exact text that gets encoded."""
    return _entry_key(bundle_digest, text_signature(classes, templates))


def default_cache_dir() -> Path:
    """Where vocabulary embeddings are cached: ``vocab/`` under :func:`rsvl_runtime.bundle.cache_root`."""
    return cache_root() / "vocab"


def values_sha256(emb: np.ndarray) -> str:
    """sha256 of the little-endian float32 bytes of ``emb`` (row order matters)."""
    return hashlib.sha256(np.ascontiguousarray(emb, dtype="<f4").tobytes()).hexdigest()


def embedding_problem(emb: np.ndarray, n_classes: int | None = None, width: int | None = None) -> str | None:
    """Why ``emb`` is not a usable ``[K, D]`` class-embedding matrix (None when it is)."""
    if emb.dtype.kind != "f" or emb.ndim != 2:
        return f"holds {emb.dtype} values of shape {list(emb.shape)}, not float [K, D] embeddings"
    if n_classes and emb.shape[0] != n_classes:
        return f"has {emb.shape[0]} rows for {n_classes} classes"
    if width and emb.shape[1] != width:
        return f"has width {emb.shape[1]}, but the bundle's text embeddings have {width}"
    if not np.isfinite(emb).all():
        return "contains NaN or infinite values"
    return None


def check_bundle_vocab_cache(path: Path, n_classes: int | None, width: int | None) -> None:
    """Check the bundle's shipped ``vocab_cache.npz`` (its sha256 is already checked by the manifest):
    ``text_emb`` of shape ``[n_classes, width]``, finite, and a ``signature``; :class:`BundleError`
    naming the file otherwise."""
    try:
        with np.load(path, allow_pickle=False) as z:
            emb, has_signature = np.asarray(z["text_emb"]), "signature" in z.files
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same fault for the user
        raise BundleError(f"{path}: cannot read the bundle's vocabulary cache ({type(e).__name__}: {e}); "
                          "re-export the bundle") from None
    problem = embedding_problem(emb, n_classes or None, width or None)
    if problem is None and not has_signature:
        problem = "has no text signature"
    if problem:
        raise BundleError(f"{path}: the bundle's vocabulary cache {problem}; re-export the bundle")


class VocabularyCache:
    """Embeddings by key, in memory and as verified ``<dir>/<key>.npz`` entries on disk.

    Each file holds ``text_emb`` (float32 ``[K, D]``), ``names`` and ``meta``: JSON with the cache
    format, the key, the bundle digest and text signature (when the caller gave them), the shape
    and :func:`values_sha256`. :meth:`get` discards (one warning naming the file, then deletes) any
    entry that fails a check; :meth:`put` writes atomically."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory else default_cache_dir()
        self._mem: dict[str, np.ndarray] = {}

    def file(self, key: str) -> Path:
        """The disk entry of ``key``."""
        return self.directory / f"{key}.npz"

    def get(self, key: str, n_classes: int | None = None, *, bundle_digest: str | None = None,
            signature: str | None = None, width: int | None = None) -> np.ndarray | None:
        """The cached ``[K, D]`` embeddings of ``key``, or None (absent, or discarded as bad).

        ``n_classes``/``width``: the expected K and D; ``bundle_digest``/``signature``: what the
        entry must have been computed for. Without them the entry is still checked against its key
        (the key hashes the digest and signature it records), its shape and its checksum."""
        hit = self._mem.get(key)
        if hit is not None and (not n_classes or hit.shape[0] == n_classes):
            return hit
        f = self.file(key)
        if not f.is_file():
            return None
        try:
            with np.load(f, allow_pickle=False) as z:
                emb = np.asarray(z["text_emb"])
                meta = json.loads(str(z["meta"])) if "meta" in z.files else None
        except Exception as e:  # noqa: BLE001 - truncated zip, garbage, missing array: all recomputed
            return self._discard(f, f"is unreadable ({type(e).__name__}: {e})")
        problem = self._meta_problem(meta, key, bundle_digest, signature) or embedding_problem(emb, n_classes, width)
        if problem is None and list(emb.shape) != meta["shape"]:
            problem = f"has shape {list(emb.shape)} but records {meta['shape']}"
        if problem is None and (emb.dtype != np.float32 or values_sha256(emb) != meta["sha256"]):
            problem = "fails its checksum (its values were modified, e.g. rows swapped)"
        if problem:
            return self._discard(f, problem)
        self._mem[key] = emb
        return emb

    @staticmethod
    def _meta_problem(meta: Any, key: str, bundle_digest: str | None, signature: str | None) -> str | None:
        if not isinstance(meta, dict) or not {"format", "key", "shape", "sha256"} <= set(meta):
            return "has no checksum record (written by an older rsvl, or not by rsvl)"
        if meta["format"] != CACHE_FORMAT:
            return f"has cache format {meta['format']!r}, not {CACHE_FORMAT}"
        if meta["key"] != key:
            return f"records the key {str(meta['key'])[:16]}…, not its file name's"
        if bundle_digest is not None and meta.get("bundle_digest") != bundle_digest:
            return (f"was computed for bundle {str(meta.get('bundle_digest'))[:16]}…, "
                    f"not this bundle {bundle_digest[:16]}…")
        if signature is not None and meta.get("signature") != signature:
            return "was computed for another text (classes, synonyms or templates differ)"
        recorded = (meta.get("bundle_digest"), meta.get("signature"))
        if None not in recorded and _entry_key(*recorded) != key:
            return "records a bundle digest and text that do not belong to its key"
        return None

    def _discard(self, f: Path, problem: str) -> None:
        """Warn once about the bad entry ``f`` and delete it (get() then returns None)."""
        log.warning("vocabulary cache entry %s %s; discarding it and encoding the vocabulary again", f, problem)
        try:
            f.unlink(missing_ok=True)
        except OSError:
            pass  # read-only cache: the entry is still never trusted, put() will try to replace it

    def put(self, key: str, emb: np.ndarray, classes: Sequence[VocabClass], *, bundle_digest: str | None = None,
            signature: str | None = None) -> None:
        """Remember ``emb`` under ``key`` and write its verified disk entry atomically (a read-only
        cache folder only keeps it in memory)."""
        if bundle_digest is not None and signature is not None and _entry_key(bundle_digest, signature) != key:
            raise ValueError("put(): the key is not vocabulary_key(bundle_digest, classes, templates)")
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        self._mem[key] = emb
        meta = {"format": CACHE_FORMAT, "key": key, "bundle_digest": bundle_digest, "signature": signature,
                "shape": list(emb.shape), "sha256": values_sha256(emb)}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with atomic_open(self.file(key), "wb") as fh:
                np.savez(fh, text_emb=emb, names=np.asarray([c.name for c in classes]),
                         meta=np.asarray(json.dumps(meta, sort_keys=True)))
        except OSError as e:
            log.debug("vocabulary cache %s is not writable (%s); keeping the embeddings in memory", self.directory, e)

    def get_or_encode(self, key: str, classes: Sequence[VocabClass], encode: Callable[[], np.ndarray], *,
                      bundle_digest: str | None = None, templates: Sequence[str] | None = None,
                      width: int | None = None) -> np.ndarray:
        """The embeddings of ``classes``: a verified cache entry, or ``encode()`` (then cached).

        Pass ``bundle_digest``, ``templates`` and ``width`` (the bundle's embedding dim) so the
        entry records them and an entry of another bundle, text or width is never used."""
        signature = text_signature(classes, templates) if templates is not None else None
        hit = self.get(key, len(classes), bundle_digest=bundle_digest, signature=signature, width=width)
        if hit is not None:
            return hit
        emb = np.asarray(encode(), dtype=np.float32)
        problem = embedding_problem(emb, len(classes), width)
        if problem:
            raise BundleError(f"the bundle's text graph returned embeddings that {problem}; the bundle is "
                              "broken: re-export it")
        self.put(key, emb, classes, bundle_digest=bundle_digest, signature=signature)
        return emb


def vocabulary_to_json(classes: Sequence[VocabClass]) -> list[dict[str, Any]]:
    return [{"name": c.name, "synonyms": list(c.synonyms), "color": list(c.color) if c.color else None}
            for c in classes]


__all__ = ["MAX_CLASSES", "MIN_CLASSES", "VocabClass", "VocabularyCache", "VocabularyError", "average_per_class",
           "check_bundle_vocab_cache", "check_templates", "default_cache_dir", "embedding_problem",
           "load_vocabulary_file", "parse_vocabulary", "prompts_for", "text_signature", "values_sha256",
           "vocabulary_key", "vocabulary_to_json"]
