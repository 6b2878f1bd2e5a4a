"""The model bundle: a directory (or a .zip of one) that the export hands the runtime.

``manifest.json`` describes everything the runtime needs; every other file is listed in its
``files`` with its sha256 and size, and a bundle whose files do not match is refused with the file
named. The export writes bundles through :func:`write_manifest`, the runtime and ``rsvl-export
inspect`` read them through :meth:`Bundle.load`: one implementation.

The manifest's keys, their types and their defaults are :class:`rsvl_runtime.manifest.Manifest`
(``rsvl_runtime/manifest.py``, format version :data:`FORMAT_VERSION`; older versions are upgraded
when read). A loaded bundle has both forms: :attr:`Bundle.meta`, the typed :class:`Manifest`
(read this), and :attr:`Bundle.manifest`, the serialised form exactly as ``manifest.json`` holds it
(the dictionary the seal is computed over).

Checks made by :meth:`Bundle.load`, in this order (the first four before any listed file is read):

* the manifest parses as a :class:`Manifest` of a supported format version: the error names the
  first missing required key or ill-typed value;

* every path the manifest names (``files`` keys, graph and engine files, tokenizer, vocab_cache,
  parity, weights) is relative, has no ``..`` and resolves inside the bundle (a symlink that
  leaves it is refused); the error names the manifest entry, never the outside file's content;
* ``manifest_sha256`` matches the manifest's own content, so one edited number is refused.
  Bundles written before this key existed are refused too (re-export them: every bundle is made
  by ``rsvl-export``);
* with ``expect_digest``, the bundle's :attr:`Bundle.digest` starts with the pinned digest;
* then (``verify=True``) every listed file's sha256, and the shape of the shipped vocab cache.

The **digest** is ``manifest_sha256`` itself: a hash of the canonical manifest, which lists every
file's sha256, so it pins the whole bundle. ``rsvl-export inspect`` prints it.

A ``.zip`` bundle is extracted once into ``<cache>/bundles/<sha256 of the zip>/`` (the cache root
of :func:`cache_root`), atomically (temporary folder + rename), after every member was checked
(no symlinks, absolute paths, ``..`` or duplicate names). Later loads reuse the folder; only the
:data:`ZIP_CACHE_KEEP` most recently used extractions are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

# the file helpers live in rsvl_runtime.files; re-exported here for existing importers
from .files import atomic_open as atomic_open
from .files import atomic_write_text as atomic_write_text
from .files import cache_root as cache_root
from .files import canonical_json as canonical_json
from .files import sha256_file as sha256_file
from .manifest import FORMAT_VERSION, GRAPH_FILE_KEYS, BundleError, Manifest

log = logging.getLogger("rsvl.runtime")

MANIFEST = "manifest.json"
#: The manifest key holding the hash of the manifest's own canonical content.
MANIFEST_HASH_KEY = "manifest_sha256"
#: File name suffixes a bundle may never contain (no pickle anywhere in a bundle).
FORBIDDEN_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt")
#: Shortest digest prefix ``expect_digest`` accepts.
MIN_DIGEST_PREFIX = 12
#: Extracted zip bundles kept in ``<cache>/bundles`` (the most recently used ones).
ZIP_CACHE_KEEP = 3
#: A half-extracted temporary folder older than this (seconds) is from a killed run: removed.
STALE_EXTRACTION_S = 3600.0

_REEXPORT = "re-export the bundle with `rsvl-export` (or restore the original copy)"


def manifest_hash(manifest: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``manifest`` without its :data:`MANIFEST_HASH_KEY`.

    The manifest is round-tripped through JSON first, so tuples and lists hash alike and the value
    is the same before writing and after reading ``manifest.json``."""
    body = {k: v for k, v in json.loads(json.dumps(manifest)).items() if k != MANIFEST_HASH_KEY}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def _path_problem(root: Path, rel: Any) -> str | None:
    """Why ``rel`` is not a safe path inside ``root`` (None when it is). Reads no file content."""
    if not isinstance(rel, str) or not rel.strip():
        return f"is {rel!r}, not a relative file path"
    if "\x00" in rel:
        return "contains a NUL character"
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive \
            or rel.startswith(("/", "\\")):
        return "is an absolute path"
    if ".." in rel.replace("\\", "/").split("/"):
        return "contains '..'"
    try:
        inside = (root / rel).resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return "cannot be resolved (symlink loop)"
    if not inside:
        return "is a symlink that resolves outside the bundle"
    return None


