"""Hostile bundles, a corrupt vocabulary cache and bad vocabularies (issue 11, deliverables 3-4).

Every case uses real files: small hand-made bundles (sealed by ``write_manifest``), zip archives
built member by member, cache entries rewritten on disk. The Segmenter cases run the real
``Segmenter.set_vocabulary`` path on a small bundle with a word-level tokenizer and a
deterministic stand-in text graph; one test repeats the cache faults on the exported tiny bundle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rsvl_runtime.backends import Sessions
from rsvl_runtime.bundle import (MANIFEST_HASH_KEY, ZIP_CACHE_KEEP, Bundle, BundleError, manifest_hash,
                                 sha256_file, write_manifest)
from rsvl_runtime.segmenter import Segmenter
from rsvl_runtime.vocabulary import (MAX_CLASSES, VocabularyCache, VocabularyError, check_templates,
                                     parse_vocabulary, prompts_for, text_signature, values_sha256,
                                     vocabulary_key)

DIM = 8
WORDS = ["[PAD]", "[UNK]", "a", "satellite", "image", "of", "water", "lake", "land", "building", "road",
         "vegetation", "trees", "other"]
SECRET = "top secret outside content\n"


# ---------------------------------------------------------------------------------------- helpers
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return tk.to_str()


def _make_bundle(root: Path, vocab_cache: np.ndarray | None = None, **overrides: Any) -> Path:
    """A small semantic bundle (fake graphs, a real tokenizer), sealed by write_manifest."""
    root.mkdir(parents=True)
    (root / "text.onnx").write_bytes(b"text-graph")
    (root / "image.onnx").write_bytes(b"image-graph" * 50)
    (root / "tokenizer.json").write_text(_tokenizer_json())
    manifest: dict[str, Any] = {
        "model": "fake", "task": "semantic", "head": "open", "embedding_dim": DIM,
        "modalities": {"sar": {"bands": ["vv"], "units": "db", "mean": [-12.0], "std": [5.0]}},
        "modes": ["sar"], "tile": {"size": 16, "overlap": 0.25},
        "text": {"tokenizer": "tokenizer.json", "max_length": 8, "pad_id": 0, "templates": ["a satellite image of {}"]},
        "graphs": {"text": {"fp32": "text.onnx"},
                   "image": {"fp32": "image.onnx", "inputs": {"sar": {"dtype": "float32", "shape": ["B", 1, 16, 16]},
                                                             "text_emb": {"dtype": "float32", "shape": ["K", DIM]}}}},
        "default_vocabulary": [], "vocab_cache": None, "parity": None, "limits": {"max_vocab": 300},
    }
    if vocab_cache is not None:
        np.savez(root / "vocab_cache.npz", text_emb=vocab_cache, signature=np.asarray("sig"))
        manifest["vocab_cache"] = "vocab_cache.npz"
        manifest["default_vocabulary"] = [{"name": f"c{i}"} for i in range(vocab_cache.shape[0])]
    manifest.update(overrides)
    write_manifest(root, manifest)
    return root


def _seal(root: Path, manifest: dict[str, Any]) -> None:
    """Write a hand-made manifest with a valid self-hash (what a careful attacker would do)."""
    m = {k: v for k, v in manifest.items() if k != MANIFEST_HASH_KEY}
    m[MANIFEST_HASH_KEY] = manifest_hash(m)
    (root / "manifest.json").write_text(json.dumps(m, indent=2))


def _manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / "manifest.json").read_text())


class _Text:
    """A deterministic text 'graph': the sum of fixed random word vectors of the unmasked tokens."""

    name, input_names, output_names = "text", ["input_ids", "attention_mask"], ["text_emb"]
    table = np.random.default_rng(0).standard_normal((len(WORDS), DIM)).astype(np.float32)

    def __init__(self) -> None:
        self.calls = 0

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        emb = (self.table[feeds["input_ids"]] * feeds["attention_mask"][..., None]).sum(1)
        return {"text_emb": emb.astype(np.float32)}


class _Image:
    name, input_names, output_names = "image", ["sar", "text_emb"], ["logits"]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        b, _, h, w = feeds["sar"].shape
        return {"logits": np.zeros((b, feeds["text_emb"].shape[0], h, w), np.float32)}


def _segmenter(bundle: Path, cache: Path) -> Segmenter:
    b = Bundle.load(bundle)
    return Segmenter(b, Sessions(text=_Text(), image=_Image(), backend="onnxruntime", precision="fp32"),
                     cache_dir=cache)


def _rewrite(f: Path, emb: np.ndarray | None = None, **meta_update: Any) -> None:
    """Rewrite a cache entry with other values and/or meta fields (the rest kept as written)."""
    with np.load(f, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta.update(meta_update)
    arrays["meta"] = np.asarray(json.dumps(meta))
    if emb is not None:
        arrays["text_emb"] = emb
    with open(f, "wb") as fh:
        np.savez(fh, **arrays)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "rsvl.runtime" and r.levelno == logging.WARNING]


# ------------------------------------------------------------------------- paths inside the bundle
@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    return _make_bundle(tmp_path / "b")


@pytest.fixture()
def secret(tmp_path: Path) -> Path:
    f = tmp_path / "secret.txt"
    f.write_text(SECRET)
    return f


@pytest.mark.parametrize("entry, edit", [
    ("files['../../etc/passwd']", lambda m: m["files"].update({"../../etc/passwd": {"sha256": "0" * 64, "bytes": 1}})),
    ("files['../secret.txt']", lambda m: m["files"].update({"../secret.txt": {"sha256": "0" * 64, "bytes": 1}})),
    ("files['/etc/passwd']", lambda m: m["files"].update({"/etc/passwd": {"sha256": "0" * 64, "bytes": 1}})),
    ("graphs.image.fp32", lambda m: m["graphs"]["image"].update(fp32="../secret.txt")),
    ("text.tokenizer", lambda m: m["text"].update(tokenizer="/etc/hostname")),
    ("engines[0].file", lambda m: m.update(engines=[{"file": "sub/../../secret.txt"}])),
    ("parity", lambda m: m.update(parity="C:\\secret.txt")),
])
def test_manifest_paths_outside_the_bundle_are_refused_before_reading(bundle: Path, secret: Path, entry, edit,
                                                                      monkeypatch) -> None:
    m = _manifest(bundle)
    edit(m)
    _seal(bundle, m)
    hashed: list[str] = []
    monkeypatch.setattr("rsvl_runtime.bundle.sha256_file", lambda p, *a: hashed.append(str(p)) or "0" * 64)
    with pytest.raises(BundleError) as ei:
        Bundle.load(bundle)
    msg = str(ei.value)
    assert entry in msg and "inside itself" in msg and "re-export the bundle" in msg and "\n" not in msg
    assert ("absolute" in msg) or ("'..'" in msg)
    assert hashed == []  # refused before any file was hashed
    assert SECRET.strip() not in msg and hashlib.sha256(SECRET.encode()).hexdigest()[:12] not in msg


def test_symlink_out_of_the_bundle_is_refused(bundle: Path, secret: Path) -> None:
    link = bundle / "weights.safetensors"
    link.symlink_to(secret)
    with pytest.raises(BundleError, match=r"weights\.safetensors is a symlink that resolves outside the bundle"):
        write_manifest(bundle, _manifest(bundle))  # the exporter never hashes an outside file
    m = _manifest(bundle)
    m["files"]["weights.safetensors"] = {"sha256": sha256_file(secret), "bytes": len(SECRET)}
    m["weights"] = {"file": "weights.safetensors"}
    _seal(bundle, m)
    with pytest.raises(BundleError) as ei:
        Bundle.load(bundle)
    msg = str(ei.value)
    assert "files['weights.safetensors']" in msg and "symlink that resolves outside the bundle" in msg
    assert str(secret) not in msg and sha256_file(secret)[:12] not in msg
    # a symlinked folder that leaves the bundle is caught the same way
    link.unlink()
    (bundle / "sub").symlink_to(secret.parent, target_is_directory=True)
    m["files"] = {**_manifest(bundle)["files"], "sub/secret.txt": {"sha256": "0" * 64, "bytes": 1}}
    m.pop("weights")
    _seal(bundle, m)
    with pytest.raises(BundleError, match=r"files\['sub/secret.txt'\] = 'sub/secret.txt' is a symlink"):
        Bundle.load(bundle)


def test_symlink_inside_the_bundle_is_fine(bundle: Path) -> None:
    (bundle / "alias.onnx").symlink_to("image.onnx")
    m = write_manifest(bundle, _manifest(bundle))
    assert m["files"]["alias.onnx"]["sha256"] == sha256_file(bundle / "image.onnx")
    assert Bundle.load(bundle).path("alias.onnx").read_bytes() == (bundle / "image.onnx").read_bytes()


def test_path_accessor_refuses_traversal(bundle: Path) -> None:
    b = Bundle.load(bundle)
    with pytest.raises(BundleError, match=r"'\.\./secret\.txt' contains '\.\.'"):
        b.path("../secret.txt")
    with pytest.raises(BundleError, match="is an absolute path"):
        b.path("/etc/passwd")


# ------------------------------------------------------------------------------ manifest self-hash
def test_edited_manifest_number_is_refused(bundle: Path) -> None:
    text = (bundle / "manifest.json").read_text()
    edited, n = re.subn(r'("std": \[\s*)5\.0', r"\g<1>9.0", text)  # SAR std 5 -> 9, nothing else touched
    assert n == 1
    (bundle / "manifest.json").write_text(edited)
    with pytest.raises(BundleError) as ei:
        Bundle.load(bundle, verify=False)  # checked even without hashing the files
    msg = str(ei.value)
    assert msg == (f"{bundle / 'manifest.json'} was modified after export (its content no longer matches its "
                   "manifest_sha256); re-export or restore it")


def test_reformatting_the_manifest_is_not_a_modification(bundle: Path) -> None:
    m = _manifest(bundle)
    (bundle / "manifest.json").write_text(json.dumps(m, sort_keys=True))  # same content, other layout
    assert Bundle.load(bundle).digest == m[MANIFEST_HASH_KEY]


def test_manifest_without_self_hash_is_refused(bundle: Path) -> None:
    m = _manifest(bundle)
    del m[MANIFEST_HASH_KEY]
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="has no manifest_sha256: it was written by an older rsvl.*re-export"):
        Bundle.load(bundle)
    write_manifest(bundle, m)  # the fix: write it through write_manifest (what rsvl-export does)
    Bundle.load(bundle)


# ------------------------------------------------------------------------------------ digest pinning
def test_digest_pins_the_manifest_and_every_file(bundle: Path) -> None:
    b = Bundle.load(bundle)
    assert len(b.digest) == 64 and b.digest == _manifest(bundle)[MANIFEST_HASH_KEY]
    assert Bundle.load(bundle, expect_digest=b.digest).digest == b.digest
    assert Bundle.load(bundle, b.digest[:12]).digest == b.digest          # a 12-character prefix
    assert Bundle.load(bundle, expect_digest="sha256:" + b.digest[:20].upper()).digest == b.digest
    shutil.copytree(bundle, bundle.parent / "copy")
    assert Bundle.load(bundle.parent / "copy").digest == b.digest         # location-independent
    (bundle / "image.onnx").write_bytes(b"another model")
    write_manifest(bundle, _manifest(bundle))                              # a valid, different bundle
    new = Bundle.load(bundle)
    assert new.digest != b.digest
    with pytest.raises(BundleError) as ei:
        Bundle.load(bundle, expect_digest=b.digest)
    msg = str(ei.value)
    assert f"bundle digest {new.digest} does not match the expected digest {b.digest}" in msg
    assert "pinned bundle" in msg and "\n" not in msg


def test_bad_expect_digest_names_the_fix(bundle: Path) -> None:
    digest = Bundle.load(bundle).digest
    for bad in (digest[:11], "not-a-digest-at-all", ""):
        with pytest.raises(BundleError, match="at least 12 hex characters"):
            Bundle.load(bundle, expect_digest=bad)
    with pytest.raises(BundleError, match="does not match the expected digest"):
        Bundle.load(bundle, expect_digest=("0" if digest[0] != "0" else "1") + digest[1:12])


def test_inspect_shows_the_digest(bundle: Path, capsys, monkeypatch) -> None:
    from rsvl_runtime.inspect import print_bundle

    monkeypatch.setenv("COLUMNS", "200")
    b = print_bundle(bundle)
    out = capsys.readouterr().out
    assert any("digest" in line and b.digest in line for line in out.splitlines())


# ------------------------------------------------------------------------------------ zip bundles
def _zip(path: Path, members: list[tuple[str, bytes | None, int]]) -> Path:
    """A zip with the given (name, data, unix mode) members; data None = a symlink to ``/etc``."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            z.writestr(info, data if data is not None else b"/etc")
    return path


