"""rsvl_runtime on real exported bundles: vocabulary changes, GeoTIFF outputs, errors, backends."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rsvl_runtime import Referrer, Segmenter, VocabularyError

pytestmark = pytest.mark.slow


def _read(path: str) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def test_vocabulary_change_without_reexport(tiny_bundle: Path, scene, tmp_path: Path) -> None:
    seg = Segmenter.load(tiny_bundle, cache_dir=tmp_path / "cache")
    assert len(seg.classes) == 7 and seg.text_emb.shape == (7, seg.bundle.manifest["embedding_dim"])
    opt, sar = _read(scene.optical), _read(scene.sar)
    labels7, probs7 = seg.predict(opt, sar)
    assert probs7.shape == (7, 200, 170) and labels7.max() < 7
    np.testing.assert_allclose(probs7.sum(0), 1.0, atol=1e-5)

    merged = seg.set_vocabulary(["water|river|lake", "building|road", "vegetation|farmland|trees"])
    assert [c.name for c in merged] == ["water", "building", "vegetation"]
    labels3, probs3 = seg.predict(opt, sar)
    assert probs3.shape == (3, 200, 170) and labels3.max() < 3
    assert not np.array_equal(labels3, labels7)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1  # encoded once, cached on disk

    again = Segmenter.load(tiny_bundle, cache_dir=tmp_path / "cache")
    again.set_vocabulary(["water|river|lake", "building|road", "vegetation|farmland|trees"])
    np.testing.assert_array_equal(again.text_emb, seg.text_emb)


def test_default_vocabulary_comes_from_the_bundle_cache(tiny_bundle: Path, tmp_path: Path) -> None:
    seg = Segmenter.load(tiny_bundle, cache_dir=tmp_path / "c")
    fresh = seg.encode(seg.classes)  # the text graph, run now
    np.testing.assert_allclose(seg.text_emb, fresh, atol=1e-5)
    assert not (tmp_path / "c").exists()  # the bundle's vocab_cache.npz answered


def test_empty_vocabulary_is_refused(tiny_bundle: Path) -> None:
    seg = Segmenter.load(tiny_bundle)
    with pytest.raises(VocabularyError, match="empty"):
        seg.set_vocabulary([])


def test_predict_raster_outputs_are_georeferenced(tiny_bundle: Path, scene, tmp_path: Path) -> None:
    seg = Segmenter.load(tiny_bundle)
    res = seg.predict_raster(scene.optical, scene.sar, tmp_path / "out", progress=False)
    out = tmp_path / "out"
    for name in ("labels.tif", "scores.tif", "classes.json", "preview.png", "report.html", "done.json"):
        assert (out / name).is_file(), name
    with rasterio.open(scene.optical) as src, rasterio.open(out / "labels.tif") as lab:
        assert lab.crs == src.crs and lab.transform == src.transform
        assert lab.dtypes[0] == "uint8" and lab.nodata == 255
        labels = lab.read(1)
        invalid = src.read(1) == src.nodata
    assert invalid.any() and (labels[invalid] == 255).all() and (labels[~invalid] < 7).all()
    with rasterio.open(out / "scores.tif") as sc:
        assert sc.count == 7 and sc.dtypes[0] == "uint8"
    classes = json.loads((out / "classes.json").read_text())
    rows = classes["classes"] if isinstance(classes, dict) else classes
    assert sum(r["pixels"] for r in rows) == int((~invalid).sum())
    assert sum(r["area_m2"] for r in rows) == pytest.approx((~invalid).sum() * 100.0, rel=1e-6)
    assert res.tiles > 0


def test_runtime_runs_without_torch(tiny_bundle: Path, scene, tmp_path: Path) -> None:
    """Load, set a vocabulary and segment a GeoTIFF with torch made unimportable."""
    from tests.test_runtime_no_torch import run_without_torch

    r = run_without_torch(f"""
        from rsvl_runtime import Segmenter
        seg = Segmenter.load({str(tiny_bundle)!r}, backend="onnxruntime")
        seg.set_vocabulary("water|river,building,vegetation")
        res = seg.predict_raster({str(scene.optical)!r}, {str(scene.sar)!r}, {str(tmp_path / 'o')!r}, progress=False)
        import sys
        assert "torch" not in sys.modules
        print("ok", res.tiles)
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("ok")


def test_optical_only_input(tiny_bundle: Path, scene) -> None:
    seg = Segmenter.load(tiny_bundle)
    labels, probs = seg.predict(_read(scene.optical), None)
    assert labels.shape == (200, 170) and np.isfinite(probs).all()