def _manifest_paths(manifest: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every (entry, path) the manifest refers to, e.g. ``("graphs.image.fp16", "image.fp16.onnx")``."""
    for rel in manifest.get("files") or {}:
        yield f"files[{rel!r}]", rel
    for name, g in (manifest.get("graphs") or {}).items():
        for key in GRAPH_FILE_KEYS:
            if isinstance(g, dict) and g.get(key) is not None:
                yield f"graphs.{name}.{key}", g[key]
    for i, eng in enumerate(manifest.get("engines") or []):
        if isinstance(eng, dict) and eng.get("file") is not None:
            yield f"engines[{i}].file", eng["file"]
    text = manifest.get("text")
    if isinstance(text, dict) and text.get("tokenizer") is not None:
        yield "text.tokenizer", text["tokenizer"]
    for key in ("vocab_cache", "parity"):
        if manifest.get(key) is not None:
            yield key, manifest[key]
    weights = manifest.get("weights")
    if isinstance(weights, dict) and weights.get("file") is not None:
        yield "weights.file", weights["file"]


def check_manifest_paths(root: Path, manifest: dict[str, Any]) -> None:
    """Raise :class:`BundleError` for the first manifest path that is absolute, contains ``..`` or
    resolves outside ``root`` (through a symlink). Nothing is read or hashed."""
    for entry, rel in _manifest_paths(manifest):
        problem = _path_problem(root, rel)
        if problem:
            raise BundleError(f"{root / MANIFEST}: entry {entry} = {rel!r} {problem}; a bundle may only "
                              f"reference files inside itself — {_REEXPORT}")


def write_manifest(bundle_dir: str | os.PathLike[str], manifest: Manifest | dict[str, Any]) -> dict[str, Any]:
    """Hash every file in ``bundle_dir`` (except the manifest), fill the manifest's ``files``, seal
    it with :data:`MANIFEST_HASH_KEY` and write ``manifest.json`` atomically. Returns the completed
    manifest (serialised form). Any ``files``/``manifest_sha256`` in ``manifest`` are recomputed.

    ``manifest``: a :class:`Manifest` (what the export passes; its :meth:`Manifest.to_dict` is
    written) or a dictionary already in the serialised form (written as it is, e.g. a loaded
    bundle's :attr:`Bundle.manifest` with one entry changed)."""
    if isinstance(manifest, Manifest):
        manifest = manifest.to_dict()
    root = Path(bundle_dir)
    files: dict[str, dict[str, Any]] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name == MANIFEST or p.name.startswith("."):
            continue
        rel = p.relative_to(root).as_posix()
        if p.suffix.lower() in FORBIDDEN_SUFFIXES:
            raise BundleError(f"{rel}: pickle-style files are not allowed in a bundle; "
                              "store tensors as .npz/.safetensors/.onnx")
        problem = _path_problem(root, rel)
        if problem:
            raise BundleError(f"{root / rel} {problem}; copy the file into the bundle instead of linking it")
        files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    out = {k: v for k, v in manifest.items() if k != MANIFEST_HASH_KEY}
    out.setdefault("format_version", FORMAT_VERSION)
    out["files"] = files
    check_manifest_paths(root, out)
    out[MANIFEST_HASH_KEY] = manifest_hash(out)
    atomic_write_text(root / MANIFEST, json.dumps(out, indent=2, sort_keys=False) + "\n")
    return out


# ---------------------------------------------------------------------- zip bundles
def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member may not be extracted (None when it may)."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is a symlink (zip bundles may only hold regular files)"
    if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "is not a regular file"
    if "\x00" in name:
        return "contains a NUL character"
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "is an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "contains '..' (path traversal)"
    return None


def _checked_members(path: Path, z: zipfile.ZipFile) -> tuple[list[zipfile.ZipInfo], str]:
    """Validate every member of ``z``; returns the members and the folder prefix the manifest is
    under ("" or "top/")."""
    infos = z.infolist()
    seen: set[str] = set()
    for info in infos:
        problem = _member_problem(info)
        norm = info.filename.replace("\\", "/").rstrip("/")
        if problem is None and norm in seen:
            problem = "appears twice in the archive"
        if problem:
            raise BundleError(f"{path}: member {info.filename!r} {problem}; the archive is not a bundle made "
                              f"by rsvl — {_REEXPORT} and zip the bundle folder again")
        seen.add(norm)
    names = {i.filename.replace("\\", "/") for i in infos}
    prefix = ""
    if MANIFEST not in names:
        tops = {n.split("/", 1)[0] for n in names}
        if len(tops) == 1 and f"{next(iter(tops))}/{MANIFEST}" in names:
            prefix = next(iter(tops)) + "/"
    return infos, prefix


def _clean_zip_cache(folder: Path, keep: int, current: Path) -> None:
    """Keep the ``keep`` most recently used extractions (``current`` always), drop stale temp folders."""
    now = time.time()
    entries = []
    for d in folder.iterdir():
        try:
            mtime = d.stat().st_mtime
        except OSError:
            continue
        if d.name.startswith(".tmp-"):
            if now - mtime > STALE_EXTRACTION_S:
                shutil.rmtree(d, ignore_errors=True)
        elif d.is_dir() and d != current:
            entries.append((mtime, d))
    for _, d in sorted(entries, reverse=True)[max(keep - 1, 0):]:
        shutil.rmtree(d, ignore_errors=True)


def _extract_zip(path: Path, cache: str | os.PathLike[str] | None = None, keep: int = ZIP_CACHE_KEEP,
                 refresh: bool = False) -> tuple[Path, bool]:
    """The bundle folder of a ``.zip`` bundle, ``<cache>/bundles/<sha256 of the zip>/`` (``cache``
    defaults to :func:`cache_root`), extracted on first use and reused afterwards; and whether an
    earlier extraction was reused.

    Every member is validated first (:class:`BundleError` naming it: symlink, absolute path, ``..``,
    duplicate). Extraction goes to a temporary sibling folder that is renamed into place, so a
    killed run never leaves a half bundle; only the ``keep`` most recently used extractions stay.
    ``refresh`` discards an existing extraction first (one that failed verification)."""
    folder = Path(cache or cache_root()) / "bundles"
    key = sha256_file(path)
    final = folder / key
    if refresh:
        shutil.rmtree(final, ignore_errors=True)
    try:
        return _extract_checked(path, folder, final, keep)
    except zipfile.BadZipFile as e:
        raise BundleError(f"{path} is not a readable zip archive ({e}); copy the bundle again or re-export it") from e


def _extract_checked(path: Path, folder: Path, final: Path, keep: int) -> tuple[Path, bool]:
    """The body of :func:`_extract_zip`: validate the members, extract into ``final`` once."""
    with zipfile.ZipFile(path) as z:
        infos, prefix = _checked_members(path, z)
        reused = final.is_dir()
        if not reused:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                need = sum(i.file_size for i in infos)
                free = shutil.disk_usage(folder).free
                if need > free:
                    raise BundleError(f"{path}: extracting needs {need / 2**20:.0f} MB but {folder} has "
                                      f"{free / 2**20:.0f} MB free; free space, set RSVL_CACHE_DIR to a "
                                      "larger disk, or unzip the bundle and pass the folder")
                tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".tmp-{final.name[:16]}-"))
                try:
                    for info in infos:
                        z.extract(info, tmp)
                    try:
                        os.rename(tmp, final)
                    except OSError:
                        if not final.is_dir():  # not a concurrent extraction that won the race
                            raise
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            except OSError as e:
                raise BundleError(f"{path}: cannot extract the bundle into {folder} ({e.strerror or e}); "
                                  "set RSVL_CACHE_DIR to a writable folder, or unzip the bundle and pass "
                                  "the folder") from e
            log.info("zip bundle %s extracted to %s", path, final)
    try:
        os.utime(final)  # most recently used
        _clean_zip_cache(folder, keep, final)
    except OSError:
        pass  # a read-only cache still serves the extraction
    return (final / prefix if prefix else final), reused


