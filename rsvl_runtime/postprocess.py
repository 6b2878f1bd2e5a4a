"""Logits to scores, labels and the "unclassified" threshold (pure numpy): the one
:func:`softmax` of the runtime and the one definition of a class score (:class:`Scoring`).

Scores (what ``scores.tif`` stores x 255 and what ``min_score`` is compared with):

- semantic, K >= 2: the softmax probability of each class;
- semantic, K == 1 (one class, e.g. ``--vocab water``): a softmax over one class is always 1,
  so the score is the cosine between pixel and class embedding mapped to 0..1,
  ``(1 + logit / logit_scale) / 2`` — the image graph outputs ``logits = tau * cos(z, t_k)``
  (``docs/design.md``) and ``logit_scale`` is that ``tau`` (the manifest's ``logit_scale``,
  else :data:`DEFAULT_LOGIT_SCALE`, the CLIP/TSMNet initial value 1/0.07);
- referring: softmax over (background, target), or the sigmoid of a single target logit;
  the threshold does not apply.

Threshold: a pixel whose best class score is below the effective ``min_score`` is labelled
:data:`UNCLASSIFIED` with id K (the first id after the vocabulary, so a thresholded vocabulary
has at most 254 classes). The default (``min_score=None``) is no threshold for K >= 2 (every
valid pixel gets its most likely class, as before) and :data:`ONE_CLASS_MIN_SCORE` (0.5,
i.e. cosine > 0) for K == 1, where a label without a threshold would mean nothing.

:func:`label_array` serves the in-memory API (:meth:`rsvl_runtime.segmenter.Segmenter.predict`:
float scores, uint16 labels above 255 ids); :func:`labels_and_scores` serves the tiled scene
runner (:mod:`rsvl_runtime.sink`: uint8 labels and scores as written to labels.tif/scores.tif,
:mod:`rsvl_runtime.outputs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .outputs import LABEL_NODATA, SCORE_NODATA

#: Label of nodata pixels in uint16 labels (more than 255 ids; uint8 labels use 255, as
#: labels.tif does).
LABEL_NODATA_U16 = 65535
#: Name of the class of pixels below the threshold (id K).
UNCLASSIFIED = "unclassified"
#: The logit scale ``tau`` assumed when the bundle records none (CLIP's and TSMNet's initial 1/0.07).
DEFAULT_LOGIT_SCALE = 1.0 / 0.07
#: Default threshold of a one-class vocabulary: score 0.5 = cosine 0 (the pixel embedding points
#: towards the class rather than away from it).
ONE_CLASS_MIN_SCORE = 0.5


def softmax(logits: np.ndarray, axis: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """Numerically stable softmax along ``axis``: a new array of ``logits``' float dtype, or
    ``out`` (which may be ``logits`` itself: computed in place)."""
    z = np.subtract(logits, logits.max(axis=axis, keepdims=True), out=out)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


def argmax_classes(values: np.ndarray, maxima: np.ndarray | None = None) -> np.ndarray:
    """``values.argmax(axis=0)`` (the first largest on ties) as uint8, for ``[K, ...]`` with
    K <= 255: K vectorised compare passes over the contiguous class planes, ~10x faster than
    numpy's reduction across the planes (measured: 0.3 vs 3.7 ms for ``[7, 14, 10000]``).
    ``maxima``: ``values.max(axis=0)`` when the caller has it. NaN anywhere falls back to numpy."""
    k = values.shape[0]
    if k > 255:
        raise ValueError(f"argmax_classes needs at most 255 classes, got {k}")
    m = values.max(axis=0) if maxima is None else maxima
    if np.isnan(m).any():
        return values.argmax(axis=0).astype(np.uint8)
    labels = np.full(m.shape, k - 1, np.uint8)
    if k > 1:
        eq = np.empty(m.shape, bool)
        step = np.empty(m.shape, np.uint8)
        for c in range(k - 2, -1, -1):  # descending, so the first maximum is the last one kept
            np.equal(values[c], m, out=eq)
            np.subtract(labels, c, out=step)  # labels = c where eq: labels -= (labels - c) * eq
            step *= eq
            labels -= step
    return labels


def check_min_score(min_score: float | None) -> None:
    """ValueError unless ``min_score`` is None or a number in 0..1."""
    if min_score is not None and not (isinstance(min_score, (int, float)) and 0.0 <= float(min_score) <= 1.0):
        raise ValueError(f"min_score (--threshold) is {min_score!r}: give a class score between 0 and 1, "
                         "e.g. --threshold 0.4 (pixels whose best score is below it become 'unclassified')")


@dataclass(frozen=True)
class Scoring:
    """How the logits of a run become scores and labels (see the module docstring).

    ``n_classes``: K. ``min_score``: the effective threshold (None: none). ``one_class``: a
    semantic K == 1 run (cosine scores). ``logit_scale``: ``tau`` of the image graph.
    """

    n_classes: int
    min_score: float | None = None
    one_class: bool = False
    logit_scale: float = DEFAULT_LOGIT_SCALE

    @classmethod
    def of(cls, task: str, n_classes: int, min_score: float | None = None,
           logit_scale: float | None = None) -> Scoring:
        """The scoring of a run: the threshold applies to the semantic task only; K == 1
        defaults it to :data:`ONE_CLASS_MIN_SCORE`."""
        check_min_score(min_score)
        if task != "semantic":
            return cls(n_classes)
        one = n_classes == 1
        thr = min_score if min_score is not None else (ONE_CLASS_MIN_SCORE if one else None)
        scale = float(logit_scale) if logit_scale else DEFAULT_LOGIT_SCALE
        return cls(n_classes, None if thr is None else float(thr), one, scale)

    @classmethod
    def of_options(cls, options: Any) -> Scoring:
        """The scoring of :class:`~rsvl_runtime.options.SceneOptions` (``logit_scale`` from
        its ``bundle_info``, recorded there by :class:`~rsvl_runtime.segmenter.Segmenter`)."""
        info = options.bundle_info or {}
        return cls.of(options.task, len(options.class_names), options.min_score, info.get("logit_scale"))

    def describe(self) -> dict[str, Any] | None:
        """``{"min_score", "unclassified_id", "score"}`` for classes.json (None: no threshold)."""
        if self.min_score is None:
            return None
        score = "cosine (1 + logit / logit_scale) / 2" if self.one_class else "softmax probability"
        return {"min_score": self.min_score, "unclassified_id": self.n_classes, "score": score,
                **({"logit_scale": self.logit_scale} if self.one_class else {})}

    @property
    def unclassified(self) -> int | None:
        """The id of "unclassified" (K) when a threshold applies, else None."""
        return self.n_classes if self.min_score is not None else None

    @property
    def n_ids(self) -> int:
        """Label ids a run can produce besides nodata: K, plus one for "unclassified"."""
        return self.n_classes + (self.unclassified is not None)

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """Float scores ``[K, ...]`` of logits ``[K, ...]`` (a new array)."""
        if self.one_class:
            return np.clip((1.0 + logits / self.logit_scale) * 0.5, 0.0, 1.0).astype(logits.dtype, copy=False)
        return softmax(logits)

    def labels(self, scores: np.ndarray, dtype: Any = np.uint8) -> np.ndarray:
        """Best class per pixel of ``scores [K, ...]``; "unclassified" (K) below the threshold."""
        labels = (argmax_classes(scores) if scores.shape[0] <= 255 and np.dtype(dtype) == np.uint8
                  else scores.argmax(axis=0)).astype(dtype, copy=False)
        if self.min_score is not None:
            labels[scores.max(axis=0) < self.min_score] = self.n_classes
        return labels


def label_array(probs: np.ndarray, valid: np.ndarray | None, min_score: float | None = None) -> np.ndarray:
    """Best-class labels of scores ``probs [K, H, W]``: uint8 (nodata 255) when the ids fit
    below 255, else uint16 (nodata 65535), so ids never wrap; below ``min_score`` the label is
    K ("unclassified"); ``valid`` False -> nodata, scores 0."""
    k = probs.shape[0]
    scoring = Scoring(k, None if min_score is None else float(min_score))
    fits = scoring.n_ids <= LABEL_NODATA
    dtype, nodata = (np.uint8, LABEL_NODATA) if fits else (np.uint16, LABEL_NODATA_U16)
    labels = scoring.labels(probs, dtype)
    if valid is not None and not valid.all():
        labels[~valid] = nodata
        probs[:, ~valid] = 0.0
    return labels


def labels_and_scores(logits: np.ndarray, valid: np.ndarray, with_scores: bool = True,
                      scoring: Scoring | None = None, inplace: bool = False,
                      out: tuple[np.ndarray, np.ndarray | None] | None = None
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """Blended logits ``[K, n, W]`` -> labels uint8 ``[n, W]`` (255 = nodata) and scores uint8
    ``[K, n, W]`` (score * 255 clipped to 1..255, 0 = nodata). ``scoring`` None: the referring
    rules (``K == 1``: a single target logit, label 1 where it is > 0; else softmax/argmax).
    ``inplace``: ``logits`` (float32, the caller's own array) is overwritten by the scores
    instead of copied — the scene runner's path, one pass fewer and no temporary. ``out``:
    ``(labels [n, W], scores [K, n, W] or None)`` uint8 arrays (views of the row writers' block
    buffers) that receive the results, which are then returned; the scores are cast straight
    into theirs, with no uint8 temporary and no copy into the writer afterwards."""
    if scoring is None and logits.shape[0] == 1:
        labels = (logits[0] > 0).astype(np.uint8)
        probs = 1.0 / (1.0 + np.exp(-logits)) if with_scores else None
    else:
        scoring = scoring or Scoring(logits.shape[0])
        need_scores = with_scores or scoring.min_score is not None or scoring.one_class
        if scoring.one_class:
            labels = np.zeros(logits.shape[1:], np.uint8)
            probs = scoring.scores(logits) if need_scores else None
        else:
            maxima = logits.max(axis=0)
            labels = argmax_classes(logits, maxima)  # the argmax of the logits: no softmax rounding
            probs = None
            if need_scores:
                probs = np.subtract(logits, maxima, out=logits if inplace else None)
                np.exp(probs, out=probs)
                probs /= probs.sum(axis=0)
        if scoring.min_score is not None:
            assert probs is not None
            labels[probs.max(axis=0) < scoring.min_score] = scoring.n_classes
    all_valid = bool(valid.all())
    if not all_valid:
        labels[~valid] = LABEL_NODATA
    scores = None
    if probs is not None and with_scores:
        probs *= np.float32(255.0)
        np.rint(probs, out=probs)
        if out is not None and out[1] is not None:
            scores = out[1]
            np.copyto(scores, probs, casting="unsafe")  # the same cast as astype
        else:
            scores = probs.astype(np.uint8)  # probs <= 1: at most 255
        # at least 1: against an array of ones (numpy 2.4's maximum with a scalar has no SIMD
        # loop: 0.48 vs 0.03 ms for 7 x 14 x 10000)
        np.maximum(scores, np.ones(scores.shape, np.uint8), out=scores)
        if not all_valid:
            scores[:, ~valid] = SCORE_NODATA
    if out is not None:
        np.copyto(out[0], labels)
        labels = out[0]
    return labels, scores