def test_torch_backend_matches_onnxruntime(tiny_bundle: Path, scene) -> None:
    opt, sar = _read(scene.optical)[:, :64, :64], _read(scene.sar)[:, :64, :64]
    ort_seg = Segmenter.load(tiny_bundle, backend="onnxruntime")
    torch_seg = Segmenter.load(tiny_bundle, backend="torch")
    assert torch_seg.backend.startswith("torch")
    np.testing.assert_allclose(torch_seg.text_emb, ort_seg.text_emb, atol=1e-5)
    _, p_ort = ort_seg.predict(opt, sar)
    _, p_torch = torch_seg.predict(opt, sar)
    np.testing.assert_allclose(p_ort, p_torch, atol=1e-4)


def test_tiled_interiors_match_whole_image(tiny_bundle: Path, scene) -> None:
    """Blending several 64 px tiles over a 128 px crop agrees with one 128 px forward pass of the
    same model in the tile interiors (away from the crop border), within a tolerance."""
    import torch

    from rsvl_runtime.normalization import normalize_optical, normalize_sar
    from rsvl_train.checkpoint import load_checkpoint

    seg = Segmenter.load(tiny_bundle, backend="onnxruntime")
    opt, sar = _read(scene.optical)[:, 40:168, 20:148], _read(scene.sar)[:, 40:168, 20:148]
    seg.overlap = 0.5
    _, tiled = seg.predict(opt, sar)
    model = load_checkpoint(tiny_bundle / "weights.safetensors", tile_size=128)
    spec = seg.bundle.manifest["modalities"]
    x = torch.from_numpy(normalize_optical(opt, spec["optical"])[None])
    s = torch.from_numpy(normalize_sar(sar, spec["sar"])[None])
    with torch.no_grad():
        whole = torch.softmax(model.forward_image(x, s, torch.from_numpy(seg.text_emb))["logits"], 1)[0].numpy()
    inner = (slice(None), slice(16, 112), slice(16, 112))
    agreement = (tiled[inner].argmax(0) == whole[inner].argmax(0)).mean()
    assert agreement >= 0.85, agreement
    assert np.abs(tiled[inner] - whole[inner]).mean() < 0.1
    # the manifest records the image graph's tau (one-class scores and thresholds use it)
    assert seg.bundle.meta.logit_scale == pytest.approx(float(model.tau), rel=1e-6)
    assert seg.logit_scale == seg.bundle.meta.logit_scale


