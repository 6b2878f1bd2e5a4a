"""The model bundle: a directory (or a .zip of one) that the export hands the runtime.

``manifest.json`` describes everything the runtime needs; every other file is listed in
``manifest["files"]`` with its sha256 and size, and a bundle whose files do not match is
refused with the file named. The export writes bundles through :func:`write_manifest`, the
runtime and ``rsvl-export inspect`` read them through :meth:`Bundle.load`: one implementation.

Manifest keys (format version 1)::

    format_version   int
    model            registry name, e.g. "tsmnet-tiny"
    task             "semantic" | "referring"
    head             "open" (K free) | "paper" (K fixed: fixed_vocabulary_size)
    modalities       {"optical": spec, "sar": spec}    (see rsvl_runtime.normalization)
    modes            input modes the bundle supports: "optical+sar", "optical", "sar"
    tile             {"size": 256, "overlap": 0.25}
    embedding_dim    D of the text embeddings
    text             {"tokenizer": "tokenizer.json", "max_length": L, "pad_id": 0,
                      "templates": ["a satellite image of {}."]}
    default_vocabulary  [{"name": "water", "synonyms": ["lake"], "color": [r, g, b]}, ...]
    fixed_vocabulary_size  null | K
    graphs           {"text": {"fp32": "text.onnx", "inputs": {...}, "outputs": {...}},
                      "image": {"fp32": "image.onnx", "fp16": "image.fp16.onnx",
                                "inputs": {...}, "outputs": {...}}}
                     inputs/outputs: name -> {"dtype": "float32", "shape": ["B", 3, 256, 256]}
    precision        "fp32" | "fp16"
    opset            int
    engines          [{"graph": "image", "file": "image.fp16.engine", "precision": "fp16",
                       "tensorrt_version": "10.13.0", "compute_capability": "9.0",
                       "gpu": "NVIDIA H100", "profiles": {input: {"min":[], "opt":[], "max":[]}}}]
    vocab_cache      "vocab_cache.npz" (default vocabulary embeddings) | null
    parity           "parity.json"
    versions         {"rsvl": ..., "torch": ..., "onnx": ..., ...}
    files            {relative path: {"sha256": hex, "bytes": int}}
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: File name suffixes a bundle may never contain (no pickle anywhere in a bundle).
FORBIDDEN_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt")


class BundleError(ValueError):
    """A bundle is missing, corrupt or incompatible. The message names the file and the fix."""


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a manifest is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(bundle_dir: str | os.PathLike[str], manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in ``bundle_dir`` (except the manifest), fill ``manifest["files"]``
    and write ``manifest.json`` atomically. Returns the completed manifest."""
    root = Path(bundle_dir)
    files: dict[str, dict[str, Any]] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name == MANIFEST or p.name.startswith("."):
            continue
        rel = p.relative_to(root).as_posix()
        if p.suffix.lower() in FORBIDDEN_SUFFIXES:
            raise BundleError(f"{rel}: pickle-style files are not allowed in a bundle; "
                              "store tensors as .npz/.safetensors/.onnx")
        files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    out = dict(manifest)
    out.setdefault("format_version", FORMAT_VERSION)
    out["files"] = files
    atomic_write_text(root / MANIFEST, json.dumps(out, indent=2, sort_keys=False) + "\n")
    return out


def _extract_zip(path: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix=f"rsvl-bundle-{path.stem}-"))
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        prefix = ""
        if MANIFEST not in names:
            tops = {n.split("/", 1)[0] for n in names}
            if len(tops) == 1 and f"{next(iter(tops))}/{MANIFEST}" in names:
                prefix = next(iter(tops)) + "/"
        z.extractall(target)
    return target / prefix if prefix else target


@dataclass
class Bundle:
    """A verified bundle on disk."""

    root: Path
    manifest: dict[str, Any]
    digest: str = field(default="")

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | os.PathLike[str], verify: bool = True) -> "Bundle":
        """Open a bundle directory or .zip; check format version and every file's sha256."""
        p = Path(path)
        if not p.exists():
            raise BundleError(f"bundle not found: {p}. Create one with `rsvl-export --model NAME --out {p}`")
        if p.is_file() and zipfile.is_zipfile(p):
            p = _extract_zip(p)
        mpath = p / MANIFEST
        if not mpath.is_file():
            raise BundleError(f"{mpath} is missing: {p} is not an rsvl bundle "
                              "(re-export it with `rsvl-export`)")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{mpath} is not valid JSON ({e}); the bundle is corrupt, re-export it") from e
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(f"{mpath}: bundle format version {version!r} is not supported by this "
                              f"runtime (expects {FORMAT_VERSION}); re-export with this rsvl version")
        for key in ("model", "task", "graphs", "files", "modalities", "tile", "text"):
            if key not in manifest:
                raise BundleError(f"{mpath}: manifest lacks the key {key!r}; the bundle is corrupt, re-export it")
        bundle = cls(root=p, manifest=manifest, digest=sha256_file(mpath))
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Raise :class:`BundleError` naming the first file that is missing or whose hash differs."""
        for rel, meta in self.manifest["files"].items():
            f = self.root / rel
            if not f.is_file():
                raise BundleError(f"{f}: listed in the manifest but missing; the bundle is incomplete, "
                                  "copy it again or re-export it")
            actual = sha256_file(f)
            if actual != meta["sha256"]:
                raise BundleError(f"{f}: sha256 {actual[:12]}… does not match the manifest "
                                  f"({meta['sha256'][:12]}…); the file was modified or corrupted — "
                                  "restore the original bundle or re-export it")

    # ------------------------------------------------------------------ accessors
    def path(self, rel: str) -> Path:
        """Absolute path of a file listed in the manifest."""
        if rel not in self.manifest["files"]:
            raise BundleError(f"{self.root / rel} is not listed in {self.root / MANIFEST}")
        return self.root / rel

    @property
    def task(self) -> str:
        return str(self.manifest["task"])

    @property
    def model(self) -> str:
        return str(self.manifest["model"])

    @property
    def tile_size(self) -> int:
        return int(self.manifest["tile"]["size"])

    @property
    def overlap(self) -> float:
        return float(self.manifest["tile"].get("overlap", 0.25))

    @property
    def modes(self) -> list[str]:
        return list(self.manifest.get("modes", ["optical+sar"]))

    def graph_file(self, graph: str, precision: str = "fp32") -> Path:
        """Path of the ONNX file of ``graph`` ("text" | "image") at ``precision`` ("fp32", "fp16",
        or "ort" for the ONNX-Runtime CPU variant)."""
        g = self.manifest["graphs"].get(graph)
        if g is None or precision not in g:
            have = sorted(k for k in (g or {}) if k in ("fp32", "fp16", "ort"))
            raise BundleError(f"{self.root}: no {precision} {graph} graph in this bundle (has: {have}); "
                              f"re-export with `rsvl-export --precision {precision}`")
        return self.path(g[precision])

    def read_parity(self) -> dict[str, Any] | None:
        rel = self.manifest.get("parity")
        if not rel or rel not in self.manifest["files"]:
            return None
        return json.loads(self.path(rel).read_text(encoding="utf-8"))
