"""Writers of the output folder of a scene: rasters, class table, preview, report, done marker.

Folder layout (semantic task)::

    labels.tif     uint8 class ids, nodata 255, input CRS/transform, 512x512 tiles, deflate,
                   internal overviews (mode) — cloud-optimised (``cog.write_cog``: GDAL's COG layout);
                   GDAL colour table (one colour per id, nodata transparent)
    labels.tif.aux.xml  GDAL PAM side-car: category names, raster attribute table
    labels.qml     QGIS style (paletted, one entry per id, nodata transparent)
    scores.tif     one band per class: score * 255 as uint8 (valid pixels 1..255, nodata 0),
                   scale 1/255 per band (GIS tools show 0..1), band descriptions = class names,
                   overviews (average)
    classes.json   per class: id, name, color, pixels, area_m2, fraction (of the valid area);
                   with a ``min_score`` threshold also the "unclassified" id K
    preview.png    colour-mapped labels, RGBA (nodata transparent), <= 1024 px on the long side,
                   + legend strip
    report.html    self-contained report (preview embedded as base64)
    done.json      written LAST: timings, inputs, outputs and their sizes

The referring task writes ``mask.tif`` (uint8 0/1, nodata 255, colour table, ``mask.tif.aux.xml``
and ``mask.qml``) instead of labels/scores. Styling: :mod:`rsvl_runtime.styling`.

Atomicity: a run writes into a temporary sibling folder (:mod:`rsvl_runtime.transaction`);
there every file is written under a temporary name (``.<name>.<random>.tmp``) and renamed with
``os.replace`` when all of them are ready (:class:`OutputStage`), ``done.json`` is written after
the renames, and the folder then replaces the output folder in one step. A previous complete
result stays untouched until then; :func:`is_complete` tells a finished folder from any other.
"""

from __future__ import annotations

import datetime as _dt
import functools
import glob
import json
import os
import tempfile
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from .files import atomic_open, atomic_write_text, free_in_background
from .overviews import OverviewPyramid
from .parallel import WorkPool
from .tile_spool import TileSpool
from .transaction import DISK_RESERVE_BYTES, disk_full, no_space_error

PathLike = str | os.PathLike[str]

LABELS = "labels.tif"
SCORES = "scores.tif"
MASK = "mask.tif"
CLASSES = "classes.json"
PREVIEW = "preview.png"
REPORT = "report.html"
DONE = "done.json"
VECTORS_GPKG = "vectors.gpkg"
VECTORS_GEOJSON = "vectors.geojson"
DONE_FORMAT = "rsvl-outputs/1"

LABEL_NODATA = 255
SCORE_NODATA = 0
BLOCK = 512


