"""Transactional output folders: a lock, a temporary sibling folder, one swap at the end.

A run into ``<parent>/<name>`` works like this (:class:`OutputTransaction`):

1. ``<parent>/.<name>.rsvl.lock`` is created with ``O_CREAT | O_EXCL`` and holds the pid: a
   second run into the same folder is refused (:class:`OutputError` naming the folder and the
   pid); a lock whose pid is dead (stale) is taken over with a warning.
2. Leftovers of killed runs into the same folder (``.<name>.rsvl-tmp-<pid>`` /
   ``.<name>.rsvl-old-<pid>`` whose pid is dead) are removed; one that holds a resumable
   checkpoint with the same signature is adopted instead (:mod:`rsvl_runtime.resume`).
3. The free space of the destination is compared with an estimate of the result; a result
   that clearly does not fit is refused before anything is computed.
4. Everything is written into ``.<name>.rsvl-tmp-<pid>`` (``done.json`` last), which then
   replaces ``<name>`` in one step (``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere two
   renames, and a run killed between them gets the previous result restored at the next run).
   Files in the old folder that are not outputs of a run (e.g. ``sar_aligned.tif``) are moved
   into the new one; the old result is then deleted.

Until step 4 the previous result (its ``done.json`` and files) is untouched, whatever happens
to the run (exception, Ctrl-C, SIGKILL, full disk).
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".rsvl.lock"
TMP_MARK = ".rsvl-tmp-"
OLD_MARK = ".rsvl-old-"
#: Names a run writes into its folder; anything else in an old result is carried over.
RUN_NAMES = frozenset({"labels.tif", "scores.tif", "mask.tif", "classes.json", "preview.png",
                       "report.html", "done.json", "progress.json"})
#: Below this many free bytes the destination counts as full.
DISK_RESERVE_BYTES = 1 << 20
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


class OutputError(ValueError):
    """The output folder cannot be written (locked, read-only, full). The message names the
    folder and the fix; ``rsvl-infer`` prints it as one line."""


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(path: Path, mark: str) -> int | None:
    try:
        return int(path.name.rsplit(mark, 1)[1])
    except (IndexError, ValueError):
        return None


def disk_full(folder: Path) -> bool:
    """True when ``folder``'s filesystem has less than :data:`DISK_RESERVE_BYTES` free."""
    try:
        return shutil.disk_usage(folder).free < DISK_RESERVE_BYTES
    except OSError:
        return False


def no_space_error(folder: Path, cause: BaseException | None = None) -> OutputError:
    """The one-line error of a full destination."""
    why = f" ({cause})" if cause is not None and str(cause) else ""
    return OutputError(f"no space left on device while writing {folder}{why}; nothing was "
                       "committed and the partial files were removed: free some space or choose "
                       "another --out")


def is_no_space(e: BaseException) -> bool:
    """An ENOSPC/EDQUOT ``OSError`` or a GDAL error that says the disk is full."""
    if isinstance(e, OSError) and e.errno in _NO_SPACE:
        return True
    return "no space left on device" in str(e).lower()


class OutputLock:
    """``<parent>/.<name>.rsvl.lock`` holding the pid of the run writing ``<name>``."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.path = out_dir.parent / f".{out_dir.name}{LOCK_SUFFIX}"
        self.held = False

    def acquire(self) -> None:
        """Take the lock; refuse when a live process holds it; take over a stale one."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_stale()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
            self.held = True
            return
        raise OutputError(f"could not lock {self.out_dir} ({self.path} keeps reappearing)")

    def _holder(self) -> tuple[int | None, str | None]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            host = doc.get("host")
            return int(doc["pid"]), None if host is None else str(host)
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError, KeyError, TypeError):
            return -1, None  # unreadable (being written, or garbage): decided below

    def _take_over_stale(self) -> None:
        pid, host = self._holder()
        if pid is None:
            return  # released meanwhile: retry
        if pid == -1:
            try:  # a lock being written right now is young; garbage is old
                young = os.path.getmtime(self.path) > time.time() - 5
            except OSError:
                return
            if young:
                raise OutputError(f"{self.out_dir} is being written by another rsvl run "
                                  f"(lock {self.path}); wait for it or choose another --out")
        elif host not in (None, socket.gethostname()) or pid_alive(pid):
            where = "" if host in (None, socket.gethostname()) else f" on {host}"
            raise OutputError(f"{self.out_dir} is being written by another rsvl run (pid {pid}{where}, "
                              f"lock {self.path}); wait for it to finish or choose another --out")
        log.warning("taking over the stale lock %s of pid %s (no longer running)", self.path, pid)
        grave = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, grave)  # only one taker wins this rename
            grave.unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        """Remove the lock if this process still holds it."""
        if self.held and self._holder()[0] == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


