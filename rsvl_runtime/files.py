"""Small file helpers every part of rsvl uses: the cache folder, sha256 of a file, canonical JSON,
and atomic writes (a temporary sibling renamed over the target, so readers never see a
half-written file). The one home of these: import them from here (``rsvl_runtime.bundle``
re-exports them)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def cache_root() -> Path:
    """The rsvl cache folder: ``$RSVL_CACHE_DIR``, else ``$XDG_CACHE_HOME/rsvl``, else
    ``~/.cache/rsvl``. Vocabulary embeddings live in ``vocab/``, extracted zip bundles in ``bundles/``."""
    base = os.environ.get("RSVL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rsvl")
    return Path(base)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` (``mode`` "w" text/UTF-8 or "wb"); on a clean exit it
    is made world-readable and renamed over ``path``, on an error it is removed. Readers never see
    a half-written file."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; bundle and cache files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename."""
    with atomic_open(path, "w") as f:
        f.write(text)


def canonical_json(obj: Any) -> str:
    """The canonical JSON text hashes are computed over: sorted keys, no whitespace."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


__all__ = ["atomic_open", "atomic_write_text", "cache_root", "canonical_json", "sha256_file"]