def _zip_bundle(bundle: Path, path: Path) -> Path:
    return Path(shutil.make_archive(str(path.with_suffix("")), "zip", root_dir=bundle.parent, base_dir=bundle.name))


@pytest.fixture()
def isolated_tmp(tmp_path: Path, monkeypatch) -> dict[str, Path]:
    """RSVL_CACHE_DIR and the system temp folder redirected into tmp_path (both start empty)."""
    cache, systmp = tmp_path / "cache", tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setenv("RSVL_CACHE_DIR", str(cache))
    monkeypatch.setenv("TMPDIR", str(systmp))
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    return {"cache": cache, "systmp": systmp}


@pytest.mark.parametrize("name, data, mode, problem", [
    ("b/evil", None, stat.S_IFLNK | 0o777, "is a symlink"),
    ("b/../../evil.txt", b"x", stat.S_IFREG | 0o644, "contains '..' (path traversal)"),
    ("/tmp/evil.txt", b"x", stat.S_IFREG | 0o644, "is an absolute path"),
    ("b/manifest.json", b"{}", stat.S_IFREG | 0o644, "appears twice in the archive"),
])
def test_hostile_zip_members_are_refused_before_extraction(bundle: Path, tmp_path: Path, isolated_tmp, name, data,
                                                            mode, problem) -> None:
    z = _zip_bundle(bundle, tmp_path / "b.zip")
    duplicate_warning = pytest.warns(UserWarning, match="Duplicate name") if "twice" in problem else nullcontext()
    with duplicate_warning, zipfile.ZipFile(z, "a") as zf:
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        zf.writestr(info, data if data is not None else b"/etc")
    with pytest.raises(BundleError) as ei:
        Bundle.load(z)
    msg = str(ei.value)
    assert f"member {name!r} {problem}" in msg and str(z) in msg and "re-export" in msg
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()
    bundles = isolated_tmp["cache"] / "bundles"
    assert not bundles.exists() or list(bundles.iterdir()) == []   # nothing was extracted
    assert list(isolated_tmp["systmp"].iterdir()) == []


