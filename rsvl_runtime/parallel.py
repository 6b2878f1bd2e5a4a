"""Data-parallel helpers for the CPU stages of a scene run (reading, normalising, blending,
scores/labels, writing): a small thread pool and the way work is split over it.

Why a pool and not more overlap: when the engine runs on the CPU it already keeps every core
busy (ONNX Runtime's intra-op threads). A reader or writer thread running *beside* it does not
use idle cores — there are none — it preempts one engine thread, and the engine's other threads
then wait for it at their next barrier: measured here (2-core AVX-512 EPYC, tsmnet-tiny), one
CPU-second of other work cost the engine 1.0 s of wall time. Run *between* engine calls and split
over every core, the same work costs ``1 / workers`` of that. So the scene runner's ``serial``
pipeline (the default with a CPU engine, :mod:`rsvl_runtime.scene`) runs these stages between
engine calls through a :class:`WorkPool`; with a GPU engine the ``overlap`` pipeline (reader and
writer threads beside the engine) uses the same pool inside its threads.

numpy releases the GIL in its array loops and rasterio in its reads and writes, so threads are
enough; work is split into contiguous ranges (:func:`split_range`) big enough that a task costs
far more than its hand-over.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["WorkPool", "available_cpus", "split_range"]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def split_range(n: int, parts: int, align: int = 1) -> list[slice]:
    """``range(n)`` as at most ``parts`` contiguous, nearly equal, non-empty slices whose starts
    are multiples of ``align`` (the last slice takes the remainder)."""
    if n <= 0:
        return []
    align = max(1, int(align))
    blocks = -(-n // align)
    parts = max(1, min(int(parts), blocks))
    bounds = [min(n, (blocks * i // parts) * align) for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


class WorkPool:
    """``workers`` threads for data-parallel numpy/GDAL work; ``workers=1`` runs inline.

    :meth:`map` runs ``fn`` over the items and returns the results in order; the first exception
    of a task is raised in the caller, after every task of the call has finished or been
    withdrawn. The caller runs the first item itself, and then every item no worker has started
    yet, so a task may call :meth:`map` again (a writer splitting its own work while the other
    writer runs) without ever waiting for a queued task: nested calls cannot deadlock, and with
    every worker busy they simply run in the calling thread. Use as a context manager or call
    :meth:`close`.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, int(workers)) if workers else available_cpus()
        self._pool = (ThreadPoolExecutor(self.workers, thread_name_prefix="rsvl-work")
                      if self.workers > 1 else None)

    def map(self, fn: Callable[[T], Any], items: Iterable[T]) -> list[Any]:
        """``[fn(item) for item in items]``, the items spread over the workers."""
        items = list(items)
        if self._pool is None or len(items) < 2:
            return [fn(item) for item in items]
        futures = [self._pool.submit(fn, item) for item in items[1:]]
        results: list[Any] = []
        error: BaseException | None = None
        for i, item in enumerate(items):
            if error is not None:  # withdraw what has not started; wait for what has
                if i and not futures[i - 1].cancel():
                    futures[i - 1].exception()
                continue
            try:
                if i == 0 or futures[i - 1].cancel():  # not started by a worker: run it here
                    results.append(fn(item))
                else:
                    results.append(futures[i - 1].result())
            except BaseException as e:  # noqa: BLE001 - re-raised below, once the call is settled
                error = e
        if error is not None:
            raise error
        return results

    def imap(self, fn: Callable[[T], Any], items: Iterable[T], ahead: int | None = None) -> Iterator[Any]:
        """``fn`` over ``items``, the results yielded in order while later items run: at most
        ``ahead`` (default twice the workers) are handed over at once, so a long stream (the
        tiles of a raster) is never all in memory. ``items`` is consumed in the caller's thread.
        On an error or an early stop the items not started are withdrawn and the started ones
        waited for."""
        if self._pool is None:
            yield from map(fn, items)
            return
        ahead = max(1, ahead or 2 * self.workers)
        pending: deque[Any] = deque()
        try:
            for item in items:
                pending.append(self._pool.submit(fn, item))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                if not f.cancel():
                    f.exception()

    def ranges(self, n: int, align: int = 1) -> Sequence[slice]:
        """``range(n)`` split into one contiguous slice per worker (:func:`split_range`)."""
        return split_range(n, self.workers, align)

    def close(self) -> None:
        """Stop the threads (after the tasks already handed over)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> WorkPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