@pytest.mark.parametrize("kind, needle", [("crs", "CRS"), ("resolution", "resolution"), ("shift", "grid")])
def test_cli_refuses_misregistered_pairs(tiny_bundle: Path, tmp_path: Path, capsys, kind: str, needle: str) -> None:
    from rsvl_runtime.cli import main
    from rsvl_train.data.synthetic import write_misregistered_pair

    pair = write_misregistered_pair(tmp_path / kind, kind=kind, height=96, width=96)
    rc = main(["--bundle", str(tiny_bundle), "--optical", str(pair.optical), "--sar", str(pair.sar),
               "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle.lower() in err.lower() and "optical.tif" in err and "sar.tif" in err and "--align" in err
    if kind == "resolution":
        return
    rc = main(["--bundle", str(tiny_bundle), "--optical", str(pair.optical), "--sar", str(pair.sar),
               "--out", str(tmp_path / "aligned"), "--align", "--quiet"])
    if kind == "shift":  # a small shift: the aligned SAR overlaps the optical, the run completes
        assert rc == 0, capsys.readouterr().err
        assert (tmp_path / "aligned" / "done.json").is_file()
    else:  # the other CRS puts the SAR ~500 km away: no overlap is an error, not a 100 % nodata result
        err = capsys.readouterr().err
        assert rc == 2 and "does not overlap" in err and "sar.tif" in err
        assert not (tmp_path / "aligned" / "done.json").exists()


def test_cli_bad_inputs_name_the_problem(tiny_bundle: Path, scene, tmp_path: Path, capsys) -> None:
    from rsvl_runtime.cli import main
    from tests._synthetic_fixtures import write_corrupt_tif

    base = ["--bundle", str(tiny_bundle), "--out", str(tmp_path / "o"), "--quiet"]
    assert main([*base, "--optical", str(scene.sar), "--sar", str(scene.sar)]) == 2  # 1 band given for 3
    assert "band" in capsys.readouterr().err
    assert main([*base, "--optical", str(scene.optical), "--sar", str(scene.sar), "--vocab", " , "]) == 2
    assert "empty" in capsys.readouterr().err
    bad = write_corrupt_tif(tmp_path / "corrupt.tif")
    assert main([*base, "--optical", str(bad), "--sar", str(scene.sar)]) == 2
    assert "corrupt.tif" in capsys.readouterr().err


def test_cli_end_to_end_summary(tiny_bundle: Path, scene, tmp_path: Path, capsys) -> None:
    from rsvl_runtime.cli import main

    rc = main(["--bundle", str(tiny_bundle), "--optical", str(scene.optical), "--sar", str(scene.sar),
               "--out", str(tmp_path / "o"), "--vocab", "water|river,building,vegetation|trees", "--batch", "4",
               "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "tiles/s" in out and "MP/s" in out
    with rasterio.open(tmp_path / "o" / "scores.tif") as sc:
        assert sc.count == 3


def test_referrer_on_a_cadformer_bundle(referring_bundle: Path, scene, tmp_path: Path) -> None:
    ref = Referrer.load(referring_bundle)
    img = _read(scene.optical)[:, :100, :90]
    mask, prob = ref.predict(img, "the largest water body in the north-east")
    assert mask.shape == (100, 90) and set(np.unique(mask)) <= {0, 1}
    assert ((prob > 0.5) == mask.astype(bool)).all()
    res = ref.predict_raster(scene.optical, "the river", tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "mask.tif").is_file() and (tmp_path / "r" / "report.html").is_file()
    with pytest.raises(VocabularyError, match="empty"):
        ref.predict(img, "  ")
    assert res.tiles > 0


def test_segmenter_refuses_referring_bundle(referring_bundle: Path) -> None:
    from rsvl_runtime.bundle import BundleError

    with pytest.raises(BundleError, match="Referrer"):
        Segmenter.load(referring_bundle)


def test_interrupted_run_is_not_complete(tiny_bundle: Path, scene, tmp_path: Path) -> None:
    """Ctrl-C in the middle of a scene leaves no output that looks complete; a rerun completes."""
    from rsvl_runtime.outputs import is_complete

    seg = Segmenter.load(tiny_bundle)
    calls = {"n": 0}
    real = seg.predict_logits

    def flaky(o, s):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(o, s)

    seg.predict_logits = flaky  # type: ignore[method-assign]
    seg.batch = 2
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        seg.predict_raster(scene.optical, scene.sar, out, progress=False)
    assert not is_complete(out) and not (out / "labels.tif").exists()
    seg.predict_logits = real  # type: ignore[method-assign]
    seg.predict_raster(scene.optical, scene.sar, out, progress=False)
    assert is_complete(out)


def test_demo_scoring_helper(tmp_path: Path) -> None:
    """The demo's mIoU is the confusion-matrix mIoU of labels.tif vs truth (perfect -> 1.0)."""
    from rsvl_export.demo import scene_metrics
    from rsvl_train.data.synthetic import write_scene

    sc = write_scene(tmp_path / "s", 64, 64, seed=1)
    m = scene_metrics(Path(sc.labels), Path(sc.labels), 7)
    assert m["mIoU"] == pytest.approx(1.0) and m["OA"] == pytest.approx(1.0)


def test_engine_is_warmed_up_once_before_the_scene(tiny_bundle: Path, scene, tmp_path: Path) -> None:
    seg = Segmenter.load(tiny_bundle)
    calls: list[int] = []
    run = seg.sessions.image.run
    seg.sessions.image.run = lambda feeds: calls.append(len(feeds["optical"])) or run(feeds)  # type: ignore[method-assign]
    assert seg.warm_up() > 0 and calls == [seg.batch]  # one batch of zeros at the run's batch size
    assert seg.warm_up() == 0.0 and len(calls) == 1  # once per shape
    res = seg.predict_raster(scene.optical, scene.sar, tmp_path / "out", progress=False)
    done = json.loads((tmp_path / "out" / "done.json").read_text())
    assert done["timings"]["engine_warmup_s"] == 0.0  # already warm: no second warm-up
    assert len(calls) == 1 + -(-res.tiles // seg.batch)
    seg.set_vocabulary(["water", "forest"])  # another K: another warm-up
    assert seg.warm_up() > 0 and len(calls) == 2 + -(-res.tiles // seg.batch)
