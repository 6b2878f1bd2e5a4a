"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rsvl_train.metrics import ConfusionMatrix, ReferringMetrics

# rows: target, columns: prediction
CM = np.array([[50, 3, 2], [5, 30, 5], [0, 5, 100]])


def _pairs(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = [], []
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            t += [i] * int(cm[i, j])
            p += [j] * int(cm[i, j])
    return np.array(p), np.array(t)


def test_confusion_matrix_by_hand() -> None:
    pred, target = _pairs(CM)
    cm = ConfusionMatrix(3, class_names=["a", "b", "c"])
    cm.update(pred[:77], target[:77])  # two updates accumulate
    cm.update(pred[77:], target[77:])
    np.testing.assert_array_equal(cm.matrix, CM)
    r = cm.compute()
    assert r["OA"] == pytest.approx(180 / 200)
    pe = (55 * 55 + 40 * 38 + 105 * 107) / 200**2  # 0.3945
    assert r["Kappa"] == pytest.approx((0.9 - pe) / (1 - pe))  # 0.83485
    assert r["Kappa"] == pytest.approx(0.834847, abs=1e-6)
    assert r["IoU"] == pytest.approx([50 / 60, 30 / 48, 100 / 112])
    assert r["mIoU"] == pytest.approx((50 / 60 + 30 / 48 + 100 / 112) / 3)
    assert r["Precision"] == pytest.approx([50 / 55, 30 / 38, 100 / 107])
    assert r["Recall"] == pytest.approx([50 / 55, 30 / 40, 100 / 105])
    assert r["F1"] == pytest.approx([100 / 110, 60 / 78, 200 / 212])
    assert r["mF1"] == pytest.approx(np.mean([100 / 110, 60 / 78, 200 / 212]))
    assert r["per_class"]["b"]["IoU"] == pytest.approx(0.625)
    assert r["total"] == 200


def test_ignore_and_absent_classes() -> None:
    cm = ConfusionMatrix(4, ignore_index=255)
    target = np.array([[0, 0, 1, 255], [1, 1, 255, 255]])
    pred = np.array([[0, 1, 1, 3], [1, 1, 2, 0]])  # predictions on ignored pixels do not count
    cm.update(pred, target)
    r = cm.compute()
    assert r["total"] == 5
    assert r["present"] == [True, True, False, False]
    assert math.isnan(r["IoU"][2]) and math.isnan(r["IoU"][3])
    assert r["IoU"][:2] == pytest.approx([1 / 2, 3 / 4])
    assert r["mIoU"] == pytest.approx((0.5 + 0.75) / 2)  # absent classes excluded
    assert r["OA"] == pytest.approx(4 / 5)


def test_class_in_target_never_predicted_counts_as_zero() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 0, 0]), np.array([0, 0, 1]))
    r = cm.compute()
    assert r["Precision"][1] == 0.0 and r["Recall"][1] == 0.0 and r["IoU"][1] == 0.0
    assert r["mIoU"] == pytest.approx((2 / 3 + 0) / 2)
    assert r["Kappa"] == pytest.approx(0.0)


def test_perfect_prediction_and_torch_input() -> None:
    torch = pytest.importorskip("torch")
    t = torch.tensor([[0, 1], [2, 2]])
    cm = ConfusionMatrix(3)
    cm.update(t, t)
    r = cm.compute()
    assert r["OA"] == 1.0 and r["Kappa"] == pytest.approx(1.0) and r["mIoU"] == 1.0


def test_confusion_matrix_errors() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="0..2"):
        cm.update(np.array([0, 5]), np.array([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros(3, int), np.zeros(4, int))


def test_referring_metrics_by_hand() -> None:
    def mask(idx: list[int]) -> np.ndarray:
        m = np.zeros(25, bool)
        m[idx] = True
        return m.reshape(5, 5)

    rm = ReferringMetrics()
    rm.update(mask(list(range(8))), mask(list(range(10))))  # I=8, U=10 -> 0.8
    rm.update(mask(list(range(10, 20))), mask(list(range(10))))  # I=0, U=20 -> 0
    rm.update(np.stack([mask([]), mask([1, 2, 3, 4, 5])]), np.stack([mask([]), mask([1, 2, 3, 4, 5])]))
    r = rm.compute()  # IoUs 0.8, 0, 0 (both empty), 1
    assert r["n"] == 4
    assert r["mIoU"] == pytest.approx(1.8 / 4)
    assert r["oIoU"] == pytest.approx(13 / 35)
    assert r["Pr@0.5"] == 0.5 and r["Pr@0.7"] == 0.5 and r["Pr@0.8"] == 0.5 and r["Pr@0.9"] == 0.25
    rm.reset()
    assert rm.compute()["n"] == 0