class OutputTransaction:
    """Lock, temporary sibling folder and final swap of one output folder (see the module doc)."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out_dir = Path(out_dir).absolute()
        self.lock = OutputLock(self.out_dir)
        self.tmp = self._sibling(TMP_MARK, os.getpid())

    def _sibling(self, mark: str, pid: int) -> Path:
        return self.out_dir.parent / f".{self.out_dir.name}{mark}{pid}"

    def begin(self, needed_bytes: int = 0) -> list[Path]:
        """Create the parent, lock, clean leftovers, check space, create the temporary folder.

        Returns the temporary folders of dead runs that hold a checkpoint (``progress.json``);
        the caller adopts one of them (:meth:`adopt`) or lets :meth:`drop_leftovers` remove them.
        """
        try:
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        except OSError as e:
            raise self._os_error(e) from e
        try:
            resumable = self._clean_leftovers()
            self._check_space(needed_bytes)
            self.tmp.mkdir()
        except OSError as e:
            self.lock.release()
            raise self._os_error(e) from e
        except BaseException:
            self.lock.release()
            raise
        return resumable

    def _os_error(self, e: OSError) -> OSError | OutputError:
        if e.errno in _READ_ONLY:
            return OutputError(f"cannot write the output folder {self.out_dir}: "
                               f"{os.strerror(e.errno or 0).lower()} ({e.filename or self.out_dir.parent}); "
                               "choose a writable --out")
        if is_no_space(e):
            return no_space_error(self.out_dir, e)
        return e

    def _leftovers(self) -> list[tuple[Path, str]]:
        found = []
        prefix = f".{self.out_dir.name}"
        for mark in (TMP_MARK, OLD_MARK):
            for p in self.out_dir.parent.glob(f"{prefix}{mark}*"):
                pid = _owner_pid(p, mark)
                if pid is not None and pid != os.getpid() and not pid_alive(pid) and p.is_dir():
                    found.append((p, mark))
        return found

    def _clean_leftovers(self) -> list[Path]:
        resumable = []
        for p, mark in self._leftovers():
            if mark == OLD_MARK and not (self.out_dir / "done.json").exists():
                log.warning("restoring the previous result of %s from %s (a run was killed while "
                            "replacing it)", self.out_dir, p.name)
                if self.out_dir.exists():
                    shutil.rmtree(self.out_dir)
                os.rename(p, self.out_dir)
            elif mark == TMP_MARK and (p / "progress.json").is_file() and not (p / "done.json").exists():
                resumable.append(p)
            else:
                log.warning("removing %s, left by a killed run (pid %s)", p, _owner_pid(p, mark))
                self._retire(p)
        return resumable

    def adopt(self, leftover: Path) -> None:
        """Continue in the checkpointed folder of a dead run (it becomes this run's folder)."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.rename(leftover, self.tmp)

    def drop_leftovers(self, leftovers: list[Path]) -> None:
        """Remove checkpointed folders of dead runs that are not resumed."""
        for p in leftovers:
            if p.exists():
                log.warning("removing %s, an interrupted run of other inputs or options", p)
                shutil.rmtree(p, ignore_errors=True)

    def _check_space(self, needed: int) -> None:
        if needed <= 0:
            return
        free = shutil.disk_usage(self.out_dir.parent).free
        if free < needed:
            raise OutputError(f"not enough free space for {self.out_dir}: the outputs need about "
                              f"{_mb(needed)}, {_mb(free)} free on {self.out_dir.parent}; free some "
                              "space, choose another --out or pass --no-scores")

    def _retire(self, folder: Path) -> None:
        """Move files that are not run outputs into the result folder, then delete ``folder``."""
        if self.out_dir.is_dir():
            for p in folder.iterdir():
                if p.name not in RUN_NAMES and not p.name.startswith(".") and \
                        not (self.out_dir / p.name).exists():
                    os.rename(p, self.out_dir / p.name)
        shutil.rmtree(folder, ignore_errors=True)

    def commit(self) -> None:
        """Replace the output folder by the (complete) temporary folder."""
        if not self.out_dir.exists():
            os.rename(self.tmp, self.out_dir)
            return
        old = self._sibling(OLD_MARK, os.getpid())
        if _exchange(self.tmp, self.out_dir):
            os.rename(self.tmp, old)
        else:
            os.rename(self.out_dir, old)
            os.rename(self.tmp, self.out_dir)
        self._retire(old)

    def abort(self, keep: bool = False) -> None:
        """Remove the temporary folder (``keep``: leave it when it holds a checkpoint)."""
        if not (keep and (self.tmp / "progress.json").is_file()):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def close(self) -> None:
        """Release the lock."""
        self.lock.release()


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"
