"""Synthetic generator: determinism, georeferencing, seamless streaming, appearance, text."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rsvl_train.data.synthetic import (
    CLASS_NAMES,
    IGNORE_INDEX,
    SAR_NODATA,
    SyntheticScene,
    describe_labels,
    make_tile_dataset,
    referring_expressions,
    synthetic_tiles,
    write_misregistered_pair,
    write_scene,
)

from ._synthetic_fixtures import write_corrupt_tif
from .test_runtime_no_torch import run_without_torch

WATER, BUILDING, ROAD, VEGETATION, FARMLAND, BARE_SOIL, OTHER = range(7)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_class_names() -> None:
    assert CLASS_NAMES == ("water", "building", "road", "vegetation", "farmland", "bare_soil", "other")


def test_same_seed_identical_bytes(tmp_path: Path) -> None:
    a = write_scene(tmp_path / "a", 96, 80, seed=3)
    b = write_scene(tmp_path / "b", 96, 80, seed=3)
    for pa, pb in ((a.optical, b.optical), (a.sar, b.sar), (a.labels, b.labels)):
        assert _digest(pa) == _digest(pb)


def test_different_seed_differs() -> None:
    a = SyntheticScene(1, 128, 128).render(0, 0, 128, 128)
    b = SyntheticScene(2, 128, 128).render(0, 0, 128, 128)
    assert not np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.sar_db, b.sar_db)


def test_georeferencing(synthetic_scene) -> None:
    f = synthetic_scene
    expect = rasterio.Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4600000.0)  # from_origin(500000, 4600000, 10, 10)
    for path, count, dtype, nodata in (
        (f.optical, 3, "uint8", None),
        (f.sar, 1, "float32", SAR_NODATA),
        (f.labels, 1, "uint8", IGNORE_INDEX),
    ):
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 32633
            assert src.transform.almost_equals(expect)
            assert (src.count, src.dtypes[0], src.nodata) == (count, dtype, nodata)
            assert (src.height, src.width) == (256, 256)
            assert src.block_shapes[0] == (256, 256) and src.compression.name.lower() == "deflate"
    assert f.transform == tuple(expect)[:6]


def test_custom_crs_resolution(tmp_path: Path) -> None:
    f = write_scene(tmp_path, 40, 50, seed=0, crs="EPSG:4326", resolution=0.001, origin=(10.0, 45.0))
    with rasterio.open(f.labels) as src:
        assert src.crs.to_epsg() == 4326
        assert src.res == pytest.approx((0.001, 0.001))
        assert src.bounds.left == pytest.approx(10.0) and src.bounds.top == pytest.approx(45.0)


def test_nodata_uint16_linear(synthetic_scene_nodata) -> None:
    f = synthetic_scene_nodata
    opt, sar, lab = _read(f.optical), _read(f.sar)[0], _read(f.labels)[0]
    with rasterio.open(f.optical) as src:
        assert src.nodata == 0 and src.dtypes[0] == "uint16"
        assert src.profile["tiled"] and src.block_shapes[0] == (256, 256)
    nod = lab == IGNORE_INDEX
    assert 0.07 < nod.mean() < 0.13
    assert nod[0, 0] and not nod[-1, -1]
    assert np.all(opt[:, nod] == 0) and np.all(opt[:, ~nod] >= 1)
    assert np.all(sar[nod] == SAR_NODATA)
    valid = sar[~nod]
    assert valid.min() > 0  # linear intensity
    assert 1000 < opt[:, ~nod].mean() < 8000  # reflectance * 10000
    db = 10 * np.log10(valid)
    assert -25 < db.mean() < 0


def test_streaming_blocked_equals_single_block(tmp_path: Path) -> None:
    """A 1300x900 scene written in 256-blocks equals the same scene written in one block."""
    a = write_scene(tmp_path / "a", 1300, 900, seed=5, block=256)
    b = write_scene(tmp_path / "b", 1300, 900, seed=5, block=2048)
    for pa, pb in ((a.optical, b.optical), (a.sar, b.sar), (a.labels, b.labels)):
        np.testing.assert_array_equal(_read(pa), _read(pb))
    # and a window rendered on its own equals the corresponding crop
    scene = SyntheticScene(5, 1300, 900)
    win = scene.render(250, 500, 20, 30)
    np.testing.assert_array_equal(win.labels, _read(a.labels)[0, 250:270, 500:530])


def test_all_classes_in_512() -> None:
    labels = SyntheticScene(0, 512, 512).render(0, 0, 512, 512).labels
    counts = np.bincount(labels.ravel(), minlength=7)[:7]
    assert (counts > 0).all(), dict(zip(CLASS_NAMES, counts.tolist()))


@pytest.fixture(scope="module")
def big_block():
    return SyntheticScene(0, 768, 768).render(0, 0, 768, 768)


def test_sar_appearance(big_block) -> None:
    lab, db = big_block.labels, big_block.sar_db
    mean = {c: float(db[lab == c].mean()) for c in range(7)}
    assert mean[WATER] < mean[ROAD] < mean[BARE_SOIL] < mean[FARMLAND] < mean[VEGETATION] < mean[BUILDING]
    assert mean[WATER] < -18 and mean[BUILDING] > 0
    # speckle: vegetation is not a constant
    assert db[lab == VEGETATION].std() > 1.5


def test_optical_appearance(big_block) -> None:
    lab, rgb = big_block.labels, big_block.optical
    mean = {c: rgb[:, lab == c].mean(axis=1) for c in range(7)}
    r, g, b = mean[VEGETATION]
    assert g > r + 20 and g > b + 20  # vegetation is green
    assert mean[WATER].sum() < mean[VEGETATION].sum() + 40 and mean[WATER][2] > mean[WATER][0]
    assert mean[BUILDING].mean() > mean[ROAD].mean()  # roofs brighter than roads
    assert mean[BARE_SOIL][0] > mean[BARE_SOIL][2] + 30  # tan / brown


def test_modalities_complementary(big_block) -> None:
    """Water vs road: close in SAR, far apart in optical; water vs turbid-water-like soil the opposite."""
    lab, rgb, db = big_block.labels, big_block.optical, big_block.sar_db
    opt_dist = np.abs(rgb[:, lab == WATER].mean(1) - rgb[:, lab == ROAD].mean(1)).sum()
    sar_dist = abs(db[lab == WATER].mean() - db[lab == ROAD].mean())
    assert opt_dist > 60 and sar_dist < 6
    sar_bld = abs(db[lab == BUILDING].mean() - db[lab == ROAD].mean())
    assert sar_bld > 15


def test_description_and_expressions(big_block) -> None:
    text = describe_labels(big_block.labels)
    assert text.startswith("a ") and "river" in text
    exprs = referring_expressions(big_block.labels, seed=0, max_expressions=10)
    assert len(exprs) >= 4
    for e in exprs:
        assert e.mask.shape == big_block.labels.shape and e.mask.any()
        assert np.all(big_block.labels[e.mask] == e.class_id)
        assert " in the " in e.text
    water = [e for e in exprs if e.kind == "largest_water"]
    assert water and water[0].text.startswith("the largest water body")


def test_description_river_direction() -> None:
    lab = np.full((64, 64), FARMLAND, np.uint8)
    lab[:, 30:36] = WATER
    assert describe_labels(lab) == "a mostly agricultural area with a river crossing from north to south"
    lab = np.full((64, 64), VEGETATION, np.uint8)
    lab[40:48, 40:48] = WATER
    assert "pond in the south-east" in describe_labels(lab)


def test_make_tile_dataset(tmp_path: Path) -> None:
    root = make_tile_dataset(tmp_path, 3, tile=64, seed=0, split="val")
    names = sorted(p.stem for p in (root / "val" / "opt").iterdir())
    assert names == ["val_00000", "val_00001", "val_00002"]
    for sub, ext in (("sar", ".tif"), ("lbl", ".png"), ("txt", ".txt")):
        assert sorted(p.stem for p in (root / "val" / sub).glob("*" + ext)) == names
    root2 = make_tile_dataset(tmp_path / "sw", 2, tile=64, seed=0, split="train", layout="swjtu")
    assert (root2 / "splits" / "train.txt").read_text().split() == ["SYN_train/train_00000", "SYN_train/train_00001"]


def test_make_referring_dataset(referring_dataset_root: Path) -> None:
    import json

    recs = {s: json.loads((referring_dataset_root / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    assert all(recs[s] for s in recs)
    imgs = {s: {r["image"] for r in recs[s]} for s in recs}
    assert not (imgs["train"] & imgs["val"]) and not (imgs["train"] & imgs["test"])


@pytest.mark.parametrize("kind", ["crs", "resolution", "shift"])
def test_misregistered_pair(tmp_path: Path, kind: str) -> None:
    f = write_misregistered_pair(tmp_path, kind=kind, height=64, width=64)
    with rasterio.open(f.optical) as o, rasterio.open(f.sar) as s:
        assert (o.crs != s.crs) or (o.transform != s.transform)
        if kind == "resolution":
            assert s.res == (20.0, 20.0) and s.shape == (32, 32)


def test_corrupt_tif(tmp_path: Path) -> None:
    p = write_corrupt_tif(tmp_path / "bad.tif")
    with pytest.raises(rasterio.errors.RasterioIOError), rasterio.open(p) as src:
        src.read()


def test_synthetic_modules_import_without_torch() -> None:
    """Every synthetic module (and the packages above it) imports, and renders, with torch blocked."""
    r = run_without_torch("""
        import sys
        import rsvl_train, rsvl_train.data
        import rsvl_train.data.synthetic as syn
        from rsvl_train.data.synthetic import (constants, folders, geotiff, jobs, noise, scene, text,
                                               tiles)
        from rsvl_train.data.synthetic import DEFAULT_PREPROCESS, SyntheticScene, describe_labels
        b = SyntheticScene(0, 32, 32).render(0, 0, 32, 32)
        describe_labels(b.labels)
        t = tiles.synthetic_tiles(DEFAULT_PREPROCESS, 2, 32, seed=0)
        assert t["optical"].shape == (2, 3, 32, 32) and t["sar"].shape == (2, 1, 32, 32)
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
        print("blocked-ok")
    """)
    assert r.returncode == 0, r.stderr
    assert "blocked-ok" in r.stdout


def test_synthetic_tiles(preprocess) -> None:
    t = synthetic_tiles(preprocess, 3, 48, seed=7)
    assert list(t) == ["optical", "sar"]
    assert t["optical"].shape == (3, 3, 48, 48) and t["sar"].shape == (3, 1, 48, 48)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in t.values())
    # normalised with the synthetic statistics: roughly zero mean, unit spread
    assert abs(float(t["optical"].mean())) < 1.0 and 0.3 < float(t["sar"].std()) < 3.0
    # realistic scenes, not noise: neighbouring pixels are correlated
    opt = t["optical"]
    assert np.corrcoef(opt[..., :-1].ravel(), opt[..., 1:].ravel())[0, 1] > 0.5
    # deterministic by seed; tiles of a batch differ; tile i depends on seed + i only
    np.testing.assert_array_equal(t["optical"], synthetic_tiles(preprocess, 3, 48, seed=7)["optical"])
    assert not np.array_equal(opt[0], opt[1])
    assert list(synthetic_tiles(preprocess, 1, 48, seed=7, modalities=("optical",))) == ["optical"]
    assert list(synthetic_tiles({"optical": preprocess["optical"]}, 1, 48, seed=0)) == ["optical"]
    with pytest.raises(ValueError, match="sar"):
        synthetic_tiles({"optical": preprocess["optical"]}, 1, 48, seed=0, modalities=("optical", "sar"))


def test_synthetic_tiles_follow_the_spec_units(preprocess) -> None:
    """uint16 optical specs get uint16 digital numbers; SAR is normalised as dB whatever the spec says."""
    wide = dict(preprocess["optical"], dtype="uint16", scale=10000.0)
    a = synthetic_tiles(preprocess, 1, 32, seed=1)["optical"]
    b = synthetic_tiles({"optical": wide}, 1, 32, seed=1)["optical"]
    np.testing.assert_allclose(a, b, atol=0.05)
    lin = dict(preprocess["sar"], units="linear")
    np.testing.assert_array_equal(synthetic_tiles({"sar": lin}, 1, 32, seed=1)["sar"],
                                  synthetic_tiles(preprocess, 1, 32, seed=1, modalities=("sar",))["sar"])


def test_fixture_writer_moved_to_tests() -> None:
    import rsvl_train.data.synthetic as syn

    with pytest.raises(AttributeError, match="tests/_synthetic_fixtures.py"):
        syn.write_corrupt_tif  # noqa: B018
