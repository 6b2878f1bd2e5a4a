"""Evaluation metrics (numpy): semantic segmentation confusion matrix and referring metrics.

All values are fractions in [0, 1] (multiply by 100 for the percentages papers report).

Semantic (:class:`ConfusionMatrix`): OA, Cohen's Kappa, per-class IoU / F1 / precision /
recall and their means. Rows of the matrix are the reference (target) class, columns the
predicted class. Conventions:

- pixels whose target is ``ignore_index`` are skipped (whatever was predicted there);
- a class that occurs in neither the target nor the prediction has per-class values NaN
  and is excluded from the means (``mIoU`` etc. average the classes that occur);
- a class that occurs but makes a ratio 0/0 (e.g. precision of a class never predicted
  but present in the target) gets 0 for that ratio and stays in the mean.

Referring (:class:`ReferringMetrics`), as in LAVT / RRSIS-D evaluation: per image
``IoU = I / U`` (0 when ``U = 0``, i.e. both masks empty), ``Pr@t`` = fraction of images
with ``IoU >= t`` (as LAVT) for t in 0.5..0.9, ``mIoU`` = mean per-image IoU,
``oIoU`` = cumulative I / cumulative U over the whole set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ConfusionMatrix", "ReferringMetrics"]


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


class ConfusionMatrix:
    """Accumulates a ``K x K`` confusion matrix (rows: target, columns: prediction).

    Args:
        num_classes: number of classes ``K``; ids must be in ``0..K-1``.
        ignore_index: target value that is skipped.
        class_names: optional names, used as keys of the ``per_class`` dict of :meth:`compute`.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names for num_classes={num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def reset(self) -> None:
        """Zero the matrix."""
        self.matrix[:] = 0

    def update(self, pred: Any, target: Any) -> None:
        """Add a prediction / target pair of equal shape (numpy arrays or torch tensors of ids).

        Raises ValueError for shape mismatches and for ids outside ``0..K-1`` on
        non-ignored pixels.
        """
        p = _as_numpy(pred).ravel()
        t = _as_numpy(target).ravel()
        if _as_numpy(pred).shape != _as_numpy(target).shape:
            raise ValueError(f"pred {_as_numpy(pred).shape} and target {_as_numpy(target).shape} differ in shape")
        keep = t != self.ignore_index
        p, t = p[keep].astype(np.int64), t[keep].astype(np.int64)
        k = self.num_classes
        if p.size and (p.min() < 0 or p.max() >= k or t.min() < 0 or t.max() >= k):
            raise ValueError(
                f"class ids must be in 0..{k - 1} (or {self.ignore_index} in the target); got pred in "
                f"[{p.min()}, {p.max()}], target in [{t.min()}, {t.max()}]"
            )
        self.matrix += np.bincount(t * k + p, minlength=k * k).reshape(k, k)

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix (e.g. from another worker)."""
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge confusion matrices of different sizes")
        self.matrix += other.matrix

    def compute(self) -> dict[str, Any]:
        """Metrics as a dict.

        Keys: ``OA``, ``Kappa``, ``mIoU``, ``mF1``, ``mPrecision``, ``mRecall`` (floats),
        ``IoU``, ``F1``, ``Precision``, ``Recall`` (lists of K floats, NaN for absent
        classes), ``present`` (list of bools), ``per_class`` ({name: {IoU, F1, Precision,
        Recall}}), ``confusion_matrix`` (list of lists) and ``total`` (pixel count).
        """
        m = self.matrix.astype(np.float64)
        total = m.sum()
        tp = np.diag(m)
        gt = m.sum(axis=1)
        pr = m.sum(axis=0)
        fp, fn = pr - tp, gt - tp
        present = (gt + pr) > 0

        def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
            out = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
            out[~present] = np.nan
            return out

        iou = ratio(tp, tp + fp + fn)
        prec = ratio(tp, tp + fp)
        rec = ratio(tp, tp + fn)
        f1 = ratio(2 * tp, 2 * tp + fp + fn)
        if total > 0:
            po = tp.sum() / total
            pe = float((gt * pr).sum()) / total**2
            kappa = (po - pe) / (1 - pe) if pe < 1 else (1.0 if po == 1 else 0.0)
        else:
            po = kappa = float("nan")

        def mean(x: np.ndarray) -> float:
            return float(np.nanmean(x)) if present.any() else float("nan")

        names = self.class_names
        return {
            "OA": float(po),
            "Kappa": float(kappa),
            "mIoU": mean(iou),
            "mF1": mean(f1),
            "mPrecision": mean(prec),
            "mRecall": mean(rec),
            "IoU": iou.tolist(),
            "F1": f1.tolist(),
            "Precision": prec.tolist(),
            "Recall": rec.tolist(),
            "present": present.tolist(),
            "per_class": {
                names[i]: {"IoU": float(iou[i]), "F1": float(f1[i]), "Precision": float(prec[i]), "Recall": float(rec[i])}
                for i in range(self.num_classes)
            },
            "confusion_matrix": self.matrix.tolist(),
            "total": int(total),
        }


class ReferringMetrics:
    """Accumulates referring-segmentation results image by image.

    Args:
        thresholds: IoU thresholds for ``Pr@t`` (default 0.5, 0.6, 0.7, 0.8, 0.9).
    """

    def __init__(self, thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9)) -> None:
        self.thresholds = tuple(float(t) for t in thresholds)
        self.reset()

    def reset(self) -> None:
        """Forget all images."""
        self.ious: list[float] = []
        self.cum_i = 0
        self.cum_u = 0

    def update(self, pred: Any, target: Any) -> None:
        """Add one mask ``[H, W]`` or a batch ``[B, H, W]`` (bool or {0, 1}; non-zero = object)."""
        p = _as_numpy(pred).astype(bool)
        t = _as_numpy(target).astype(bool)
        if p.shape != t.shape:
            raise ValueError(f"pred {p.shape} and target {t.shape} differ in shape")
        if p.ndim == 2:
            p, t = p[None], t[None]
        if p.ndim != 3:
            raise ValueError(f"expected masks [H, W] or [B, H, W], got {p.shape}")
        inter = (p & t).reshape(len(p), -1).sum(axis=1)
        union = (p | t).reshape(len(p), -1).sum(axis=1)
        for i, u in zip(inter.tolist(), union.tolist()):
            self.ious.append(i / u if u > 0 else 0.0)
        self.cum_i += int(inter.sum())
        self.cum_u += int(union.sum())

    def compute(self) -> dict[str, float]:
        """``{"Pr@0.5": .., ..., "Pr@0.9": .., "mIoU": .., "oIoU": .., "n": images}``."""
        ious = np.asarray(self.ious, dtype=np.float64)
        out: dict[str, float] = {}
        for t in self.thresholds:
            out[f"Pr@{t:g}"] = float((ious >= t).mean()) if ious.size else float("nan")
        out["mIoU"] = float(ious.mean()) if ious.size else float("nan")
        out["oIoU"] = self.cum_i / self.cum_u if self.cum_u else float("nan")
        out["n"] = int(ious.size)
        return out
