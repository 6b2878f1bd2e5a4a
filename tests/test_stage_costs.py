"""Stop 21's cheaper CPU stages, each checked against the way it was computed before: the inputs
hashed piece by piece between engine calls, class counts taken in the postprocess workers, the
blend split by tile rows, and the contiguous 2x2 quads of the mode overviews."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rsvl_runtime import outputs as out
from rsvl_runtime.classes import ClassStats, count_labels, uniform_areas
from rsvl_runtime.files import FileHasher, sha256_file
from rsvl_runtime.overviews import _quads, reduce_mode
from rsvl_runtime.parallel import WorkPool, split_range
from rsvl_runtime.reading import InputHasher
from rsvl_runtime.scene import run_scene
from rsvl_runtime.tiling import RowAccumulator, TileGrid, window_1d

from ._runtime_rasters import OPTICAL_SPEC, SAR_SPEC, LinearModel, optical_array, sar_array, write_tif


# ----------------------------------------------------------------------------- hashing the inputs
def test_file_hashed_in_pieces_equals_its_sha256(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, 3 * FileHasher.CHUNK + 12345, np.uint8).tobytes()
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    h = FileHasher(p)
    assert h.size == len(data)
    for _ in range(3):
        h.update(FileHasher.CHUNK // 3 + 7)  # pieces that do not line up with the chunks
    assert not h.done
    assert h.hexdigest() == hashlib.sha256(data).hexdigest() == sha256_file(p)
    assert h.done
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert FileHasher(empty).hexdigest() == hashlib.sha256(b"").hexdigest()


def test_input_hasher_steps_only_when_driven(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"a" * (5 << 20))
    b.write_bytes(b"b" * (1 << 20))
    h = InputHasher({"optical": a, "sar": b}, enabled=True, background=False)
    assert h.total_bytes == 6 << 20 and h._thread is None
    with WorkPool(2) as pool:
        h.step(2 << 20, pool)
        assert not h._files["optical"].done and h._files["sar"].done  # 1 MiB: ends within the step
        h.step(2 << 20, pool)
        assert not h._files["optical"].done  # 4 of 5 MiB
    recs = h.records()  # hashes what is left
    assert recs["optical"]["sha256"] == sha256_file(a) and recs["sar"]["sha256"] == sha256_file(b)
    off = InputHasher({"optical": a}, enabled=False, background=False)
    assert off.total_bytes == 0 and off.records()["optical"]["sha256"] is None


def test_serial_run_records_the_inputs_sha256(tmp_path: Path) -> None:
    opt = write_tif(tmp_path / "optical.tif", optical_array(150, 170))
    sar = write_tif(tmp_path / "sar.tif", sar_array(150, 170))
    res = run_scene(LinearModel(3), str(opt), str(sar), tmp_path / "out", class_names=["a", "b", "c"],
                    optical_spec=OPTICAL_SPEC, sar_spec=SAR_SPEC, tile=64, overlap=0.25, batch=2,
                    progress=False, stac=False, pipeline="serial", workers=2,
                    engine_timings={"engine_warmup_s": 0.125})
    done = json.loads((res.out_dir / out.DONE).read_text())
    assert done["inputs"]["optical"]["sha256"] == hashlib.sha256(opt.read_bytes()).hexdigest()
    assert done["inputs"]["sar"]["sha256"] == hashlib.sha256(sar.read_bytes()).hexdigest()
    assert done["timings"]["engine_warmup_s"] == 0.125  # recorded beside, not inside, total_s
    assert 0 < done["timings"]["batch_s"] < done["timings"]["inference_s"]  # the batches' copies, timed


# ----------------------------------------------------------------------------- class counts
@pytest.mark.parametrize("geographic", [False, True])
def test_class_counts_of_split_rows_equal_the_whole(geographic: bool) -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, (37, 53)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.1] = 255
    areas = (np.linspace(90.0, 110.0, 37) if geographic else np.full(37, 100.0)) * (1 + 1e-9 * np.pi)
    assert uniform_areas(areas) is (not geographic)
    whole = ClassStats(5)
    whole.update(labels, areas)
    for cuts in ([0, 37], [0, 1, 20, 37], [0, 5, 6, 7, 30, 37]):
        split = ClassStats(5)
        split.add_counts([count_labels(labels[a:b], geographic) for a, b in zip(cuts[:-1], cuts[1:])], areas)
        assert split.to_dict() == whole.to_dict()  # bit for bit, whatever the split
    assert whole.pixels.tolist() == [int((labels == k).sum()) for k in range(5)]
    assert whole.nodata_pixels == int((labels == 255).sum())


# ----------------------------------------------------------------------------- blending by rows
def test_blend_split_by_tile_rows_equals_one_worker() -> None:
    grid = TileGrid(300, 410, 64, 0.25)
    tiles = list(grid.tiles())
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(len(tiles), 7, 64, 64)).astype(np.float32)
    results = []
    for workers in (1, 2, 3):
        acc = RowAccumulator(grid, 7, profile=window_1d(64, "hann"))
        rows: list[np.ndarray] = []
        with WorkPool(workers) as pool:
            for i in range(0, len(tiles), 5):
                acc.add_batch(tiles[i:i + 5], logits[i:i + 5], lambda f: rows.append(f.values.copy()), pool)
        rows.append(acc.finish().values.copy())
        results.append(np.concatenate(rows, axis=1))
    assert results[0].shape == (7, 300, 410)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    assert split_range(64, 3) == [slice(0, 21), slice(21, 42), slice(42, 64)]


# ----------------------------------------------------------------------------- mode overviews
def test_contiguous_quads_equal_the_strided_ones() -> None:
    rng = np.random.default_rng(7)
    buf = rng.integers(0, 6, (2, 64, 90)).astype(np.uint8)
    buf[rng.random(buf.shape) < 0.2] = 255
    rows = buf[:, :40]  # a part of a block buffer, as the row writer hands it over
    fast = _quads(rows, 255)
    assert all(q.flags.c_contiguous for q in fast)
    strided = [rows[:, 0::2, 0::2], rows[:, 0::2, 1::2], rows[:, 1::2, 0::2], rows[:, 1::2, 1::2]]
    for f, s in zip(fast, strided):
        np.testing.assert_array_equal(f, s)
    # the mode itself, against a direct per-group scan (GDAL's rule: first value to a new best count)
    got = reduce_mode(rows, 255)
    for c, y, x in zip(rng.integers(0, 2, 50), rng.integers(0, 20, 50), rng.integers(0, 45, 50)):
        group = [int(v) for v in rows[c, 2 * y:2 * y + 2, 2 * x:2 * x + 2].ravel() if v != 255]
        best, best_n, seen = 255, 0, {}
        for v in group:
            seen[v] = seen.get(v, 0) + 1
            if seen[v] > best_n:
                best, best_n = v, seen[v]
        assert got[c, y, x] == best
    odd = rng.integers(0, 4, (1, 7, 9)).astype(np.uint8)  # padded path
    assert reduce_mode(odd, 255).shape == (1, 4, 5)


# ----------------------------------------------------------------------------- rows filled in place
def test_rows_claimed_in_place_write_the_same_file_as_written_rows(tmp_path: Path) -> None:
    from rasterio.transform import from_origin

    rng = np.random.default_rng(11)
    data = rng.integers(0, 6, (3, 1100, 96), dtype=np.uint8)

    def writer(name: str) -> out.GeoTiffRowWriter:
        return out.GeoTiffRowWriter(tmp_path / name, width=96, height=1100, count=3, crs="EPSG:32633",
                                    transform=from_origin(500000, 4100000, 10, 10), nodata=255)

    a, b = writer("written.tif"), writer("claimed.tif")
    y = 0
    for n in [192] * 5 + [140]:  # strips crossing the 512-row blocks
        a.write(data[:, y:y + n])
        view = b.claim(n)
        m = view.shape[1]
        assert m == min(n, 512 - y % 512) and view.base is not None  # a view of the open block
        view[:] = data[:, y:y + m]
        b.commit(m)
        if m < n:
            b.write(data[:, y + m:y + n])  # past the block: through write()
        y += n
    assert b.claim(5).shape[1] == 0  # the raster is full
    with pytest.raises(ValueError, match="does not fit"):
        b.commit(1)
    for w in (a, b):
        w.close()
    with rasterio.open(tmp_path / "written.tif") as x, rasterio.open(tmp_path / "claimed.tif") as z:
        np.testing.assert_array_equal(z.read(), data)
        np.testing.assert_array_equal(x.read(), z.read())
        assert x.overviews(1) == z.overviews(1) and x.overviews(1)


def test_spool_files_are_freed_off_the_callers_thread(tmp_path: Path) -> None:
    import os
    import threading
    import time

    from rsvl_runtime.files import free_in_background

    files = [tmp_path / f"s{i}.tif" for i in range(3)]
    for f in files:
        f.write_bytes(b"x" * 4096)
    before = len(os.listdir("/proc/self/fd"))
    release = free_in_background([*files, tmp_path / "missing.tif"])  # a missing file is skipped
    assert len(os.listdir("/proc/self/fd")) == before + 3
    for f in files:
        f.unlink()  # the names go at once; the open files keep the blocks
    assert not any(f.exists() for f in files)
    release()
    for t in [t for t in threading.enumerate() if t.name == "rsvl-free"]:
        t.join(5)
    deadline = time.monotonic() + 5
    while len(os.listdir("/proc/self/fd")) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(os.listdir("/proc/self/fd")) == before


def test_input_sha256_is_cached_by_file_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rsvl_runtime.files import HASH_CACHE, cached_sha256

    monkeypatch.setenv("RSVL_CACHE_DIR", str(tmp_path / "cache"))
    a = tmp_path / "a.tif"
    a.write_bytes(b"first" * 1000)
    assert cached_sha256(a) is None
    first = InputHasher({"optical": a}, enabled=True, background=False)
    assert "optical" in first._files and first.records()["optical"]["sha256"] == sha256_file(a)
    assert cached_sha256(a) == sha256_file(a) and len(list((tmp_path / "cache" / HASH_CACHE).iterdir())) == 1
    again = InputHasher({"optical": a}, enabled=True, background=False)
    assert again._files == {} and again.total_bytes == 0  # not read again
    assert again.records()["optical"]["sha256"] == sha256_file(a)
    with open(a, "ab") as f:  # the same path, new bytes: new times, a new key
        f.write(b"more")
    assert cached_sha256(a) is None
    changed = InputHasher({"optical": a}, enabled=True, background=True)
    assert changed.records()["optical"]["sha256"] == hashlib.sha256(b"first" * 1000 + b"more").hexdigest()
    (tmp_path / "cache" / HASH_CACHE).chmod(0o500)  # an unwritable cache is only a cache
    b = tmp_path / "b.tif"
    b.write_bytes(b"b")
    try:
        assert InputHasher({"sar": b}, enabled=True, background=False).records()["sar"]["sha256"] == sha256_file(b)
    finally:
        (tmp_path / "cache" / HASH_CACHE).chmod(0o700)


def test_preflight_samples_both_inputs_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from rsvl_runtime import checks
    from rsvl_runtime.options import InputOptions
    from rsvl_runtime.parallel import available_cpus

    if available_cpus() < 2:
        pytest.skip("one CPU: the samples are read in turn")
    opt = write_tif(tmp_path / "optical.tif", optical_array(120, 90))
    sar = write_tif(tmp_path / "sar.tif", sar_array(120, 90))
    seen: list[tuple[str, str]] = []
    both = threading.Barrier(2, timeout=10)  # passes only when the two samples run concurrently
    real = checks.sample_input

    def sampling(src):  # type: ignore[no-untyped-def]
        seen.append((src.modality, threading.current_thread().name))
        both.wait()
        return real(src)

    monkeypatch.setattr(checks, "sample_input", sampling)
    checks.preflight(opt, sar, InputOptions(optical_spec=OPTICAL_SPEC, sar_spec=SAR_SPEC))
    assert sorted(m for m, _ in seen) == ["optical", "sar"] and len({t for _, t in seen}) == 2