@dataclass
class Bundle:
    """A verified bundle on disk.

    ``meta`` is the typed manifest (:class:`rsvl_runtime.manifest.Manifest`, upgraded to the
    current format version): read the bundle through it. ``manifest`` is the serialised form, the
    dictionary exactly as ``manifest.json`` holds it (what the seal and :attr:`digest` are computed
    over; for a bundle of an older format version it keeps that version's keys)."""

    root: Path
    manifest: dict[str, Any]
    meta: Manifest

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | os.PathLike[str], expect_digest: str | None = None, *, verify: bool = True,
             cache_dir: str | os.PathLike[str] | None = None) -> Bundle:
        """Open a bundle directory or ``.zip`` and check it (see the module docstring).

        ``expect_digest``: the pinned :attr:`digest` (or a prefix of at least 12 hex characters); a
        bundle with another digest is refused. ``verify``: hash every listed file (the manifest's
        own hash and the paths are always checked). ``cache_dir``: cache root for extracted zip
        bundles (default :func:`cache_root`)."""
        p = Path(path)
        if not p.exists():
            raise BundleError(f"bundle not found: {p}. Create one with `rsvl-export --model NAME --out {p}`")
        expected = _normalise_digest(expect_digest) if expect_digest is not None else None
        if p.is_file() and not zipfile.is_zipfile(p):
            raise BundleError(f"{p} is neither a bundle folder nor a readable zip archive (truncated or corrupt?); "
                              "copy the bundle again or re-export it")
        if p.is_dir():
            return cls._open(p, expected, verify)
        root, reused = _extract_zip(p, cache_dir)
        try:
            return cls._open(root, expected, verify)
        except BundleError as e:
            if not reused:
                raise
            # An extraction from an earlier run was damaged since: extract the zip afresh, once.
            log.warning("the extracted copy %s of %s failed its check (%s); extracting the zip again", root, p, e)
            return cls._open(_extract_zip(p, cache_dir, refresh=True)[0], expected, verify)

    @classmethod
    def _open(cls, p: Path, expected: str | None, verify: bool) -> Bundle:
        """Check and open the bundle folder ``p`` (the steps of :meth:`load`)."""
        mpath = p / MANIFEST
        if not mpath.is_file():
            raise BundleError(f"{mpath} is missing: {p} is not an rsvl bundle "
                              "(re-export it with `rsvl-export`)")
        if mpath.is_symlink() or not mpath.resolve().is_relative_to(p.resolve()):
            raise BundleError(f"{mpath} is a symlink; the manifest must be a regular file — {_REEXPORT}")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{mpath} is not valid JSON ({e}); the bundle is corrupt, re-export it") from e
        if not isinstance(manifest, dict):
            raise BundleError(f"{mpath} is not a JSON object; the bundle is corrupt, re-export it")
        meta = Manifest.from_dict(manifest, source=str(mpath))   # version, required keys, types
        check_manifest_paths(p, manifest)
        recorded = manifest.get(MANIFEST_HASH_KEY)
        if not recorded:
            raise BundleError(f"{mpath} has no {MANIFEST_HASH_KEY}: it was written by an older rsvl (or by "
                              "hand) and cannot be checked; re-export the bundle with this rsvl version")
        if recorded != manifest_hash(manifest):
            raise BundleError(f"{mpath} was modified after export (its content no longer matches its "
                              f"{MANIFEST_HASH_KEY}); re-export or restore it")
        bundle = cls(root=p, manifest=manifest, meta=meta)
        if expected is not None and not bundle.digest.startswith(expected):
            raise BundleError(f"{p}: bundle digest {bundle.digest} does not match the expected digest "
                              f"{expected}; this is not the pinned bundle — deploy the bundle with that "
                              "digest, or update the pin after checking `rsvl-export inspect`")
        if verify:
            bundle.verify()
        return bundle

    @property
    def digest(self) -> str:
        """sha256 of the canonical manifest (which lists every file's sha256): pins the whole
        bundle. Equal to ``manifest["manifest_sha256"]`` of a bundle that loaded."""
        return manifest_hash(self.manifest)

    def verify(self) -> None:
        """Raise :class:`BundleError` naming the first file that is missing, whose hash differs, or
        (the shipped vocab cache) whose embeddings have the wrong shape."""
        check_manifest_paths(self.root, self.manifest)
        for rel, entry in self.meta.files.items():
            f = self.root / rel
            if not f.is_file():
                raise BundleError(f"{f}: listed in the manifest but missing; the bundle is incomplete, "
                                  "copy it again or re-export it")
            actual = sha256_file(f)
            if actual != entry.sha256:
                raise BundleError(f"{f}: sha256 {actual[:12]}… does not match the manifest "
                                  f"({entry.sha256[:12]}…); the file was modified or corrupted — "
                                  "restore the original bundle or re-export it")
        rel = self.meta.vocab_cache
        if rel:
            # imported here: it needs numpy, and bundle.py itself is stdlib-only
            from .vocabulary import check_bundle_vocab_cache

            check_bundle_vocab_cache(self.path(rel), len(self.meta.default_vocabulary), self.meta.embedding_dim)

    # ------------------------------------------------------------------ accessors
    def path(self, rel: str) -> Path:
        """Absolute path of a file listed in the manifest (and inside the bundle)."""
        problem = _path_problem(self.root, rel)
        if problem:
            raise BundleError(f"{self.root / MANIFEST}: {rel!r} {problem}; a bundle may only reference files "
                              f"inside itself — {_REEXPORT}")
        if rel not in self.meta.files:
            raise BundleError(f"{self.root / rel} is not listed in {self.root / MANIFEST}")
        return self.root / rel

    @property
    def task(self) -> str:
        return self.meta.task

    @property
    def model(self) -> str:
        return self.meta.model

    @property
    def tile_size(self) -> int:
        return self.meta.tile.size

    @property
    def overlap(self) -> float:
        return float(self.meta.tile.overlap)

    @property
    def modes(self) -> list[str]:
        return list(self.meta.modes)

    def graph_file(self, graph: str, precision: str = "fp32") -> Path:
        """Path of the ONNX file of ``graph`` ("text" | "image") at ``precision`` ("fp32", "fp16",
        or "ort" for the ONNX-Runtime CPU variant)."""
        g = self.meta.graph(graph)
        rel = g.file(precision) if g is not None else None
        if rel is None:
            have = sorted(g.precisions) if g is not None else []
            raise BundleError(f"{self.root}: no {precision} {graph} graph in this bundle (has: {have}); "
                              f"re-export with `rsvl-export --precision {precision}`")
        return self.path(rel)

    def read_parity(self) -> dict[str, Any] | None:
        rel = self.meta.parity
        if not rel or rel not in self.meta.files:
            return None
        return json.loads(self.path(rel).read_text(encoding="utf-8"))


def _normalise_digest(expect: str) -> str:
    """``expect_digest`` as lower-case hex (an optional ``sha256:`` prefix dropped), or BundleError."""
    e = str(expect).strip().lower()
    e = e.removeprefix("sha256:")
    if not (MIN_DIGEST_PREFIX <= len(e) <= 64) or any(c not in "0123456789abcdef" for c in e):
        raise BundleError(f"expected bundle digest {expect!r} is not a digest: give the bundle digest shown by "
                          f"`rsvl-export inspect BUNDLE`, or a prefix of at least {MIN_DIGEST_PREFIX} hex characters")
    return e
