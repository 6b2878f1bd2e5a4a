"""The "unclassified" threshold ``min_score`` and one-class vocabularies (issue 13, item 5;
rsvl_runtime.postprocess, the scene runner, Segmenter.predict).

The scene runs use a fake model whose logits depend only on the pixel's optical value, so that
each of three stripes of the scene has known logits and the blended result is exact: known
fractions of the scene become "unclassified".
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from rsvl_runtime import outputs as out
from rsvl_runtime.backends import Sessions
from rsvl_runtime.bundle import Bundle
from rsvl_runtime.colours import UNCLASSIFIED_COLOR
from rsvl_runtime.options import SceneOptions
from rsvl_runtime.postprocess import (
    DEFAULT_LOGIT_SCALE,
    ONE_CLASS_MIN_SCORE,
    UNCLASSIFIED,
    Scoring,
    label_array,
    labels_and_scores,
)
from rsvl_runtime.scene import run_scene
from rsvl_runtime.segmenter import Segmenter

from ._runtime_rasters import OPTICAL_SPEC, write_tif
from .test_faults_bundle import _make_bundle, _Text

H, W = 64, 96
#: Optical DN per stripe (columns 0..47, 48..71, 72..95) and the logits the fake model gives it.
STRIPES = [(slice(0, 48), 200), (slice(48, 72), 100), (slice(72, 96), 10)]
LOGITS3 = {200: [4.0, 0.0, 0.0], 100: [0.5, 0.0, 0.0], 10: [0.0, 0.0, 3.0]}


def _p_best(lg: list[float]) -> float:
    e = np.exp(np.asarray(lg) - max(lg))
    return float(e.max() / e.sum())


class StripeModel:
    """``predict_fn``: per pixel, the logits of its stripe (decided by the normalised red band)."""

    def __init__(self, table: dict[int, list[float]]) -> None:
        self.table = table

    def __call__(self, optical: np.ndarray | None, sar: np.ndarray | None) -> np.ndarray:
        assert optical is not None
        red = optical[:, 0]
        out_ = np.zeros((optical.shape[0], len(next(iter(self.table.values()))), *red.shape[1:]), np.float32)
        for dn, lg in self.table.items():
            norm = (dn / 255.0 - OPTICAL_SPEC["mean"][0]) / OPTICAL_SPEC["std"][0]
            hit = np.abs(red - norm) < 0.05
            for k, v in enumerate(lg):
                out_[:, k][hit] = v
        return out_


def _scene(tmp_path: Path) -> Path:
    o = np.zeros((3, H, W), np.uint8)
    for cols, dn in STRIPES:
        o[:, :, cols] = dn
    return write_tif(tmp_path / "optical.tif", o)


def _run(tmp_path: Path, table: dict[int, list[float]], names: list[str], **kw: Any):  # type: ignore[no-untyped-def]
    args: dict[str, Any] = {"class_names": names, "optical_spec": OPTICAL_SPEC, "tile": 64, "overlap": 0.25,
                            "batch": 4, "progress": False, "cog": False, "stac": False}
    args.update(kw)
    return run_scene(StripeModel(table), str(_scene(tmp_path)), None, tmp_path / "out", **args)


def _classes(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "out" / out.CLASSES).read_text())


def _labels(tmp_path: Path) -> np.ndarray:
    with rasterio.open(tmp_path / "out" / out.LABELS) as ds:
        return ds.read(1)


# ----------------------------------------------------------------------------- numpy level
def test_labels_and_scores_threshold_on_hand_made_logits() -> None:
    logits = np.array([[[4.0, 0.5, 0.0, 1.0]], [[0.0, 0.0, 0.0, 1.0]], [[0.0, 0.0, 3.0, 0.9]]], np.float32)
    valid = np.array([[True, True, True, False]])
    best = [_p_best(list(logits[:, 0, i])) for i in range(4)]
    assert best[0] > 0.9 and 0.4 < best[1] < 0.5 and best[2] > 0.85
    labels, scores = labels_and_scores(logits, valid, True, Scoring.of("semantic", 3, 0.6))
    assert labels.tolist() == [[0, 3, 2, 255]]  # the ambiguous pixel is "unclassified" (id K = 3)
    assert scores is not None and scores[:, 0, 3].tolist() == [0, 0, 0]
    assert scores[0, 0, 1] == round(best[1] * 255)
    no_thr, _ = labels_and_scores(logits, valid, False, Scoring.of("semantic", 3, None))
    assert no_thr.tolist() == [[0, 0, 2, 255]]
    assert Scoring.of("semantic", 3, None).n_ids == 3 and Scoring.of("semantic", 3, 0.6).n_ids == 4


def test_label_array_threshold_and_dtype() -> None:
    probs = np.array([[[0.7, 0.4]], [[0.3, 0.6]]], np.float32)
    assert label_array(probs.copy(), None, 0.65).tolist() == [[0, 2]]
    assert label_array(probs.copy(), None).tolist() == [[0, 1]]
    many = np.zeros((255, 1, 2), np.float32)
    many[254] = 1.0
    assert label_array(many.copy(), None).dtype == np.uint8  # ids 0..254 fit below nodata 255
    assert label_array(many.copy(), None, 0.5).dtype == np.uint16  # 255 classes + unclassified do not


def test_one_class_score_is_the_mapped_cosine() -> None:
    tau = 20.0
    cos = np.array([[[0.3, -0.2, 0.05, 0.0]]], np.float32)
    scoring = Scoring.of("semantic", 1, None, tau)
    assert scoring.min_score == ONE_CLASS_MIN_SCORE and scoring.one_class and scoring.unclassified == 1
    np.testing.assert_allclose(scoring.scores(tau * cos), (1 + cos) / 2, atol=1e-6)
    labels, scores = labels_and_scores(tau * cos, np.ones((1, 4), bool), True, scoring)
    assert labels.tolist() == [[0, 1, 0, 0]]  # cosine >= 0 passes the default 0.5
    assert scores is not None and scores[0, 0].tolist() == [166, 102, 134, 128]
    # the default threshold is logit >= 0 whatever tau is
    assert Scoring.of("semantic", 1).labels(Scoring.of("semantic", 1).scores(tau * cos)).tolist() == [[0, 1, 0, 0]]
    assert Scoring.of("semantic", 1).logit_scale == DEFAULT_LOGIT_SCALE


def test_threshold_validation() -> None:
    base = {"tile": 64, "overlap": 0.25, "batch": 2}
    with pytest.raises(ValueError, match=r"min_score \(--threshold\) is 1.5: give a class score between 0 and 1"):
        SceneOptions(class_names=("a", "b"), min_score=1.5, **base).check()
    with pytest.raises(ValueError, match="applies to semantic segmentation"):
        SceneOptions(class_names=("background", "x"), task="referring", min_score=0.5, **base).check()
    with pytest.raises(ValueError, match="use at most 254 classes with --threshold"):
        SceneOptions(class_names=tuple(f"c{i}" for i in range(255)), min_score=0.5, **base).check()
    pal = SceneOptions(class_names=("water", "trees"), min_score=0.5, **base).check()
    assert len(pal) == 3 and pal[2] == UNCLASSIFIED_COLOR
    assert len(SceneOptions(class_names=("water", "trees"), **base).check()) == 2


# ----------------------------------------------------------------------------- scene runs
def test_scene_threshold_makes_known_fraction_unclassified(tmp_path: Path) -> None:
    assert _p_best(LOGITS3[100]) < 0.6 < min(_p_best(LOGITS3[200]), _p_best(LOGITS3[10]))
    _run(tmp_path, LOGITS3, ["water", "trees", "buildings"], min_score=0.6)
    labels = _labels(tmp_path)
    assert (labels[:, :48] == 0).all() and (labels[:, 48:72] == 3).all() and (labels[:, 72:] == 2).all()
    doc = _classes(tmp_path)
    rows = doc["classes"]
    assert [r["name"] for r in rows] == ["water", "trees", "buildings", UNCLASSIFIED]
    un = rows[3]
    assert un["id"] == 3 and un["color"] == list(UNCLASSIFIED_COLOR) and un["pixels"] == 24 * H
    assert un["fraction"] == pytest.approx(0.25) and un["area_m2"] == pytest.approx(24 * H * 100.0)
    assert [r["fraction"] for r in rows] == pytest.approx([0.5, 0.0, 0.25, 0.25])
    assert doc["threshold"] == {"min_score": 0.6, "unclassified_id": 3, "score": "softmax probability"}
    assert doc["valid_pixels"] == H * W
    with rasterio.open(tmp_path / "out" / out.LABELS) as ds:
        assert ds.colormap(1)[3] == (*UNCLASSIFIED_COLOR, 255)
    qml = ET.parse(tmp_path / "out" / "labels.qml").getroot()
    assert [e.get("label") for e in qml.iter("paletteEntry")] == ["water", "trees", "buildings", UNCLASSIFIED]
    with rasterio.open(tmp_path / "out" / out.SCORES) as ds:
        assert ds.count == 3  # one score band per class, none for "unclassified"
        assert ds.colorinterp[0] == rasterio.enums.ColorInterp.gray  # three score bands are not RGB
        assert int(ds.read(1)[0, 60]) == round(_p_best(LOGITS3[100]) * 255)


def test_scene_without_threshold_labels_every_pixel(tmp_path: Path) -> None:
    _run(tmp_path, LOGITS3, ["water", "trees", "buildings"])
    labels = _labels(tmp_path)
    assert (labels[:, :72] == 0).all() and (labels[:, 72:] == 2).all()
    doc = _classes(tmp_path)
    assert len(doc["classes"]) == 3 and doc["threshold"] is None


def test_one_class_scene(tmp_path: Path) -> None:
    """``class_names=["water"]``: cosine 0.3 / -0.2 / 0.05 per stripe, tau from bundle_info."""
    tau = 25.0
    table = {200: [0.3 * tau], 100: [-0.2 * tau], 10: [0.05 * tau]}
    _run(tmp_path, table, ["water"], bundle_info={"logit_scale": tau})
    labels = _labels(tmp_path)
    assert (labels[:, :48] == 0).all() and (labels[:, 48:72] == 1).all() and (labels[:, 72:] == 0).all()
    doc = _classes(tmp_path)
    assert [r["name"] for r in doc["classes"]] == ["water", UNCLASSIFIED]
    assert [r["fraction"] for r in doc["classes"]] == pytest.approx([0.75, 0.25])
    assert doc["threshold"]["min_score"] == ONE_CLASS_MIN_SCORE and doc["threshold"]["logit_scale"] == tau
    with rasterio.open(tmp_path / "out" / out.SCORES) as ds:
        band = ds.read(1)
    assert (int(band[0, 0]), int(band[0, 60]), int(band[0, 90])) == (166, 102, 134)  # (1 + cos) / 2 * 255


def test_one_class_scene_custom_threshold(tmp_path: Path) -> None:
    tau = DEFAULT_LOGIT_SCALE  # no bundle_info: the default tau
    _run(tmp_path, {200: [0.3 * tau], 100: [-0.2 * tau], 10: [0.05 * tau]}, ["water"], min_score=0.6)
    labels = _labels(tmp_path)
    assert (labels[:, :48] == 0).all() and (labels[:, 48:] == 1).all()
    assert [r["pixels"] for r in _classes(tmp_path)["classes"]] == [48 * H, 48 * H]


# ----------------------------------------------------------------------------- Segmenter
class _CosImage:
    """Image 'graph': logits = tau * cos, with cos = clip(normalised SAR / 4, -1, 1) for class 0 and
    its negative for class 1 (when there is one)."""

    name, input_names, output_names = "image", ["sar", "text_emb"], ["logits"]
    tau = 30.0

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cos = np.clip(feeds["sar"] / 4.0, -1, 1)
        k = feeds["text_emb"].shape[0]
        return {"logits": (self.tau * np.concatenate([cos, -cos][:k], axis=1)).astype(np.float32)}


def _segmenter(tmp_path: Path, **kw: Any) -> Segmenter:
    b = Bundle.load(_make_bundle(tmp_path / "b", logit_scale=_CosImage.tau))
    return Segmenter(b, Sessions(text=_Text(), image=_CosImage(), backend="onnxruntime", precision="fp32"),
                     cache_dir=tmp_path / "c", **kw)


def test_segmenter_predict_threshold_and_one_class(tmp_path: Path) -> None:
    # normalised SAR (x + 12) / 5: -12 dB -> 0 (cos 0), -2 dB -> 2 (cos 0.5), -22 dB -> -2 (cos -0.5)
    sar = np.array([[[-12.0, -2.0, -22.0, -11.5]] * 4], np.float32)
    seg = _segmenter(tmp_path, min_score=0.9)
    assert seg.info()["logit_scale"] == _CosImage.tau
    seg.set_vocabulary("water,land")
    labels, probs = seg.predict(None, sar)
    p_best = probs.max(0)[0]
    assert p_best[1] > 0.9 and p_best[2] > 0.9 and p_best[0] == pytest.approx(0.5) and p_best[3] < 0.9
    assert labels[0].tolist() == [2, 0, 1, 2]  # below 0.9: "unclassified" (id 2)
    seg.set_vocabulary("water")  # one class: the mapped cosine, the constructor's threshold 0.9
    labels, probs = seg.predict(None, sar)
    np.testing.assert_allclose(probs[0, 0], [0.5, 0.75, 0.25, 0.5125], atol=1e-5)
    assert labels[0].tolist() == [1, 1, 1, 1]
    seg.min_score = None  # the one-class default 0.5: cosine >= 0
    assert seg.predict(None, sar)[0][0].tolist() == [0, 0, 1, 0]
    with pytest.raises(ValueError, match="--threshold"):
        _segmenter(tmp_path / "x", min_score=-0.1)


def test_thresholded_run_resumes_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The "unclassified" id, its statistics and the colour table survive a checkpoint/resume."""
    from rsvl_runtime import resume

    from ._runtime_rasters import LinearModel
    from .test_faults_outputs import _dead_pid, _pixels_hash
    from .test_faults_outputs import _run as _run5
    from .test_faults_outputs import _scene as _scene5

    monkeypatch.setattr(resume, "CHECKPOINT_S", 0.0)  # a checkpoint after every strip
    opt, sar = _scene5(tmp_path / "in", 300, 100)
    _run5(LinearModel(5), opt, sar, tmp_path / "full", min_score=0.5, batch=1)
    with pytest.raises(KeyboardInterrupt):
        _run5(LinearModel(5, fail_after=7), opt, sar, tmp_path / "out", min_score=0.5, batch=1)
    (tmp,) = [p for p in tmp_path.iterdir() if p.name.startswith(".out.rsvl-tmp-")]
    tmp.rename(tmp_path / f".out.rsvl-tmp-{_dead_pid()}")  # as if the run had been killed
    res = _run5(LinearModel(5), opt, sar, tmp_path / "out", min_score=0.5, batch=1)
    assert res.timings["resumed_at_row"] > 0
    for name in (out.LABELS, out.SCORES):
        assert _pixels_hash(tmp_path / "out" / name) == _pixels_hash(tmp_path / "full" / name)
    a = json.loads((tmp_path / "out" / out.CLASSES).read_text())
    assert a == json.loads((tmp_path / "full" / out.CLASSES).read_text())
    assert a["classes"][5]["name"] == UNCLASSIFIED and a["classes"][5]["pixels"] > 0
    with rasterio.open(tmp_path / "out" / out.LABELS) as ds:
        assert ds.colormap(1)[5] == (*UNCLASSIFIED_COLOR, 255) and ds.read(1).max() == 5
