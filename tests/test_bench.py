"""rsvl-bench end to end on tsmnet-tiny at a tiny tile: files written, numbers sane.

No timing thresholds: only that latencies are positive and ordered, throughput is consistent
with latency, and ONNX Runtime FP32 agrees with eager FP32.
"""

from __future__ import annotations

import json
import math
import os

import pytest

# PyTorch's OpenMP threads spin-wait by default, which collapses eager CPU speed when other
# processes share the cores; rsvl-bench sets this itself, but only before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, tiny_bundle):
    from benchmarks.cli import main

    out = tmp_path_factory.mktemp("bench")
    rc = main(["--model", "tsmnet-tiny", "--bundle", str(tiny_bundle), "--tile", "64", "--batch", "1,2", "--vocab-size", "4", "--quick",
               "--out", str(out), "--budget", "0.3", "--scene-size", "128", "--threads", "2",
               "--backends", "torch-eager,ort-cpu-fp32,ort-opt"])
    assert rc == 0
    return out, json.loads((out / "bench.json").read_text())


@pytest.mark.slow
def test_bench_writes_reports(bench_run):
    out, doc = bench_run
    for name in ("bench.json", "bench.md", "bench.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "bench.md").read_text()
    assert "PyTorch eager FP32" in md and "ONNX Runtime CPU FP32" in md and "× eager" in md
    m = doc["machine"]
    assert m["cpu_count"] >= 1 and "torch" in m["versions"] and "onnxruntime" in m["versions"]
    assert doc["bundle"]["tile"] == 64 and doc["model"]["name"] == "tsmnet-tiny"


@pytest.mark.slow
def test_bench_numbers_are_sane(bench_run):
    _, doc = bench_run
    ok = [r for r in doc["image"] if r["status"] == "ok"]
    got = {(r["runner"], r["batch"]) for r in ok}
    for key in ("torch-eager", "ort-cpu-fp32"):
        assert {(key, 1), (key, 2)} <= got, f"{key} missing from {sorted(got)}"
    for r in ok:
        assert r["iterations"] >= 3
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"], r
        assert r["tiles_per_s"] > 0 and r["megapixels_per_s"] > 0
        assert math.isclose(r["tiles_per_s"], r["batch"] / (r["p50_ms"] / 1e3), rel_tol=1e-3)
        assert math.isclose(r["megapixels_per_s"], r["tiles_per_s"] * 64 * 64 / 1e6, rel_tol=1e-4)
        assert r["memory"]["peak_rss_mb"] and r["memory"]["peak_rss_mb"] > 0
        a = r["agreement"]
        assert {"cosine", "argmax_agreement", "max_abs_rel_to_range"} <= set(a)
        assert r["speedup_vs_eager"] > 0
    for r in ok:
        if r["runner"] in ("torch-eager", "ort-cpu-fp32"):
            a = r["agreement"]
            assert a["cosine"] > 0.9999 and a["argmax_agreement"] > 0.999 and a["max_abs_rel_to_range"] < 1e-3, r
    eager = [r for r in ok if r["runner"] == "torch-eager"]
    assert all(r["speedup_vs_eager"] == 1.0 for r in eager)


@pytest.mark.slow
def test_bench_text_scene_and_ort_variant(bench_run):
    _, doc = bench_run
    text = {r["runner"]: r for r in doc["text"]}
    assert text["torch-eager"]["status"] == "ok" and text["ort"]["status"] == "ok"
    assert text["ort"]["p50_ms"] > 0 and text["ort"]["agreement"]["min_vector_cosine"] > 0.9999
    scene = [r for r in doc["scene"] if r["status"] == "ok"]
    assert scene, doc["scene"]
    s = scene[0]
    assert s["tiles"] >= 4 and s["seconds"] > 0 and s["tiles_per_s"] > 0
    assert s["end_to_end_over_engine"] > 0
    ort = doc["ort_optimize"]
    assert "error" not in ort, ort
    assert ort["variant"] in ("source", "fused") or ort["variant"].startswith("int8")
    assert ort["parity"]["passed"]
    opt = [r for r in doc["image"] if r["runner"] == "ort-opt" and r["status"] == "ok"]
    assert opt and all(r["agreement"]["cosine"] >= 0.999 for r in opt)


def test_parse_backends_and_percentiles():
    from benchmarks.backends import parse_backends
    from benchmarks.measure import Budget, Timing, measure

    assert parse_backends("torch-eager,ort") == ["torch-eager", "ort-cpu-fp32", "ort-cpu-fp16", "ort-opt",
                                                 "ort-cuda-fp32", "ort-cuda-fp16", "ort-trt"]
    with pytest.raises(ValueError, match="Did you mean 'torch-eager'"):
        parse_backends(["torch-eagr"])
    t = Timing([5.0, 1.0, 3.0, 2.0, 4.0], batch=2, pixels_per_item=100)
    assert t.p50 == 3.0 and t.p50 <= t.p90 <= t.p99 <= 5.0
    assert math.isclose(t.items_per_s, 2 / 0.003)
    calls = []
    tm = measure(lambda: calls.append(1), Budget(warmup=2, min_iters=4, max_iters=6, budget_s=0.0))
    assert tm.n == 4 and len(calls) == 6 and tm.warmup == 2
