"""Small file helpers every part of rsvl uses: the cache folder, sha256 of a file (at once or
piece by piece), canonical JSON, and atomic writes (a temporary sibling renamed over the target,
so readers never see a half-written file). The one home of these: import them from here
(``rsvl_runtime.bundle`` re-exports them)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def cache_root() -> Path:
    """The rsvl cache folder: ``$RSVL_CACHE_DIR``, else ``$XDG_CACHE_HOME/rsvl``, else
    ``~/.cache/rsvl``. Vocabulary embeddings live in ``vocab/``, extracted zip bundles in ``bundles/``."""
    base = os.environ.get("RSVL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rsvl")
    return Path(base)


class FileHasher:
    """sha256 of one file, fed in pieces (:meth:`update`) or all at once (:meth:`hexdigest`)."""

    CHUNK = 1 << 20

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size
        self._h = hashlib.sha256()
        self._f: Any = None
        self.done = False

    def update(self, nbytes: int) -> None:
        """Hash the next ``nbytes`` (at least one chunk) of the file."""
        if self.done:
            return
        if self._f is None:
            self._f = open(self.path, "rb")  # noqa: SIM115 - closed when the file ends
        left = max(int(nbytes), 1)
        while left > 0:
            block = self._f.read(min(self.CHUNK, left))
            if not block:
                self._f.close()
                self.done = True
                return
            self._h.update(block)
            left -= len(block)

    def hexdigest(self) -> str:
        """The file's sha256 (hashes what is left)."""
        while not self.done:
            self.update(64 * self.CHUNK)
        return self._h.hexdigest()


def free_in_background(paths: Iterable[str | os.PathLike[str]]) -> Callable[[], None]:
    """Keep the files ``paths`` (those that exist) open, so that unlinking or replacing them only
    drops their names; call the returned function once they are gone from the folder: it closes
    them in a daemon thread, where the kernel then frees their blocks and cached pages (0.18 s
    for a 700 MB spool here) instead of in the caller."""
    fds = []
    for p in paths:
        try:
            fds.append(os.open(p, os.O_RDONLY))
        except OSError:
            pass

    def release() -> None:
        def close_all() -> None:
            for fd in fds:
                os.close(fd)

        threading.Thread(target=close_all, name="rsvl-free", daemon=True).start()

    return release


#: The cache entry of a file's sha256 (:func:`cached_sha256`): ``<cache>/input-sha256/<key>``.
HASH_CACHE = "input-sha256"


def _stat_key(path: str | os.PathLike[str]) -> str:
    """A name for the file's current state: device, inode, size and the modification and change
    times to the nanosecond (any write moves both; the change time cannot be set back)."""
    st = os.stat(path)
    raw = f"{os.path.realpath(path)}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()


def cached_sha256(path: str | os.PathLike[str]) -> str | None:
    """The sha256 recorded for the file in its current state (:func:`store_sha256`), else None.
    Like git's index: a file whose device, inode, size, mtime and ctime are unchanged is taken to
    hold the same bytes, so a scene run again (another vocabulary, a resumed run) is not read
    again only to be hashed."""
    try:
        text = (cache_root() / HASH_CACHE / _stat_key(path)).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None


def store_sha256(path: str | os.PathLike[str], digest: str) -> None:
    """Record ``digest`` as the file's sha256 in its current state (a cache: failures are ignored)."""
    try:
        folder = cache_root() / HASH_CACHE
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / _stat_key(path), digest + "\n")
    except OSError:
        pass


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    return FileHasher(path).hexdigest()


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


__all__ = ["FileHasher", "atomic_open", "cached_sha256", "free_in_background", "store_sha256", "atomic_write_text", "cache_root", "canonical_json", "sha256_file"]