def test_symlink_only_zip_fails_with_one_clear_line(tmp_path: Path, isolated_tmp) -> None:
    z = _zip(tmp_path / "links.zip", [("manifest.json", None, stat.S_IFLNK | 0o777)])
    with pytest.raises(BundleError, match=r"member 'manifest.json' is a symlink"):
        Bundle.load(z)


def test_zip_is_extracted_once_into_the_cache(bundle: Path, tmp_path: Path, isolated_tmp, monkeypatch) -> None:
    z = _zip_bundle(bundle, tmp_path / "b.zip")
    extracted: list[str] = []
    real = zipfile.ZipFile.extract
    monkeypatch.setattr(zipfile.ZipFile, "extract", lambda self, m, p=None, pwd=None: extracted.append(
        m.filename) or real(self, m, p, pwd))
    first = Bundle.load(z)
    expected_root = isolated_tmp["cache"] / "bundles" / sha256_file(z) / "b"
    assert first.root == expected_root and (expected_root / "manifest.json").is_file()
    n = len(extracted)
    assert n == len(zipfile.ZipFile(z).namelist())
    second = Bundle.load(z)
    assert second.root == first.root and len(extracted) == n  # reused, not extracted again
    assert second.digest == Bundle.load(bundle).digest
    assert list(isolated_tmp["systmp"].iterdir()) == []       # nothing in the system temp folder
    assert [p.name for p in (isolated_tmp["cache"] / "bundles").iterdir()] == [sha256_file(z)]  # no temp left