# ----------------------------------------------------------------------------- atomic staging
def temp_path(final: PathLike) -> Path:
    """A fresh, unused temporary name next to ``final`` (hidden, ``.tmp`` suffix)."""
    final = Path(final)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def file_mode() -> int:
    """Permissions of a normally created file (``0o666 & ~umask``); temporary files from
    ``mkstemp`` are 0600 and get these before their final rename."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


class OutputStage:
    """Temporary files of an output folder, renamed to their final names together.

    ``stage.temp("labels.tif")`` reserves a temporary file; :meth:`commit` renames all of them
    (``os.replace``), :meth:`discard` deletes them (interrupted run: nothing final-named appears).
    """

    def __init__(self, out_dir: PathLike) -> None:
        self.out_dir = Path(out_dir)
        self._files: dict[str, Path] = {}

    def temp(self, name: str) -> Path:
        """Temporary path standing for the final file ``name``."""
        if name in self._files:
            raise ValueError(f"{name} is already staged")
        self._files[name] = temp_path(self.out_dir / name)
        return self._files[name]

    def path(self, name: str) -> Path:
        """Temporary path of the staged file ``name``."""
        return self._files[name]

    def adopt(self, name: str, path: PathLike) -> Path:
        """Stage an existing temporary file (a checkpointed raster of a resumed run)."""
        if name in self._files:
            raise ValueError(f"{name} is already staged")
        self._files[name] = Path(path)
        return self._files[name]

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def commit(self) -> dict[str, Path]:
        """Rename every staged file to its final name; returns name -> final path."""
        done = {}
        mode = file_mode()
        for name, tmp in list(self._files.items()):
            final = self.out_dir / name
            os.chmod(tmp, mode)
            os.replace(tmp, final)
            done[name] = final
            del self._files[name]
        return done

    def discard(self) -> None:
        """Delete every staged temporary file (and GDAL side-cars of it)."""
        for tmp in self._files.values():  # GDAL's side-cars, a COG's tile spool and overview levels
            for p in (tmp, *tmp.parent.glob(f"{glob.escape(tmp.name)}.*")):
                p.unlink(missing_ok=True)
        self._files.clear()


# ----------------------------------------------------------------------------- GeoTIFF rows writer
def overview_factors(width: int, height: int, min_size: int = 256) -> list[int]:
    """Overview decimation factors 2, 4, ... until the long side drops to ``min_size`` (at least [2])."""
    factors = [2]
    while -(-max(width, height) // factors[-1]) > min_size:
        factors.append(factors[-1] * 2)
    return factors


#: Creation options of a COG run's spool and overview levels (where GDAL has ZSTD).
SPOOL_CREATION = {"compress": "zstd", "zstd_level": 1, "interleave": "band", "NUM_THREADS": "ALL_CPUS"}


#: The overview level spools of a raster are left uncompressed while their raw bytes are at most
#: this fraction of the memory available when they are created: they stay in the page cache, so
#: the ZSTD pass of every block write and the decode in the COG assembly are saved (measured here
#: on the full resolution, when it was spooled raw too: the 7-band scores write of 10000 x 2048 px
#: 0.16-0.19 s raw vs 0.32-0.33 s ZSTD-1). Bigger spools are ZSTD-1, so that the disk's writeback
#: does not throttle the run.
RAW_SPOOL_MEMORY_FRACTION = 0.25


def available_memory() -> int:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``; free pages where
    that is unknown; 0 when neither can be read)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return 0


def spool_creation(nbytes: int | None = None) -> dict[str, Any]:
    """Creation options of a spool of ``nbytes`` raw bytes: band interleaved, uncompressed when it
    fits :data:`RAW_SPOOL_MEMORY_FRACTION` of the available memory (or GDAL has no ZSTD), else
    :data:`SPOOL_CREATION` (ZSTD-1). ``nbytes`` None: the compressed options."""
    raw = {"interleave": "band"}
    if not _gtiff_has_zstd():
        return raw
    if nbytes is not None and nbytes <= RAW_SPOOL_MEMORY_FRACTION * available_memory():
        return raw
    return dict(SPOOL_CREATION)


@functools.cache
def _gtiff_has_zstd() -> bool:
    """Whether GDAL's GTiff driver writes ZSTD here (a 1 x 1 probe in memory; georeferenced, so
    that rasterio warns nothing: a ``NotGeoreferencedWarning`` on a user's run would read as if
    the outputs had no georeferencing)."""
    from rasterio.io import MemoryFile
    from rasterio.transform import from_origin

    try:
        with MemoryFile() as mem, mem.open(driver="GTiff", width=1, height=1, count=1, dtype="uint8",
                                           compress="zstd", crs="EPSG:4326",
                                           transform=from_origin(0.0, 1.0, 1.0, 1.0)) as ds:
            ds.write(np.zeros((1, 1, 1), np.uint8))
        return True
    except Exception:  # noqa: BLE001 - any refusal means no ZSTD here
        return False


class GeoTiffRowWriter:
    """Writes a uint8 GeoTIFF top to bottom, in windows aligned to the 512-row tile blocks.

    Rows arrive in order through :meth:`write` (``[count, n, width]``); they are buffered up to one
    block row (``count x 512 x width`` bytes) and written window by window, so each tile is
    written once. ``zlevel``: deflate level (1 is ~9x faster than 6 for ~15 % more bytes; the
    runner uses it for the K-band scores). ``colormap`` (band 1's GDAL colour table,
    :func:`rsvl_runtime.styling.label_colormap`) and ``scales`` (per band, offsets 0) are set
    when the file is created and carried into the final file.

    Two layouts, chosen by ``cog`` (default: COG):

    - **COG** (deflated once, in the loop): each finished block row is cut into its tiles, which
      the pool deflates (ISA-L's igzip for ``zlevel <= 2``, libdeflate above) into a
      :class:`~rsvl_runtime.tile_spool.TileSpool` (``<path>.tiles``), and is reduced into the
      overview levels (:class:`~rsvl_runtime.overviews.OverviewPyramid`,
      :func:`overview_factors`: average for scores, mode for labels, nodata ignored; their
      spools are GeoTIFFs, :func:`spool_creation`). The file at ``path`` holds only the
      metadata (GDAL wrote it sparse: georeferencing, nodata, colour table, descriptions,
      scales). :meth:`close` hands the three to :func:`rsvl_runtime.cog.write_cog`, which
      deflates the levels, copies the spooled tiles in COG order and replaces the file at
      ``path``: no tile is deflated twice, and no raw copy of the full resolution is written.
    - **plain GeoTIFF** (``cog=False``): deflated tiles, internal overviews built at :meth:`close`.

    :attr:`timings` holds ``overviews_s`` (a COG: the seconds reducing blocks while writing;
    plain: GDAL's ``build_overviews`` in :meth:`close`) and, for a COG, ``cog_write_s`` (the
    assembly in :meth:`close`).

    ``pool`` (settable: :attr:`pool`; default one worker, the parts in turn): a
    :class:`~rsvl_runtime.parallel.WorkPool` over which a finished block row is split: the full-resolution write runs beside the overview reduction,
    which is itself split by bands (GDAL writes and numpy loops release the GIL; each dataset is
    used by one thread at a time).

    :meth:`checkpoint` makes the rows written so far durable (a COG: the tile spool's index and
    the open block's rows in ``<path>.partial``; plain: a valid TIFF on disk) and returns
    the crc32 of the rows of the open block row; ``resume=(rows, crc)`` reopens such a file and
    continues after its first ``rows`` rows (ValueError when the file does not match). A flush
    that leaves the disk full raises :class:`~rsvl_runtime.transaction.OutputError` at once.
    """

    def __init__(self, path: PathLike, *, width: int, height: int, count: int, crs: Any,
                 transform: Any, nodata: float | None, descriptions: Sequence[str] | None = None,
                 overview_resampling: Resampling = Resampling.mode, cog: bool | None = None,
                 block: int = BLOCK, zlevel: int = 6, resume: tuple[int, int] | None = None,
                 colormap: Mapping[int, Sequence[int]] | None = None,
                 scales: Sequence[float] | None = None, pool: WorkPool | None = None) -> None:
        self.path = Path(path)
        self.pool = pool or WorkPool(1)
        self.width, self.height, self.count, self.block = width, height, count, block
        self.overview_resampling = overview_resampling
        self.cog = cog is not False
        self.nodata = nodata
        self._profile = {"driver": "GTiff", "width": width, "height": height, "count": count,
                         "dtype": "uint8", "crs": crs, "transform": transform, "nodata": nodata,
                         "tiled": True, "blockxsize": block, "blockysize": block, "BIGTIFF": "IF_SAFER"}
        if not self.cog:  # the COG layout deflates once, in close(); until then the spool's options
            self._profile.update(compress="deflate", zlevel=zlevel, NUM_THREADS="ALL_CPUS")
        else:  # the overview levels' spools (the full resolution goes to a TileSpool)
            self._profile.update(spool_creation(count * width * height // 3))
        self.timings: dict[str, float] = {}
        if count >= 3:  # K score bands, not an RGB image (GDAL's default for 3-4 uint8 bands)
            self._profile["photometric"] = "MINISBLACK"
        self.zlevel = zlevel
        self._buf = np.empty((count, min(block, height), width), np.uint8)
        self._buf_y0 = 0  # scene row of self._buf[:, 0]
        self._filled = 0
        self.rows_written = 0
        self._pyramid: OverviewPyramid | None = None
        self._tiles: TileSpool | None = None
        if resume is not None:
            self._reopen(*resume)
            return
        # a COG's file at ``path`` only holds its metadata until close() (sparse: no tile data)
        self._ds = rasterio.open(self.path, "w", **self._profile, **({"SPARSE_OK": True} if self.cog else {}))
        if descriptions:
            for i, d in enumerate(descriptions, start=1):
                self._ds.set_band_description(i, str(d))
        if colormap is not None:
            self._ds.write_colormap(1, dict(colormap))
        if scales is not None:
            self._ds.scales = tuple(float(v) for v in scales)
            self._ds.offsets = (0.0,) * count
        if self.cog:
            self._ds.update_tags(ns="rio_overview", resampling=self.overview_resampling.name)
            self._ds.close()
            self._tiles = self._new_tiles(resume=False)
            self._pyramid = self._new_pyramid(resume=False)

    @property
    def _partial_path(self) -> Path:
        """A COG's checkpointed rows of its open block (raw, band after band)."""
        return Path(f"{self.path}.partial")

    @property
    def _spools(self) -> tuple[TileSpool, OverviewPyramid]:
        """A COG's tile spool and overview pyramid (both open while it is written)."""
        if self._tiles is None or self._pyramid is None:
            raise RuntimeError(f"{self.path}: the COG's spools are not open")
        return self._tiles, self._pyramid

    def _new_tiles(self, resume: bool) -> TileSpool:
        return TileSpool(f"{self.path}.tiles", count=self.count, width=self.width, height=self.height,
                         block=self.block, level=self.zlevel, resume=resume)

    def _new_pyramid(self, resume: bool) -> OverviewPyramid:
        name = self.overview_resampling.name
        if name not in ("average", "mode"):
            raise ValueError(f"COG overviews are average or mode, not {name}")
        return OverviewPyramid(self.path, self._profile, overview_factors(self.width, self.height), name,
                               self.block, resume=resume)

    def _reopen(self, rows: int, crc: int) -> None:
        self._ds = rasterio.open(self.path, "r" if self.cog else "r+", NUM_THREADS="ALL_CPUS")
        shape = (self._ds.width, self._ds.height, self._ds.count)
        if self.cog:
            self._ds.close()
        if shape != (self.width, self.height, self.count):
            self.abort()
            raise ValueError(f"{self.path}: checkpointed raster has another shape")
        self._buf_y0 = rows // self.block * self.block
        self._filled = rows - self._buf_y0
        self.rows_written = self._buf_y0
        try:
            if self.cog:  # the tiles and levels of the blocks written before the checkpoint
                self._tiles = self._new_tiles(resume=True)
                self._pyramid = self._new_pyramid(resume=True)
                if self._tiles.rows_done() < self._buf_y0:
                    raise ValueError(f"{self._tiles.path}: holds {self._tiles.rows_done()} of the "
                                     f"{self._buf_y0} checkpointed rows")
            if self._filled:
                self._buf[:, :self._filled] = self._read_partial()
        except BaseException:
            self.abort()
            raise
        if self._crc() != crc:
            self.abort()
            raise ValueError(f"{self.path}: checkpointed rows do not match their checksum")

    def _read_partial(self) -> np.ndarray:
        """The checkpointed rows of the open block."""
        shape = (self.count, self._filled, self.width)
        if not self.cog:
            return self._ds.read(window=Window(0, self._buf_y0, self.width, self._filled))
        try:
            raw = np.fromfile(self._partial_path, np.uint8)
        except OSError as e:
            raise ValueError(f"{self._partial_path}: checkpointed rows unreadable ({e})") from e
        if raw.size != int(np.prod(shape)):
            raise ValueError(f"{self._partial_path}: {raw.size} bytes, expected {int(np.prod(shape))}")
        return raw.reshape(shape)

    def _crc(self) -> int:
        return zlib.crc32(np.ascontiguousarray(self._buf[:, :self._filled]).tobytes())

    def checkpoint(self) -> int:
        """Write the buffered rows (also a partial block row, kept in the buffer), close and
        reopen the file so that it is a valid TIFF on disk; returns the crc32 of the buffer."""
        if self._filled:
            self._write(self._filled)
        if self.cog:
            for spool in self._spools:
                spool.checkpoint()
        else:
            self._ds.close()
            self._ds = rasterio.open(self.path, "r+", NUM_THREADS="ALL_CPUS")
        self._check_space()
        return self._crc()

    def _write(self, n: int) -> None:
        """Store the first ``n`` rows of the open block: a COG's finished block as deflated tiles
        (a partial one, at a checkpoint, raw in its ``.partial`` file), a plain GeoTIFF's through GDAL."""
        rows = self._buf[:, :n]
        if not self.cog:
            self._ds.write(rows, window=Window(0, self._buf_y0, self.width, n))
        elif n == self._buf.shape[1] or self._buf_y0 + n == self.height:
            self._spools[0].add(self._buf_y0, rows, self.pool)
        else:
            with atomic_open(self._partial_path, "wb") as f:
                f.write(np.ascontiguousarray(rows).data)
                f.flush()
                os.fsync(f.fileno())
        self._check_space()

    def _check_space(self) -> None:
        if disk_full(self.path.parent):
            raise no_space_error(self.path.parent, OSError(f"less than {DISK_RESERVE_BYTES >> 20} MiB free"))

    def claim(self, n: int) -> np.ndarray:
        """A view ``[count, m, width]`` of the block buffer for the next ``m = min(n, room)`` rows
        (``room``: the rows left in the open block and in the raster), to be filled in place and
        handed back with :meth:`commit` ``(m)``: rows produced there are never copied into the
        writer. The rest of the ``n`` rows go through :meth:`write` after the commit."""
        m = max(0, min(int(n), self._buf.shape[1] - self._filled, self.height - self._buf_y0 - self._filled))
        return self._buf[:, self._filled:self._filled + m]

    def commit(self, m: int) -> None:
        """The ``m`` rows of the last :meth:`claim` are filled: account for them (a full block is written)."""
        if m < 0 or self._filled + m > self._buf.shape[1] or self._buf_y0 + self._filled + m > self.height:
            raise ValueError(f"commit of {m} rows does not fit the claimed block rows")
        self._filled += m
        if m and (self._filled == self._buf.shape[1] or self._buf_y0 + self._filled == self.height):
            self._flush()

    def write(self, rows: np.ndarray) -> None:
        """Append the next rows ``[count, n, width]`` (or ``[n, width]`` for one band)."""
        if rows.ndim == 2:
            rows = rows[None]
        if rows.shape[0] != self.count or rows.shape[2] != self.width:
            raise ValueError(f"rows of shape {rows.shape} do not fit {self.count} x ? x {self.width}")
        i = 0
        while i < rows.shape[1]:
            n = min(self._buf.shape[1] - self._filled, rows.shape[1] - i)
            self._buf[:, self._filled:self._filled + n] = rows[:, i:i + n]
            self._filled += n
            i += n
            if self._filled == self._buf.shape[1] or self._buf_y0 + self._filled == self.height:
                self._flush()

    def _flush(self) -> None:
        if self._filled == 0:
            return
        if self._buf_y0 + self._filled > self.height:
            raise ValueError(f"more rows written than the raster's height {self.height}")
        n, y0 = self._filled, self._buf_y0
        if not self.cog:
            self._write(n)
        else:  # the full-resolution write beside the band-split overview reduction (in turn: 1 worker)
            pyramid, pool = self._spools[1], self.pool
            pool.map(lambda job: job(), [lambda: self._write(n), lambda: pyramid.add(y0, self._buf[:, :n], pool)])
        self._buf_y0 += self._filled
        self.rows_written = self._buf_y0
        self._filled = 0

    def close(self) -> Path:
        """Flush, then write the final layout (overviews, COG); the file stays at its temporary path."""
        self._flush()
        if self.rows_written != self.height:
            self.abort()
            raise RuntimeError(f"{self.path}: only {self.rows_written} of {self.height} rows written")
        if self.cog:
            pyramid = self._spools[1]
            pyramid.close()
            self.timings["overviews_s"] = pyramid.seconds
            t0 = time.perf_counter()
            self._to_cog()
            self.timings["cog_write_s"] = time.perf_counter() - t0
        else:
            self._ds.update_tags(ns="rio_overview", resampling=self.overview_resampling.name)
            self._ds.close()
            t0 = time.perf_counter()
            with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(self.path, "r+") as ds:
                ds.build_overviews(overview_factors(self.width, self.height), self.overview_resampling)
            self.timings["overviews_s"] = time.perf_counter() - t0
        self._buf = np.empty((0, 0, 0), np.uint8)
        return self.path

    def _to_cog(self) -> None:
        """Assemble the COG (:func:`rsvl_runtime.cog.write_cog`) from the deflated tiles, the overview
        levels (deflated now) and the metadata at :attr:`path`, which it replaces."""
        from .cog import write_cog

        tiles, pyramid = self._spools
        tmp = temp_path(self.path)
        # the spools' blocks are freed off this thread
        release = free_in_background([self.path, *tiles.paths, *pyramid.paths])
        try:
            write_cog(self.path, pyramid.paths, tmp, level=self.zlevel, block=self.block, tiles=tiles)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            tiles.remove()
            pyramid.remove()
            self._partial_path.unlink(missing_ok=True)
            release()

    def abort(self) -> None:
        """Close without finishing (the caller discards the temporary file and its spools)."""
        if not self._ds.closed:
            self._ds.close()
        if self._tiles is not None:
            self._tiles.close()
        if self._pyramid is not None:
            self._pyramid.abort()


class BackgroundClose:
    """Runs :meth:`GeoTiffRowWriter.close` of ``writer`` in a thread (the scores' COG encode
    overlaps the class table, preview and styling); :meth:`wait` joins it and re-raises its error."""

    def __init__(self, writer: GeoTiffRowWriter) -> None:
        self.writer = writer
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rsvl-cog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.writer.close()
        except BaseException as e:  # noqa: BLE001 - re-raised by wait()
            self.error = e

    def wait(self, raise_error: bool = True) -> None:
        """Wait for the close; its exception is raised here (unless ``raise_error`` is False)."""
        self._thread.join()
        if self.error is not None and raise_error:
            raise self.error


#: Fraction of the raw (uncompressed) output bytes taken as a floor of what a run writes:
#: deflate-compressed labels/scores are rarely smaller (see :func:`estimate_output_bytes`).
ESTIMATE_FRACTION = 0.05


def estimate_output_bytes(width: int, height: int, bands: int) -> int:
    """A floor of the bytes the output rasters of a run need (uint8 ``bands`` x ``width`` x
    ``height`` at :data:`ESTIMATE_FRACTION` of their raw size, plus 1 MB for overviews and the
    small files): a destination with less free space cannot hold the result. A COG run needs
    more while it runs (the deflated tiles, about the final size, until the COG is assembled, and
    the overview levels' spools, at most a third of ``bands x width x height`` bytes raw);
    running out of space then is caught by the writers' free-space probe, as for any write."""
    return int(width * height * bands * ESTIMATE_FRACTION) + (1 << 20)


# ----------------------------------------------------------------------------- done marker
def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def clear_done(out_dir: PathLike) -> None:
    """Remove the completion marker (marks a folder incomplete; runs no longer call this: they
    replace the whole folder when done)."""
    (Path(out_dir) / DONE).unlink(missing_ok=True)


def write_done(out_dir: PathLike, outputs: Mapping[str, PathLike], info: Mapping[str, Any]) -> Path:
    """Write ``done.json`` LAST: the outputs (name -> bytes) plus ``info`` (timings, inputs, ...)."""
    out_dir = Path(out_dir)
    doc = {"format": DONE_FORMAT, "complete": True, "finished_at": utc_now(),
           "outputs": {name: {"bytes": Path(p).stat().st_size} for name, p in outputs.items()},
           **dict(info)}
    path = out_dir / DONE
    atomic_write_text(path, json.dumps(doc, indent=2, default=str) + "\n")
    os.chmod(path, file_mode())
    return path


def is_complete(out_dir: PathLike) -> bool:
    """True when ``out_dir`` holds a finished run: a valid ``done.json`` whose listed outputs all
    exist with the recorded sizes (GDAL ``.aux.xml`` side-cars only need to exist: GIS tools add
    statistics to them)."""
    path = Path(out_dir) / DONE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict) or doc.get("format") != DONE_FORMAT or doc.get("complete") is not True:
        return False
    outputs = doc.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return False
    for name, meta in outputs.items():
        f = Path(out_dir) / name
        try:
            if not f.is_file() or (f.stat().st_size != int(meta["bytes"]) and not name.endswith(".aux.xml")):
                return False
        except (OSError, KeyError, TypeError, ValueError):
            return False
    return True
