"""Parity between a reference (PyTorch eager, FP32) and a candidate (ONNX/TensorRT, FP32/FP16).

Numbers against tolerances, never "it ran". Pure numpy, so the runtime and the benchmarks can
reuse it (ONNX Runtime is imported only inside :func:`ort_session`).

* :func:`compare` (a :class:`Comparison`; :func:`compare_metrics` for the bare dict) measures max-abs, max-abs relative to the reference's range, flattened
  cosine, mean per-vector cosine (embeddings: one vector per row) and argmax agreement over
  the class axis (axis 1 of logits ``[B, K, H, W]``).
* :class:`Gate` says which of those must hold for a (graph, precision) pair;
  :data:`GATES` holds ours: FP32 logits max_abs_rel <= 1e-4, text embeddings cosine >= 0.9999,
  FP16 cosine >= 0.999 and argmax agreement >= 0.995.
* :class:`ParityReport` collects cases (graph, precision, batch, vocabulary size, output,
  metrics, pass/fail, the failed gate), round-trips through JSON (it is ``parity.json`` in the
  bundle), names what diverged in :meth:`ParityReport.failures` and raises :class:`ParityError`
  from :meth:`ParityReport.raise_on_failure` unless allowed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Kinds of outputs :func:`compare` understands (and accepted aliases).
KINDS = ("logits", "embeddings", "generic")
_KIND_ALIASES = {"embedding": "embeddings", "emb": "embeddings", "logit": "logits", "mask": "logits"}


def _kind(kind: str) -> str:
    k = _KIND_ALIASES.get(kind, kind)
    if k not in KINDS:
        raise ValueError(f"kind={kind!r}; expected one of {KINDS} (or {sorted(_KIND_ALIASES)})")
    return k


class ParityError(AssertionError):
    """A candidate graph's outputs diverge from the reference beyond its gate.

    (An ``AssertionError`` subclass so that pytest shows it as a failed check.)"""


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def compare_metrics(reference: np.ndarray, candidate: np.ndarray, kind: str = "generic",
                    class_axis: int = 1) -> dict[str, float]:
    """Metrics of ``candidate`` against ``reference`` (same shape), as a plain dict.

    Keys: ``max_abs``, ``max_abs_rel_to_range`` (max-abs / (max - min of the
    reference)), ``cosine`` (flattened), ``mean_vector_cosine`` / ``min_vector_cosine``
    (``kind="embeddings"``: rows of the last axis) and ``argmax_agreement`` (``kind="logits"``:
    fraction of positions whose argmax over ``class_axis`` agrees). Non-finite candidate
    values are counted in ``nonfinite`` and make every metric fail its gate.
    """
    kind = _kind(kind)
    ref, cand = np.asarray(reference), np.asarray(candidate)
    if ref.shape != cand.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs candidate {cand.shape}")
    r, c = _f64(ref), _f64(cand)
    nonfinite = int(np.size(c) - np.count_nonzero(np.isfinite(c)))
    out: dict[str, float] = {"nonfinite": float(nonfinite), "size": float(r.size)}
    if r.size == 0:
        out.update(max_abs=0.0, max_abs_rel_to_range=0.0, cosine=1.0)
        return out
    if nonfinite:
        out.update(max_abs=math.inf, max_abs_rel_to_range=math.inf, cosine=0.0)
        if kind == "embeddings":
            out.update(mean_vector_cosine=0.0, min_vector_cosine=0.0)
        if kind == "logits":
            out["argmax_agreement"] = 0.0
        return out
    diff = np.abs(r - c)
    max_abs = float(diff.max())
    rng = float(r.max() - r.min())
    out["max_abs"] = max_abs
    out["ref_range"] = rng
    out["max_abs_rel_to_range"] = max_abs / rng if rng > 0 else (0.0 if max_abs == 0 else math.inf)
    out["cosine"] = _cosine(r.ravel(), c.ravel())
    if kind == "embeddings":
        rv = r.reshape(-1, r.shape[-1]) if r.ndim > 1 else r.reshape(1, -1)
        cv = c.reshape(-1, c.shape[-1]) if c.ndim > 1 else c.reshape(1, -1)
        cos = np.array([_cosine(a, b) for a, b in zip(rv, cv)])
        out["mean_vector_cosine"] = float(cos.mean())
        out["min_vector_cosine"] = float(cos.min())
    if kind == "logits":
        if r.ndim <= class_axis:
            raise ValueError(f"logits of shape {r.shape} have no class axis {class_axis}")
        if r.shape[class_axis] > 1:
            agree = np.argmax(r, axis=class_axis) == np.argmax(c, axis=class_axis)
        else:  # one class (referring masks): agreement of the sign, i.e. of the thresholded mask
            agree = (r > 0) == (c > 0)
        out["argmax_agreement"] = float(np.mean(agree))
        if class_axis > 0 and agree.ndim >= 2:  # axis 0 holds tiles: the per-tile spread
            per_tile = agree.reshape(agree.shape[0], -1).mean(axis=1)
            out["tiles"] = float(per_tile.size)
            out["argmax_tile_min"] = float(per_tile.min())
            out["argmax_tile_sd"] = float(per_tile.std(ddof=1)) if per_tile.size > 1 else 0.0
    return out


def t_quantile(confidence: float, dof: int) -> float:
    """Student's t quantile at ``confidence`` (one-sided) for ``dof`` degrees of freedom, by the
    Cornish-Fisher expansion about the normal quantile (within 0.05 % of the exact value at 95 %
    for dof >= 6, 0.3 % at dof = 3; the standard library only)."""
    if dof < 1:
        raise ValueError(f"dof={dof}: needs at least 2 samples")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(confidence)
    v = float(dof)
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3))


def argmax_lower_bound(metrics: Mapping[str, float], confidence: float) -> float | None:
    """The one-sided lower confidence bound of the argmax agreement, tiles as the sampling unit
    (the pixels of a tile are not independent draws): ``mean - t * sd / sqrt(n)`` over the
    ``tiles`` of :func:`compare_metrics`; None with fewer than two tiles."""
    n = int(metrics.get("tiles", 0))
    if n < 2 or "argmax_agreement" not in metrics:
        return None
    sd = float(metrics.get("argmax_tile_sd", 0.0))
    return float(metrics["argmax_agreement"]) - t_quantile(confidence, n - 1) * sd / math.sqrt(n)


@dataclass
class Comparison:
    """The result of :func:`compare`: the output kind, its metrics and, when a precision was
    given, the verdict of that precision's gate. Indexable like the metrics dict
    (``c["max_abs"]``)."""

    kind: str
    metrics: dict[str, float]
    precision: str | None = None
    gate: str | None = None
    failed_checks: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]

    def get(self, key: str, default: float | None = None) -> float | None:
        return self.metrics.get(key, default)

    @property
    def passed(self) -> bool | None:
        """Gate verdict (None when no precision/gate was given)."""
        return None if self.gate is None else not self.failed_checks

    def judge(self, precision: str, gate: Gate | None = None) -> Comparison:
        """Evaluate ``gate`` (default: the gate of ``precision`` and this kind) in place."""
        g = gate or gate_for(precision, self.kind)
        self.precision, self.gate, self.failed_checks = precision, g.name, g.check(self.metrics)
        return self


def compare(reference: np.ndarray, candidate: np.ndarray, kind: str = "generic",
            precision: str | None = None, gate: Gate | None = None, class_axis: int = 1) -> Comparison:
    """Compare ``candidate`` with ``reference``: max_abs, max_abs_rel_to_range, cosine,
    per-vector cosine (embeddings), argmax agreement over ``class_axis`` (logits).

    With ``precision`` ("fp32" | "fp16") or an explicit ``gate`` the verdict is filled in
    (``.passed``, ``.failed_checks``). See :func:`compare_metrics` for the metric definitions."""
    c = Comparison(kind=_kind(kind), metrics=compare_metrics(reference, candidate, kind, class_axis))
    if precision is not None or gate is not None:
        c.judge(precision or "fp32", gate)
    return c


@dataclass(frozen=True)
class Gate:
    """Thresholds a case must meet. ``None`` = not checked.

    ``max_abs_rel`` and ``max_abs`` are upper bounds; the others lower bounds. With
    ``argmax_confidence`` the argmax agreement must hold at that one-sided confidence over the
    tiles, not only on the sample (:func:`argmax_lower_bound`; it needs two tiles or more): a
    candidate whose measured agreement sits at the threshold is as likely as not below it on
    other tiles of the same scene."""

    name: str
    max_abs_rel: float | None = None
    max_abs: float | None = None
    cosine: float | None = None
    mean_vector_cosine: float | None = None
    argmax_agreement: float | None = None
    argmax_confidence: float | None = None

    def check(self, metrics: dict[str, float]) -> list[str]:
        """Human-readable reasons this gate fails on ``metrics`` (empty list = pass)."""
        fails: list[str] = []
        if metrics.get("nonfinite", 0):
            fails.append(f"{int(metrics['nonfinite'])} non-finite values in the candidate")
        upper = {"max_abs_rel_to_range": self.max_abs_rel, "max_abs": self.max_abs}
        lower = {"cosine": self.cosine, "mean_vector_cosine": self.mean_vector_cosine,
                 "argmax_agreement": self.argmax_agreement}
        for key, lim in upper.items():
            if lim is not None:
                v = metrics.get(key)
                if v is None or not (v <= lim):
                    fails.append(f"{key}={_fmt(v)} > {lim:g}")
        for key, lim in lower.items():
            if lim is not None:
                v = metrics.get(key)
                if v is None:
                    fails.append(f"{key} not measured (needs kind="
                                 f"{'embeddings' if key == 'mean_vector_cosine' else 'logits'})")
                elif not (v >= lim):
                    fails.append(f"{key}={_fmt(v)} < {lim:g}")
        if self.argmax_confidence is not None and self.argmax_agreement is not None and "argmax_agreement" in metrics:
            low = argmax_lower_bound(metrics, self.argmax_confidence)
            if low is None:
                fails.append(f"argmax agreement at {self.argmax_confidence:.0%} confidence needs >= 2 tiles "
                             f"(have {int(metrics.get('tiles', 0))}): check on more tiles")
            elif not (low >= self.argmax_agreement):
                fails.append(f"argmax_agreement lower bound ({self.argmax_confidence:.0%}, "
                             f"{int(metrics['tiles'])} tiles)={_fmt(low)} < {self.argmax_agreement:g}")
        return fails


def _fmt(v: float | None) -> str:
    return "missing" if v is None else f"{v:.6g}"


#: Our gates, by name. ``gate_for(graph, precision, kind)`` picks one.
GATES: dict[str, Gate] = {
    "fp32_logits": Gate("fp32_logits", max_abs_rel=1e-4),
    "fp32_embeddings": Gate("fp32_embeddings", cosine=0.9999, mean_vector_cosine=0.9999),
    "fp32_generic": Gate("fp32_generic", max_abs_rel=1e-4),
    "fp16_logits": Gate("fp16_logits", cosine=0.999, argmax_agreement=0.995),
    "fp16_embeddings": Gate("fp16_embeddings", cosine=0.999, mean_vector_cosine=0.999),
    "fp16_generic": Gate("fp16_generic", cosine=0.999),
}


def gate_for(precision: str, kind: str) -> Gate:
    """The gate of a (precision, output kind) pair, e.g. ("fp16", "logits")."""
    key = f"{precision}_{kind}"
    if key not in GATES:
        raise KeyError(f"no parity gate {key!r}; have {sorted(GATES)}")
    return GATES[key]


@dataclass
class ParityCase:
    """One compared output at one (graph, precision, batch, vocabulary size)."""

    graph: str
    precision: str
    output: str
    kind: str
    gate: str
    metrics: dict[str, float]
    passed: bool
    failed_checks: list[str] = field(default_factory=list)
    batch: int | None = None
    vocab_size: int | None = None
    backend: str = "onnxruntime"

    def describe(self) -> str:
        where = f"{self.graph}/{self.precision}/{self.backend} output {self.output!r}"
        dims = ", ".join(f"{k}={v}" for k, v in (("B", self.batch), ("K", self.vocab_size)) if v is not None)
        state = "ok" if self.passed else "FAILED " + "; ".join(self.failed_checks)
        return f"{where}{f' ({dims})' if dims else ''}: {state} [gate {self.gate}]"


@dataclass
class ParityReport:
    """All parity cases of an export; stored in the bundle as ``parity.json``."""

    cases: list[ParityCase] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, comparison: Comparison, *, graph: str, precision: str, output: str,
            batch: int | None = None, vocab: int | None = None, vocab_size: int | None = None,
            gate: Gate | None = None, backend: str = "onnxruntime") -> ParityCase:
        """Record one comparison (from :func:`compare`) under ``precision``'s gate; returns the case.

        ``vocab`` and ``vocab_size`` are the same thing (K)."""
        if isinstance(comparison, Mapping) and not isinstance(comparison, Comparison):
            raise TypeError("ParityReport.add takes the Comparison returned by compare(), not a dict")
        comparison.judge(precision, gate)
        case = ParityCase(graph=graph, precision=precision, output=output, kind=comparison.kind,
                          gate=str(comparison.gate), metrics=dict(comparison.metrics),
                          passed=not comparison.failed_checks, failed_checks=list(comparison.failed_checks),
                          batch=batch, vocab_size=vocab_size if vocab_size is not None else vocab,
                          backend=backend)
        self.cases.append(case)
        return case

    def check(self, graph: str, precision: str, output: str, reference: np.ndarray, candidate: np.ndarray,
              kind: str = "generic", batch: int | None = None, vocab: int | None = None,
              gate: Gate | None = None, backend: str = "onnxruntime") -> ParityCase:
        """:func:`compare` + :meth:`add` in one call."""
        return self.add(compare(reference, candidate, kind), graph=graph, precision=precision, output=output,
                        batch=batch, vocab=vocab, gate=gate, backend=backend)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases)

    def failures(self) -> list[str]:
        """One line per failed case, naming the graph, precision, output and the broken threshold."""
        return [c.describe() for c in self.cases if not c.passed]

    def summary(self) -> str:
        ok = sum(c.passed for c in self.cases)
        lines = [f"parity: {ok}/{len(self.cases)} cases pass"]
        lines += ["  " + c.describe() for c in self.cases]
        return "\n".join(lines)

    def raise_on_failure(self, allow: bool = False) -> None:
        """Raise :class:`ParityError` listing every failed case, unless ``allow`` (then do nothing)."""
        if allow or self.passed:
            return
        fails = self.failures()
        raise ParityError(f"{len(fails)} of {len(self.cases)} parity cases diverge from the PyTorch reference:\n  "
                          + "\n  ".join(fails)
                          + "\nFix the export (or pass --allow-parity-failure to keep the bundle anyway, "
                            "with this report inside it).")

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "meta": self.meta,
                "cases": [_jsonable(asdict(c)) for c in self.cases]}

    def to_json(self, path: str | os.PathLike[str] | None = None, indent: int = 2) -> str:
        """JSON text (non-finite numbers as strings "inf"/"nan"); written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike[str]) -> ParityReport:
        """Inverse of :meth:`to_json`: accepts the JSON text or a path to it."""
        s = str(text_or_path)
        if not s.lstrip().startswith("{"):
            s = Path(s).read_text(encoding="utf-8")
        d = json.loads(s)
        cases = []
        for c in d.get("cases", []):
            c = dict(c)
            c["metrics"] = {k: _unjson(v) for k, v in c["metrics"].items()}
            cases.append(ParityCase(**c))
        return cls(cases=cases, meta=d.get("meta", {}))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else ("nan" if math.isnan(f) else ("inf" if f > 0 else "-inf"))
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _unjson(v: Any) -> Any:
    return float(v) if v in ("inf", "-inf", "nan") else v


def ort_session(path: str | os.PathLike[str], providers: Sequence[str] | None = None,
                optimization: str = "all", threads: int | None = None) -> Any:
    """An ONNX Runtime session for parity runs.

    ``providers=None`` picks CUDA when onnxruntime-gpu sees a GPU, else CPU (never the
    TensorRT execution provider: parity of TensorRT engines goes through our own backend).
    ``optimization``: "all" | "extended" | "basic" | "disabled"."""
    import onnxruntime as ort

    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    if optimization not in levels:
        raise ValueError(f"optimization={optimization!r}; expected one of {sorted(levels)}")
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider",) if p in available] + ["CPUExecutionProvider"]
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[optimization]
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), so, providers=list(providers))