def test_zip_cache_keeps_the_most_recent_and_drops_stale_temp(tmp_path: Path, isolated_tmp) -> None:
    zips = []
    for i in range(ZIP_CACHE_KEEP + 2):
        b = _make_bundle(tmp_path / f"src{i}" / "b", model=f"m{i}")
        zips.append(_zip_bundle(b, tmp_path / f"b{i}.zip"))
    folder = isolated_tmp["cache"] / "bundles"
    folder.mkdir(parents=True)
    stale = folder / ".tmp-0123456789abcdef-killed"
    stale.mkdir()
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    for i, z in enumerate(zips):
        Bundle.load(z)
        os.utime(folder / sha256_file(z), (old + i, old + i))  # make the use order unambiguous
    Bundle.load(zips[-1])
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted(sha256_file(z) for z in zips[-ZIP_CACHE_KEEP:])
    assert not stale.exists()


def test_damaged_extraction_is_extracted_again(bundle: Path, tmp_path: Path, isolated_tmp, caplog) -> None:
    z = _zip_bundle(bundle, tmp_path / "b.zip")
    b = Bundle.load(z)
    (b.root / "image.onnx").write_bytes(b"damaged")
    with caplog.at_level(logging.WARNING, logger="rsvl.runtime"):
        again = Bundle.load(z)
    assert (again.root / "image.onnx").read_bytes() == (bundle / "image.onnx").read_bytes()
    assert any("extracting the zip again" in w for w in _warnings(caplog))


