"""rsvl_export.parity: metrics on constructed arrays, gates pass and fail, the report names what diverged."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from rsvl_export.parity import (
    GATES,
    Gate,
    ParityError,
    ParityReport,
    argmax_lower_bound,
    compare,
    compare_metrics,
    gate_for,
    ort_session,
    t_quantile,
)


def _logits(b: int = 2, k: int = 5, hw: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(b, k, hw, hw)).astype(np.float32)


def test_metrics_on_known_arrays() -> None:
    ref = np.array([[0.0, 1.0], [2.0, 4.0]], dtype=np.float32)
    cand = ref + np.array([[0.0, 0.02], [0.0, -0.04]], dtype=np.float32)
    m = compare_metrics(ref, cand, "generic")
    assert m["max_abs"] == pytest.approx(0.04, rel=1e-5)
    assert m["max_abs_rel_to_range"] == pytest.approx(0.04 / 4.0, rel=1e-5)
    r, c = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    assert m["cosine"] == pytest.approx(float(r @ c / np.linalg.norm(r) / np.linalg.norm(c)), rel=1e-12)
    assert compare_metrics(np.array([1.0, 0.0]), np.array([0.0, 1.0]))["cosine"] == 0.0


def test_argmax_agreement_is_over_the_class_axis() -> None:
    ref = np.zeros((1, 3, 2, 2), dtype=np.float32)
    ref[0, 0] = 1.0                                   # class 0 wins everywhere
    cand = ref.copy()
    cand[0, 2, 0, 0] = 5.0                            # one of 4 pixels now votes class 2
    c = compare(ref, cand, "logits")
    assert c["argmax_agreement"] == 0.75


def test_per_vector_cosine_for_embeddings() -> None:
    e = np.random.default_rng(1).normal(size=(4, 16))
    flipped = e.copy()
    flipped[2] *= -1                                  # one vocabulary entry points the other way
    m = compare(e, flipped, "embeddings").metrics
    assert m["mean_vector_cosine"] == pytest.approx(0.5)
    assert m["min_vector_cosine"] == pytest.approx(-1.0)
    assert compare(e, e, "embedding")["mean_vector_cosine"] == pytest.approx(1.0)   # alias accepted


def test_gate_values_are_ours() -> None:
    assert GATES["fp32_logits"].max_abs_rel == 1e-4
    assert GATES["fp32_embeddings"].cosine == 0.9999
    assert GATES["fp16_logits"].cosine == 0.999 and GATES["fp16_logits"].argmax_agreement == 0.995
    assert gate_for("fp16", "logits") is GATES["fp16_logits"]
    with pytest.raises(KeyError, match="no parity gate 'int8_logits'"):
        gate_for("int8", "logits")


def test_small_noise_passes_fp32_and_a_perturbation_fails_with_the_output_named() -> None:
    ref = _logits()
    rng = np.random.default_rng(2)
    report = ParityReport(meta={"model": "toy"})
    report.check("image", "fp32", "logits", ref, ref + rng.normal(scale=1e-6, size=ref.shape), kind="logits",
                 batch=2, vocab=5)
    emb = rng.normal(size=(5, 8))
    report.check("text", "fp32", "text_emb", emb, emb + 1e-7, kind="embeddings", vocab=5)
    assert report.passed and report.failures() == []
    report.raise_on_failure()                         # nothing raised

    broken = ref.copy()
    broken[1, 3] += 3.0                               # one class map of one tile goes wrong
    case = report.check("image", "fp16", "logits", ref, broken, kind="logits", batch=2, vocab=5)
    assert not case.passed and case.gate == "fp16_logits"
    assert any(f.startswith("argmax_agreement=") for f in case.failed_checks)
    fails = report.failures()
    assert len(fails) == 1 and "image/fp16" in fails[0] and "'logits'" in fails[0] and "B=2, K=5" in fails[0]
    with pytest.raises(ParityError, match=r"(?s)1 of 3 parity cases.*image/fp16/onnxruntime output 'logits'"):
        report.raise_on_failure()
    report.raise_on_failure(allow=True)               # allowed: no exception


def test_fp32_gate_is_relative_to_the_range() -> None:
    ref = _logits() * 100.0
    cand = ref.copy()
    rng = float(ref.max() - ref.min())
    cand.flat[0] += 0.5e-4 * rng
    assert compare(ref, cand, "logits", precision="fp32").passed
    cand.flat[0] += 1e-4 * rng
    c = compare(ref, cand, "logits", precision="fp32")
    assert not c.passed and c.failed_checks[0].startswith("max_abs_rel_to_range=")


def test_nonfinite_candidate_fails_every_gate() -> None:
    ref = _logits()
    cand = ref.copy()
    cand[0, 0, 0, 0] = np.nan
    for prec in ("fp32", "fp16"):
        c = compare(ref, cand, "logits", precision=prec)
        assert not c.passed and "1 non-finite values" in c.failed_checks[0]


def test_custom_gate_and_missing_metric() -> None:
    gate = Gate("strict", max_abs=1e-9, argmax_agreement=1.0)
    c = compare(np.ones(4), np.ones(4) + 1e-6, "generic", gate=gate)
    assert not c.passed
    assert any("max_abs=" in f for f in c.failed_checks)
    assert any("argmax_agreement not measured" in f for f in c.failed_checks)


def test_report_json_round_trip_keeps_non_finite_numbers(tmp_path) -> None:
    ref = _logits()
    bad = ref.copy()
    bad[0, 0, 0, 0] = np.inf
    report = ParityReport(meta={"opset": 18})
    report.check("image", "fp32", "logits", ref, ref, kind="logits", batch=2, vocab=5)
    report.check("image", "fp16", "logits", ref, bad, kind="logits", batch=2, vocab=5)
    text = report.to_json(tmp_path / "parity.json")
    d = json.loads(text)                              # strict JSON (no NaN/Infinity literals)
    assert d["passed"] is False and d["cases"][1]["metrics"]["max_abs"] == "inf"
    back = ParityReport.from_json(tmp_path / "parity.json")
    assert back.meta == {"opset": 18} and back.failures() == report.failures()
    assert math.isinf(back.cases[1].metrics["max_abs"]) and back.cases[0] == report.cases[0]
    assert ParityReport.from_json(text).cases == back.cases


def test_shape_mismatch_and_unknown_kind_raise() -> None:
    with pytest.raises(ValueError, match=r"reference \(2, 3\) vs candidate \(3, 2\)"):
        compare(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="kind='pixels'"):
        compare(np.zeros(2), np.zeros(2), "pixels")


def test_report_add_wants_a_comparison() -> None:
    with pytest.raises(TypeError, match="Comparison returned by compare"):
        ParityReport().add({"max_abs": 0.0}, graph="image", precision="fp32", output="logits")  # type: ignore[arg-type]


def test_ort_session_picks_cpu_here(tmp_path) -> None:
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "relu.onnx")
    s = ort_session(tmp_path / "relu.onnx")
    assert s.get_providers()[-1] == "CPUExecutionProvider"
    assert s.run(None, {"x": np.array([-1.0, 2.0], np.float32)})[0].tolist() == [0.0, 2.0]


def test_parity_module_is_torch_free() -> None:
    code = "import sys, rsvl_export.parity; assert 'torch' not in sys.modules, 'parity imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_t_quantile_matches_the_tables() -> None:
    # Student's t, one-sided 95 %: 1.943 (6 dof), 1.812 (10), 1.697 (30); the normal 1.645 beyond
    assert t_quantile(0.95, 6) == pytest.approx(1.9432, abs=1e-3)
    assert t_quantile(0.95, 10) == pytest.approx(1.8125, abs=1e-3)
    assert t_quantile(0.95, 30) == pytest.approx(1.6973, abs=1e-3)
    assert t_quantile(0.95, 10_000) == pytest.approx(1.6449, abs=1e-3)
    with pytest.raises(ValueError, match="at least 2 samples"):
        t_quantile(0.95, 0)


def _flip(ref: np.ndarray, per_tile: list[int]) -> np.ndarray:
    """``ref`` with the top class swapped to the runner-up at the first ``per_tile[b]`` pixels of tile b."""
    cand = ref.copy()
    b_, k, h, w = ref.shape
    for b, n in enumerate(per_tile):
        flat = cand[b].reshape(k, h * w)
        for p in range(n):
            order = np.argsort(flat[:, p])
            flat[order[-1], p], flat[order[-2], p] = flat[order[-2], p], flat[order[-1], p]
    return cand


def test_per_tile_spread_and_the_lower_bound_on_known_flips() -> None:
    ref = _logits(b=4, k=3, hw=10, seed=3)                     # 100 pixels a tile
    cand = _flip(ref, [0, 1, 2, 5])                            # agreements 1.00, 0.99, 0.98, 0.95
    m = compare_metrics(ref, cand, kind="logits")
    per = np.array([1.0, 0.99, 0.98, 0.95])
    assert m["argmax_agreement"] == pytest.approx(per.mean())  # equal tiles: pooled = mean of tiles
    assert m["tiles"] == 4 and m["argmax_tile_min"] == pytest.approx(0.95)
    assert m["argmax_tile_sd"] == pytest.approx(per.std(ddof=1))
    low = argmax_lower_bound(m, 0.95)
    assert low == pytest.approx(per.mean() - 2.3534 * per.std(ddof=1) / 2, abs=2e-4)  # t(0.95, 3 dof)
    assert argmax_lower_bound(compare_metrics(ref[:1], cand[:1], kind="logits"), 0.95) is None


def test_confidence_gate_refuses_a_sample_at_the_threshold() -> None:
    ref = _logits(b=7, k=3, hw=20, seed=4)                     # 400 pixels a tile
    plain = Gate("g", argmax_agreement=0.995)
    sure = Gate("g", argmax_agreement=0.995, argmax_confidence=0.95)
    spread = _flip(ref, [0, 4, 1, 3, 2, 3, 1])                 # pooled 1 - 14/2800 = 0.995, tiles 0.99-1.0
    assert compare(ref, spread, kind="logits", gate=plain).passed
    c = compare(ref, spread, kind="logits", gate=sure)
    assert not c.passed
    assert "argmax_agreement lower bound (95%, 7 tiles)=0.9924" in c.failed_checks[0]
    even = _flip(ref, [1, 1, 1, 1, 1, 1, 1])                   # 0.9975 on every tile: no spread
    assert compare(ref, even, kind="logits", gate=sure).passed
    one = compare(ref[:1], even[:1], kind="logits", gate=sure)
    assert not one.passed and "needs >= 2 tiles (have 1)" in one.failed_checks[0]
