"""Logits to probabilities, labels and scores (pure numpy): the one :func:`softmax` of the runtime.

:func:`label_array` serves the in-memory API (:meth:`rsvl_runtime.segmenter.Segmenter.predict`:
float probabilities, uint16 labels above 255 classes); :func:`labels_and_scores` serves the
tiled scene runner (:mod:`rsvl_runtime.sink`: uint8 labels and scores as written to
labels.tif/scores.tif, :mod:`rsvl_runtime.outputs`).
"""

from __future__ import annotations

import numpy as np

from .outputs import LABEL_NODATA, SCORE_NODATA

#: Label of nodata pixels in uint16 labels (more than 255 classes; uint8 labels use 255, as
#: labels.tif does).
LABEL_NODATA_U16 = 65535


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (a new array of ``logits``' float dtype)."""
    z = logits - logits.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


def label_array(probs: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """argmax labels of ``probs [K, H, W]``: uint8 (nodata 255) for K <= 255 classes, else
    uint16 (nodata 65535), so class ids never wrap; ``valid`` False -> nodata, probabilities 0."""
    k = probs.shape[0]
    dtype, nodata = (np.uint8, LABEL_NODATA) if k <= LABEL_NODATA else (np.uint16, LABEL_NODATA_U16)
    labels = probs.argmax(0).astype(dtype)
    if valid is not None and not valid.all():
        labels[~valid] = nodata
        probs[:, ~valid] = 0.0
    return labels


def labels_and_scores(logits: np.ndarray, valid: np.ndarray,
                      with_scores: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Blended logits ``[K, n, W]`` -> labels uint8 ``[n, W]`` (255 = nodata) and scores uint8
    ``[K, n, W]`` (probability * 255 clipped to 1..255, 0 = nodata). ``K == 1``: a single
    target logit, label 1 where it is > 0."""
    if logits.shape[0] == 1:
        labels = (logits[0] > 0).astype(np.uint8)
        probs = 1.0 / (1.0 + np.exp(-logits)) if with_scores else None
    else:
        labels = logits.argmax(axis=0).astype(np.uint8)
        probs = softmax(logits) if with_scores else None
    labels[~valid] = LABEL_NODATA
    scores = None
    if probs is not None:
        scores = np.clip(np.rint(probs * 255.0), 1, 255).astype(np.uint8)
        scores[:, ~valid] = SCORE_NODATA
    return labels, scores