def test_corrupt_or_truncated_zip_names_the_file(bundle: Path, tmp_path: Path, isolated_tmp) -> None:
    z = tmp_path / "b.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as zf:  # stored: the member bytes are in the file as-is
        for f in sorted(bundle.iterdir()):
            zf.write(f, f"b/{f.name}")
    data = bytearray(z.read_bytes())
    start = data.find(b"image-graph")
    data[start:start + 11] = b"IMAGE-GRAPH"  # same size, wrong CRC
    z.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{z} is not a readable zip archive \(Bad CRC-32 for file 'b/image.onnx'\)"):
        Bundle.load(z)
    assert [p.name for p in (isolated_tmp["cache"] / "bundles").iterdir()] == []  # no half extraction left
    z.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(BundleError, match=rf"{z} is neither a bundle folder nor a readable zip archive"):
        Bundle.load(z)


# ------------------------------------------------------------------------- the shipped vocab cache
@pytest.mark.parametrize("emb, problem", [
    (np.ones((3, DIM + 1), np.float32), f"has width {DIM + 1}, but the bundle's text embeddings have {DIM}"),
    (np.ones((3, DIM, 1), np.float32), "holds float32 values of shape [3, 8, 1], not float [K, D] embeddings"),
    (np.full((3, DIM), np.nan, np.float32), "contains NaN or infinite values"),
])
def test_shipped_vocab_cache_is_shape_checked(tmp_path: Path, emb, problem) -> None:
    b = _make_bundle(tmp_path / "b", vocab_cache=emb)
    assert _manifest(b)["files"]["vocab_cache.npz"]["sha256"] == sha256_file(b / "vocab_cache.npz")  # hash is right
    with pytest.raises(BundleError) as ei:
        Bundle.load(b)
    assert str(ei.value) == f"{b / 'vocab_cache.npz'}: the bundle's vocabulary cache {problem}; re-export the bundle"


def test_shipped_vocab_cache_rows_must_match_the_default_vocabulary(tmp_path: Path) -> None:
    b = _make_bundle(tmp_path / "b", vocab_cache=np.ones((3, DIM), np.float32))
    m = _manifest(b)
    m["default_vocabulary"] = m["default_vocabulary"][:2]
    write_manifest(b, m)
    with pytest.raises(BundleError, match="vocab_cache.npz: the bundle's vocabulary cache has 3 rows for 2 classes"):
        Bundle.load(b)


# ------------------------------------------------------------------------------ the vocabulary cache
VOCAB = ["water|lake", "land", "building", "road|other"]


