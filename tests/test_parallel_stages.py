"""The CPU stages of a scene run made cheaper (issue 14, item 3): the serial and overlap
pipelines, work split over a pool, overviews reduced while writing (exactly GDAL's AVERAGE and
MODE), the fast class argmax, the overlapping strips read once and the report's thumbnail
gathered while reading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling

from rsvl_runtime import outputs as out
from rsvl_runtime.overviews import reduce_average, reduce_mode
from rsvl_runtime.parallel import WorkPool, split_range
from rsvl_runtime.postprocess import argmax_classes, labels_and_scores
from rsvl_runtime.reading import Decimated
from rsvl_runtime.scene import run_scene

from ._runtime_rasters import OPTICAL_SPEC, SAR_SPEC, LinearModel, optical_array, sar_array, write_tif

NAMES = ["water", "forest", "urban", "crop", "bare"]


def _run(opt: Path, sar: Path | None, out_dir: Path, **kw: Any):  # type: ignore[no-untyped-def]
    args: dict[str, Any] = {"class_names": NAMES, "optical_spec": OPTICAL_SPEC, "sar_spec": SAR_SPEC,
                            "tile": 64, "overlap": 0.25, "batch": 4, "progress": False, "hash_inputs": False,
                            "stac": False}
    args.update(kw)
    return run_scene(LinearModel(5), str(opt), None if sar is None else str(sar), out_dir, **args)


def _scene(folder: Path, h: int, w: int, nodata_corner: bool = False) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    opt = optical_array(h, w)
    if nodata_corner:  # a nodata triangle: overviews and labels must ignore it
        yy, xx = np.mgrid[0:h, 0:w]
        opt[:, yy + xx < min(h, w) // 3] = 0
    return (write_tif(folder / "optical.tif", opt, nodata=0 if nodata_corner else None),
            write_tif(folder / "sar.tif", sar_array(h, w)))


# ----------------------------------------------------------------------------- the two pipelines
@pytest.mark.parametrize("workers", [1, 3])
def test_serial_and_overlap_pipelines_write_the_same_bytes(tmp_path: Path, workers: int) -> None:
    opt, sar = _scene(tmp_path / "in", 300, 230, nodata_corner=True)
    a = _run(opt, sar, tmp_path / "serial", pipeline="serial", workers=workers)
    b = _run(opt, sar, tmp_path / "overlap", pipeline="overlap", workers=2)
    for name in (out.LABELS, out.SCORES):
        with rasterio.open(a.out_dir / name) as x, rasterio.open(b.out_dir / name) as y:
            np.testing.assert_array_equal(x.read(), y.read())
            for level in range(len(x.overviews(1))):
                with rasterio.open(a.out_dir / name, overview_level=level) as xo, \
                        rasterio.open(b.out_dir / name, overview_level=level) as yo:
                    np.testing.assert_array_equal(xo.read(), yo.read())
    ca = json.loads((a.out_dir / out.CLASSES).read_text())
    cb = json.loads((b.out_dir / out.CLASSES).read_text())
    assert ca == cb
    da = json.loads((a.out_dir / out.DONE).read_text())
    assert da["raster"]["pipeline"] == "serial" and da["timings"]["workers"] == float(workers)
    assert json.loads((b.out_dir / out.DONE).read_text())["raster"]["pipeline"] == "overlap"


def test_unknown_pipeline_and_bad_workers_are_refused(tmp_path: Path) -> None:
    opt, sar = _scene(tmp_path / "in", 64, 64)
    with pytest.raises(ValueError, match="--pipeline must be one of auto, serial, overlap"):
        _run(opt, sar, tmp_path / "a", pipeline="threads")
    with pytest.raises(ValueError, match="--workers must be a positive number"):
        _run(opt, sar, tmp_path / "b", workers=0)


def test_split_range_and_pool() -> None:
    assert split_range(10, 3) == [slice(0, 3), slice(3, 6), slice(6, 10)]
    assert split_range(10, 3, align=4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert split_range(2, 8) == [slice(0, 1), slice(1, 2)] and split_range(0, 4) == []
    with WorkPool(3) as pool:
        assert pool.map(lambda x: x * x, range(7)) == [0, 1, 4, 9, 16, 25, 36]
        with pytest.raises(ZeroDivisionError):
            pool.map(lambda x: 1 // x, [1, 0, 2])
    assert WorkPool(1).map(str, [1, 2]) == ["1", "2"]


def test_nested_pool_maps_do_not_deadlock_and_errors_wait_for_started_tasks() -> None:
    """Every task of a 2-worker pool calls map again (all workers busy, their inner items queued):
    the callers run the queued items themselves instead of waiting for them."""
    import threading
    import time

    pool = WorkPool(2)
    barrier = threading.Barrier(2, timeout=10)

    def outer(x: int) -> list[int]:
        barrier.wait()  # both workers (the caller and one thread) are inside a task at once
        return pool.map(lambda y: x * 10 + y, range(3))

    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(pool.map(outer, [1, 2])), daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "nested WorkPool.map deadlocked"
    assert got == [[[10, 11, 12], [20, 21, 22]]]

    finished: list[int] = []
    started = threading.Event()

    def task(x: int) -> int:
        if x == 0:  # fails once a worker is inside task 1
            assert started.wait(10)
            raise ValueError("first task fails")
        started.set()
        time.sleep(0.2)
        finished.append(x)
        return x

    with pytest.raises(ValueError, match="first task fails"):
        pool.map(task, [0, 1])
    assert finished == [1]  # map raised only after the started task had finished
    pool.close()


# ----------------------------------------------------------------------------- overviews
def _ref_average(x: np.ndarray, nd: int) -> np.ndarray:
    c, h, w = x.shape
    o = np.zeros((c, -(-h // 2), -(-w // 2)), np.uint8)
    for k, i, j in np.ndindex(*o.shape):
        v = [int(p) for p in x[k, 2 * i:2 * i + 2, 2 * j:2 * j + 2].ravel() if p != nd]
        o[k, i, j] = nd if not v else (sum(v) + len(v) // 2) // len(v)
    return o


def _ref_mode(x: np.ndarray, nd: int) -> np.ndarray:
    """GDAL's MODE: scan the group, the answer changes only when a count beats the best."""
    c, h, w = x.shape
    o = np.zeros((c, -(-h // 2), -(-w // 2)), np.uint8)
    for k, i, j in np.ndindex(*o.shape):
        best, best_n, counts = nd, 0, {}
        for p in (int(p) for p in x[k, 2 * i:2 * i + 2, 2 * j:2 * j + 2].ravel() if p != nd):
            counts[p] = counts.get(p, 0) + 1
            if counts[p] > best_n:
                best, best_n = p, counts[p]
        o[k, i, j] = best
    return o


def test_reductions_match_a_pixel_by_pixel_reference() -> None:
    rng = np.random.default_rng(0)
    for _ in range(25):
        h, w = (int(v) for v in rng.integers(1, 11, 2))
        labels = rng.integers(0, 4, (2, h, w), dtype=np.uint8)
        np.testing.assert_array_equal(reduce_mode(labels, 3), _ref_mode(labels, 3))
        np.testing.assert_array_equal(reduce_mode(labels, 255), _ref_mode(labels, 255))
        scores = (rng.integers(0, 6, (2, h, w)) * 50).astype(np.uint8)
        np.testing.assert_array_equal(reduce_average(scores, 0), _ref_average(scores, 0))
        np.testing.assert_array_equal(reduce_average(scores, 250), _ref_average(scores, 250))
    # ties: GDAL keeps the value that reached the count first
    assert reduce_mode(np.array([[[2, 1], [1, 2]]], np.uint8), 255)[0, 0, 0] == 1
    assert reduce_mode(np.array([[[2, 0], [2, 0]]], np.uint8), 255)[0, 0, 0] == 2
    assert reduce_mode(np.array([[[255, 255], [255, 255]]], np.uint8), 255)[0, 0, 0] == 255


def test_average_of_full_groups_in_uint64_lanes_matches_the_reference() -> None:
    """The packed path (no nodata, even height, width a multiple of 8, more rows than one pass)
    rounds half up like GDAL, up to 4 x 255, and equals the pixel-by-pixel reference."""
    from rsvl_runtime import overviews

    rng = np.random.default_rng(1)
    rows = 2 * overviews._SWAR_ROW_PAIRS + 6  # one full pass and a short one
    for w in (8, 24, 40):
        scores = rng.integers(1, 256, (3, rows, w), dtype=np.uint8)
        scores[0, :2, :2] = 255  # the largest sum
        scores[1, :2, :2] = [[1, 2], [1, 2]]  # 6 / 4 = 1.5: rounds up to 2
        got = reduce_average(scores, 0)
        np.testing.assert_array_equal(got, _ref_average(scores, 0))
        assert got[0, 0, 0] == 255 and got[1, 0, 0] == 2
    # with a nodata pixel it takes the counting path, still equal
    scores[2, 3, 5] = 0
    np.testing.assert_array_equal(reduce_average(scores, 0), _ref_average(scores, 0))


def test_mode_of_full_groups_in_closed_form_matches_the_reference() -> None:
    """The closed form (no nodata, even sizes) keeps GDAL's tie rule on every one of the 3^4
    groups of three values, over more rows than one pass."""
    from rsvl_runtime import overviews

    groups = np.array(np.meshgrid(*[np.arange(3, dtype=np.uint8)] * 4, indexing="ij")).reshape(4, -1).T
    rows = np.zeros((2, 2 * len(groups), 4), np.uint8)  # band 0: each group at the left, band 1: random
    rows[0, 0::2, :2], rows[0, 1::2, :2] = groups[:, :2], groups[:, 2:]
    rows[1] = np.random.default_rng(2).integers(0, 3, rows.shape[1:], dtype=np.uint8)
    assert rows.shape[1] > 4 * overviews._SWAR_ROW_PAIRS
    got = reduce_mode(rows, 255)
    np.testing.assert_array_equal(got, _ref_mode(rows, 255))
    assert got[0, np.flatnonzero((groups == [2, 1, 1, 2]).all(1))[0], 0] == 1  # b, c reach 2 first
    assert got[0, np.flatnonzero((groups == [1, 2, 2, 1]).all(1))[0], 0] == 2


def test_streamed_overviews_equal_gdal_build_overviews(tmp_path: Path) -> None:
    """Every level of the COG (reduced while writing) equals what GDAL's build_overviews makes of
    the same full-resolution pixels (the plain layout): AVERAGE and MODE, nodata included."""
    # 3 blocks (the last one short), levels 2, 4, 8; sizes multiples of 8: GDAL stretches its
    # source windows where a size is not a multiple of the factor, ours stay f x f
    opt, sar = _scene(tmp_path / "in", 1096, 528, nodata_corner=True)
    a = _run(opt, sar, tmp_path / "cog", cog=True)
    b = _run(opt, sar, tmp_path / "plain", cog=False)
    for name in (out.LABELS, out.SCORES):
        with rasterio.open(a.out_dir / name) as x, rasterio.open(b.out_dir / name) as y:
            assert x.overviews(1) == y.overviews(1) == out.overview_factors(528, 1096) == [2, 4, 8]
            np.testing.assert_array_equal(x.read(), y.read())
            assert (x.read(1) == x.nodata).any()  # the nodata corner is in the test
        for level in range(3):
            with rasterio.open(a.out_dir / name, overview_level=level) as xo, \
                    rasterio.open(b.out_dir / name, overview_level=level) as yo:
                np.testing.assert_array_equal(xo.read(), yo.read(), err_msg=f"{name} level {level}")
    leftovers = [p.name for p in a.out_dir.iterdir() if ".ov" in p.name or p.suffix == ".vrt"]
    assert leftovers == []  # the level files and the VRT are gone


# ----------------------------------------------------------------------------- labels and scores
def test_argmax_classes_equals_numpy_argmax_with_ties_and_nan() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, (6, 40, 50)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(argmax_classes(x), x.argmax(axis=0).astype(np.uint8))
    x[2, 5, 5] = np.nan
    np.testing.assert_array_equal(argmax_classes(x), x.argmax(axis=0).astype(np.uint8))
    one = rng.normal(size=(1, 3, 4)).astype(np.float32)
    assert (argmax_classes(one) == 0).all()


def test_in_place_scores_equal_the_copying_path() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 4, (5, 30, 40)).astype(np.float32)
    valid = rng.random((30, 40)) > 0.1
    ref_labels, ref_scores = labels_and_scores(logits, valid, True)
    labels, scores = labels_and_scores(logits.copy(), valid, True, inplace=True)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(scores, ref_scores)
    probs = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
    expect = np.clip(np.rint(probs * 255), 1, 255).astype(np.uint8)
    expect[:, ~valid] = 0
    np.testing.assert_array_equal(scores, expect)


# ----------------------------------------------------------------------------- reading
def test_decimated_copy_equals_gdals_nearest_read(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "o.tif", optical_array(700, 1300))
    with rasterio.open(path) as ds:
        d = Decimated(ds.height, ds.width, 512)
        for y in range(0, ds.height, 192):  # in strips, as the reader goes
            d.add(y, ds.read(window=((y, min(y + 256, ds.height)), (0, ds.width))))
        ref = ds.read(out_shape=(3, *d.shape), resampling=Resampling.nearest)
    assert d.shape == (276, 512)
    np.testing.assert_array_equal(d.values, ref)
    part = Decimated(700, 1300, 512)
    part.add(0, np.zeros((3, 100, 1300), np.uint8))
    assert part.values is None  # incomplete (a resumed run): the report reads the input instead


def test_report_thumbnail_comes_from_the_read_not_a_second_pass(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from rsvl_runtime import report

    opt, sar = _scene(tmp_path / "in", 200, 180)
    seen: list[Any] = []
    real = report.optical_thumbnail

    def spy(*a: Any, **k: Any) -> bytes:
        seen.append(k.get("values"))
        return real(*a, **k)

    monkeypatch.setattr(report, "optical_thumbnail", spy)
    _run(opt, sar, tmp_path / "out")
    assert len(seen) == 1 and seen[0] is not None and seen[0].shape == (3, 200, 180)
    with rasterio.open(opt) as ds:
        np.testing.assert_array_equal(seen[0], ds.read())  # small scene: the decimated copy is the scene


@pytest.mark.parametrize("resampling", ["average", "mode"])
def test_pyramid_levels_above_the_block_come_from_the_last_streamed_level(tmp_path: Path, resampling: str) -> None:
    """Levels up to the block size are reduced block by block; bigger factors (scenes over
    131072 px with 512-row blocks) when the raster closes — the same cascade either way."""
    from rasterio.transform import from_origin

    from rsvl_runtime.overviews import OverviewPyramid

    rng = np.random.default_rng(4)
    h, w, nodata = 37, 50, 0 if resampling == "average" else 255
    data = rng.integers(1, 5, (2, h, w), dtype=np.uint8) * 40
    data[:, :5, :7] = nodata
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 2, "dtype": "uint8", "nodata": nodata,
               "crs": "EPSG:32633", "transform": from_origin(0, 0, 1, 1)}
    pyr = OverviewPyramid(tmp_path / "base.tif", profile, [2, 4, 8, 16], resampling, block=4)
    assert pyr.streamed == [2, 4]
    for y in range(0, h, 4):
        pyr.add(y, data[:, y:y + 4])
    pyr.close()
    reduce = reduce_average if resampling == "average" else reduce_mode
    level = data
    for f, path in zip([2, 4, 8, 16], pyr.paths):
        level = reduce(level, nodata)
        with rasterio.open(path) as ds:
            assert ds.shape == (-(-h // f), -(-w // f))
            np.testing.assert_array_equal(ds.read(), level, err_msg=f"factor {f}")
    pyr.remove()
    assert not any(p.exists() for p in pyr.paths)


def test_batched_blend_equals_tile_by_tile_bit_for_bit_and_keeps_the_logits() -> None:
    """add_batch (window applied to the whole batch in a scratch buffer, split by channels over a
    pool) gives the bits of add (tile by tile), and leaves the caller's logits unchanged."""
    from rsvl_runtime.tiling import RowAccumulator, TileGrid

    grid = TileGrid(height=700, width=900, tile=256, overlap=0.25)
    tiles = list(grid.tiles())
    logits = np.random.default_rng(1).normal(size=(len(tiles), 5, 256, 256)).astype(np.float32)
    before = logits.copy()

    def blend(batch: int | None, pool: WorkPool | None) -> np.ndarray:
        acc, out = RowAccumulator(grid, 5), np.empty((5, 700, 900), np.float32)

        def emit(f: Any) -> None:
            out[:, f.y0:f.y0 + f.n_rows] = f.logits()

        if batch is None:
            for t, lg in zip(tiles, logits):
                for f in acc.add(t, lg):
                    emit(f)
        else:
            for i in range(0, len(tiles), batch):
                acc.add_batch(tiles[i:i + batch], logits[i:i + batch], emit, pool)
        emit(acc.finish())
        return out

    ref = blend(None, None)
    with WorkPool(3) as pool:
        for got in (blend(3, pool), blend(4, None), blend(8, pool)):
            assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))
    assert np.array_equal(logits, before)


def test_ort_sessions_stop_spinning_when_a_run_returns(tmp_path: Path) -> None:
    """The engine's intra-op threads must not spin on into the CPU stages that the serial
    pipeline runs between engine calls: every runtime session is opened with
    ``session.force_spinning_stop`` and still computes."""
    import onnx
    from onnx import TensorProto, helper

    from rsvl_runtime.backends.onnxruntime_backend import FORCE_SPINNING_STOP, OrtSession

    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "double",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "double.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    sess = OrtSession(path, ["CPUExecutionProvider"], threads=2)
    assert sess._sess.get_session_options().get_session_config_entry(FORCE_SPINNING_STOP) == "1"
    np.testing.assert_array_equal(sess.run({"x": np.array([1.0, 2.5], np.float32)})["y"], [2.0, 5.0])