@pytest.fixture()
def seg_and_entry(bundle: Path, tmp_path: Path) -> tuple[Segmenter, Path, np.ndarray]:
    """A Segmenter whose disk cache holds one good entry for VOCAB; and that entry's expected values."""
    seg = _segmenter(bundle, tmp_path / "vcache")
    seg.set_vocabulary(VOCAB)
    (entry,) = (tmp_path / "vcache").glob("*.npz")
    fresh = seg.encode(parse_vocabulary(VOCAB))
    np.testing.assert_array_equal(seg.text_emb, fresh)
    return seg, entry, fresh


def _reload(bundle: Path, cache: Path) -> tuple[Segmenter, int]:
    seg = _segmenter(bundle, cache)
    before = seg.sessions.text.calls
    seg.set_vocabulary(VOCAB)
    return seg, seg.sessions.text.calls - before


def test_good_entry_is_used_without_encoding(seg_and_entry, bundle: Path, caplog) -> None:
    _, entry, fresh = seg_and_entry
    with caplog.at_level(logging.WARNING, logger="rsvl.runtime"):
        seg, encodes = _reload(bundle, entry.parent)
    assert encodes == 0 and _warnings(caplog) == []
    np.testing.assert_array_equal(seg.text_emb, fresh)
    with np.load(entry, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    assert meta["shape"] == [4, DIM] and meta["sha256"] == values_sha256(fresh) and meta["key"] == entry.stem


def _truncate(entry: Path, fresh: np.ndarray) -> None:
    entry.write_bytes(entry.read_bytes()[:200])


def _legacy_entry(entry: Path, fresh: np.ndarray) -> None:
    """An entry as the old cache wrote it: values only, no checksum record."""
    with open(entry, "wb") as fh:
        np.savez(fh, text_emb=fresh)


@pytest.mark.parametrize("damage, problem", [
    (lambda f, e: _rewrite(f, e[[1, 0, 2, 3]]), "fails its checksum (its values were modified, e.g. rows swapped)"),
    (lambda f, e: _rewrite(f, np.where(np.eye(4, DIM, dtype=bool), np.nan, e).astype(np.float32)),
     "contains NaN or infinite values"),
    (lambda f, e: _rewrite(f, np.full_like(e, np.inf), sha256=values_sha256(np.full_like(e, np.inf))),
     "contains NaN or infinite values"),
    (_truncate, "is unreadable (BadZipFile"),
    (lambda f, e: f.write_bytes(b"garbage"), "is unreadable ("),
    (lambda f, e: _rewrite(f, np.ones((4, DIM + 3), np.float32)),
     f"has width {DIM + 3}, but the bundle's text embeddings have {DIM}"),
    (lambda f, e: _rewrite(f, e[:3]), "has 3 rows for 4 classes"),
    (lambda f, e: _legacy_entry(f, e), "has no checksum record"),
    (lambda f, e: _rewrite(f, bundle_digest="f" * 64, signature="{}"), "was computed for bundle ffffffffffffffff…, not this bundle"),
])
def test_bad_cache_entry_is_discarded_with_one_warning_and_recomputed(seg_and_entry, bundle: Path, caplog,
                                                                      damage, problem) -> None:
    _, entry, fresh = seg_and_entry
    damage(entry, fresh)
    with caplog.at_level(logging.WARNING, logger="rsvl.runtime"):
        seg, encodes = _reload(bundle, entry.parent)
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings
    assert str(entry) in warnings[0] and problem in warnings[0] and "encoding the vocabulary again" in warnings[0]
    assert encodes > 0
    np.testing.assert_array_equal(seg.text_emb, fresh)   # the right values, not the damaged ones
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rsvl.runtime"):
        again, encodes = _reload(bundle, entry.parent)     # the rewritten entry is good again
    assert encodes == 0 and _warnings(caplog) == []
    np.testing.assert_array_equal(again.text_emb, fresh)
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # atomic: no temp files left


def test_entry_of_another_bundle_text_or_width_is_discarded(tmp_path: Path, caplog) -> None:
    """With the bundle digest, templates and width (the full get_or_encode contract)."""
    classes = parse_vocabulary(VOCAB)
    templates = ["a satellite image of {}"]
    digest_a, digest_b = "a" * 64, "b" * 64
    good = np.random.default_rng(1).standard_normal((4, DIM)).astype(np.float32)
    cache = VocabularyCache(tmp_path)
    key_a = vocabulary_key(digest_a, classes, templates)
    cache.get_or_encode(key_a, classes, lambda: good, bundle_digest=digest_a, templates=templates, width=DIM)
    with np.load(cache.file(key_a), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    assert meta["bundle_digest"] == digest_a and meta["signature"] == text_signature(classes, templates)

    def attempt(key: str, digest: str, width: int = DIM) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="rsvl.runtime"):
            got = VocabularyCache(tmp_path).get_or_encode(key, classes, lambda: good * 2, bundle_digest=digest,
                                                          templates=templates, width=width)
        np.testing.assert_array_equal(got, good * 2)  # recomputed
        return _warnings(caplog)

    key_b = vocabulary_key(digest_b, classes, templates)
    shutil.copy(cache.file(key_a), cache.file(key_b))       # another bundle's entry under this key
    _rewrite(cache.file(key_b), key=key_b)
    (w,) = attempt(key_b, digest_b)
    assert str(cache.file(key_b)) in w and f"was computed for bundle {'a' * 16}…, not this bundle {'b' * 16}…" in w

    other = ["a photo of {}"]
    key_c = vocabulary_key(digest_a, classes, other)
    shutil.copy(cache.file(key_a), cache.file(key_c))
    _rewrite(cache.file(key_c), key=key_c)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rsvl.runtime"):
        VocabularyCache(tmp_path).get_or_encode(key_c, classes, lambda: good, bundle_digest=digest_a, templates=other)
    (w,) = _warnings(caplog)
    assert "was computed for another text" in w

    wide = np.ones((4, DIM + 1), np.float32)                   # a self-consistent entry of the wrong width
    _rewrite(cache.file(key_a), wide, shape=[4, DIM + 1], sha256=values_sha256(wide))
    (w,) = attempt(key_a, digest_a)
    assert f"has width {DIM + 1}, but the bundle's text embeddings have {DIM}" in w


def test_cache_write_is_atomic(tmp_path: Path, monkeypatch) -> None:
    classes = parse_vocabulary(VOCAB)
    cache = VocabularyCache(tmp_path)
    good = np.ones((4, DIM), np.float32)
    cache.put("k", good, classes)
    before = cache.file("k").read_bytes()

    def boom(*a: Any, **k: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", boom)
    cache.put("k", good * 2, classes)          # a failed write keeps the old entry, leaves no temp file
    assert cache.file("k").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["k.npz"]
    monkeypatch.undo()
    np.testing.assert_array_equal(VocabularyCache(tmp_path).get("k", 4), good)


def test_encoder_returning_nan_is_an_error_not_a_cache_entry(tmp_path: Path) -> None:
    classes = parse_vocabulary(VOCAB)
    with pytest.raises(BundleError, match="text graph returned embeddings that contains NaN"):
        VocabularyCache(tmp_path).get_or_encode("k", classes, lambda: np.full((4, DIM), np.nan, np.float32))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ vocabulary input errors
@pytest.mark.parametrize("vocab, message", [
    (None, "the vocabulary is None: give a list of class names"),
    ([], "the vocabulary is empty: give at least one class name"),
    (" , ", "the vocabulary is empty"),
    (["water", ""], "vocabulary entry 1 ('') is blank: give it a class name or remove it"),
    ([{"name": "water"}, {"name": " ", "synonyms": ["x"]}], "vocabulary entry 1 has no 'name'"),
    (42, "the vocabulary must be a list of class names or a string, got int 42"),
    ([f"c{i}" for i in range(MAX_CLASSES + 1)], ("has 256 classes, more than the limit of 255 (labels are stored "
                                                 "as uint8 and 255 means nodata)")),
])
def test_bad_vocabulary_names_the_value_and_the_fix(vocab, message) -> None:
    with pytest.raises(VocabularyError) as ei:
        parse_vocabulary(vocab)
    assert message in str(ei.value)


def test_one_class_is_a_vocabulary() -> None:
    """One class (with synonyms) is accepted: its pixels are the ones whose cosine to it is > 0
    (the one-class threshold, tests/test_threshold.py), the others are unclassified."""
    (c,) = parse_vocabulary("water|lake|river")
    assert c.name == "water" and c.synonyms == ("lake", "river")


def test_255_classes_are_allowed() -> None:
    assert len(parse_vocabulary([f"c{i}" for i in range(MAX_CLASSES)])) == 255


@pytest.mark.parametrize("templates, message", [
    (["a {} next to {}"], "prompt template 'a {} next to {}' has 2 placeholders; each template needs exactly one {}"),
    (["a satellite image"], "prompt template 'a satellite image' has 0 placeholders"),
    (["a {name}"], "prompt template 'a {name}' has the placeholder {name}"),
    (["a {"], "prompt template 'a {' is not a valid template"),
    ("a {}", "prompt templates must be a list of strings"),
])
def test_bad_template_names_the_template_and_the_fix(templates, message) -> None:
    classes = parse_vocabulary("water,land")
    for fn in (prompts_for, text_signature):
        with pytest.raises(VocabularyError) as ei:
            fn(classes, templates)
        assert message in str(ei.value) and "\"a satellite image of {}.\"" in str(ei.value)
    assert check_templates(["{} from above", "a {{literal}} {0}"]) == ["{} from above", "a {{literal}} {0}"]


def test_segmenter_refuses_bad_vocabularies_and_keeps_the_previous_one(bundle: Path, tmp_path: Path) -> None:
    seg = _segmenter(bundle, tmp_path / "c")
    seg.set_vocabulary("water,land")
    emb = seg.text_emb.copy()
    for call, message in ((lambda: seg.set_vocabulary(None), "is None"),
                          (lambda: seg.set_vocabulary([f"c{i}" for i in range(256)]), "limit of 255"),
                          (lambda: seg.set_vocabulary("water,land", templates=["{} and {}"]), "2 placeholders")):
        with pytest.raises(VocabularyError, match=message):
            call()
    assert [c.name for c in seg.classes] == ["water", "land"]
    np.testing.assert_array_equal(seg.text_emb, emb)


# ------------------------------------------------------------------------------ the exported tiny bundle
@pytest.mark.slow
def test_real_bundle_cache_faults_and_one_class_cli(tiny_bundle: Path, tmp_path: Path, caplog, capsys) -> None:
    """On the exported tsmnet-tiny: a row-swapped and a NaN cache entry are discarded and the labels
    equal a fresh encode's; `rsvl-infer --vocab water` runs: water or unclassified."""
    vocab = ["water|river|lake", "building|road", "vegetation|trees"]
    cache = tmp_path / "cache"
    seg = Segmenter.load(tiny_bundle, backend="onnxruntime", cache_dir=cache)
    seg.set_vocabulary(vocab)
    fresh = seg.encode(seg.classes)
    sar = np.random.default_rng(0).normal(-12, 5, (1, 64, 64)).astype(np.float32)
    labels, _ = seg.predict(None, sar)
    (entry,) = cache.glob("*.npz")
    for emb in (fresh[[1, 0, 2]], np.where(np.eye(3, fresh.shape[1], dtype=bool), np.nan, fresh)):
        _rewrite(entry, emb.astype(np.float32))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="rsvl.runtime"):
            again = Segmenter.load(seg.bundle, backend="onnxruntime", cache_dir=cache)
            again.set_vocabulary(vocab)
        (w,) = _warnings(caplog)
        assert str(entry) in w
        np.testing.assert_allclose(again.text_emb, fresh, atol=1e-6)
        np.testing.assert_array_equal(again.predict(None, sar)[0], labels)

    from rsvl_runtime.cli import main

    from tests._runtime_rasters import write_tif

    sar_tif = write_tif(tmp_path / "sar.tif", sar)
    rc = main(["--bundle", str(tiny_bundle), "--sar", str(sar_tif), "--out", str(tmp_path / "o"),
               "--vocab", "water", "--quiet", "--backend", "onnxruntime"])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "o" / "classes.json").read_text())
    assert [c["name"] for c in doc["classes"]] == ["water", "unclassified"]
    assert sum(c["pixels"] for c in doc["classes"]) == 64 * 64
