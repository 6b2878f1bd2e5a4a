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


@pytest.mark.slow
def test_bench_roofline_flops_and_profile(bench_run):
    out, doc = bench_run
    rf = doc["roofline"]
    assert rf["cpu"]["model"] and isinstance(rf["cpu"]["vnni"], bool)
    ok = {k: c for k, c in rf["ceilings"].items() if c["status"] == "ok"}
    assert {"ort-fp32-matmul", "ort-int8-matmulinteger"} <= set(ok) and all(c["gflops"] > 0 for c in ok.values())
    # FLOPs come from the manifest (counted once at export), not from a count in the bench
    assert doc["model"]["flops_source"].startswith("manifest") and doc["model"]["gflops_per_tile"] > 0
    flops = doc["model"]["flops_per_tile"]
    assert math.isclose(doc["model"]["gflops_per_tile"], flops / 1e9, abs_tol=5e-4)
    for r in (r for r in doc["image"] if r["status"] == "ok"):
        assert math.isclose(r["gflops_per_s"], flops * r["tiles_per_s"] / 1e9, rel_tol=2e-3, abs_tol=0.01), r
        assert math.isclose(r["percent_of_peak"], 100 * r["gflops_per_s"] / r["ceiling_gflops"], rel_tol=1e-2,
                            abs_tol=0.01), r
        want = "int8" if "int8" in r["precision"] else "fp32"
        assert r["ceiling_class"] == want and rf["ceilings"][r["ceiling"]]["class"] == want
    prof = doc["ort_profile"]["image.onnx"]
    assert prof["ops"] and prof["total_ms_per_run"] > 0
    assert math.isclose(sum(o["percent"] for o in prof["ops"]), 100.0, abs_tol=0.1)
    md = (out / "bench.md").read_text()
    assert "GFLOP/s" in md and "% peak" in md and "Machine ceilings" in md and rf["cpu"]["model"] in md
    assert "per-op-type kernel time" in md


def _bench_doc(image_ms: dict[tuple[str, int], float], text_ms: float = 10.0) -> dict:
    return {"image": [{"runner": k, "batch": b, "status": "ok", "p50_ms": ms} for (k, b), ms in image_ms.items()],
            "text": [{"runner": "ort", "prompts": 7, "status": "ok", "p50_ms": text_ms}]}


def test_compare_flags_a_15_percent_slower_row_and_not_a_5_percent_one(tmp_path, capsys):
    from benchmarks.cli import main
    from benchmarks.compare import compare_docs

    old = _bench_doc({("ort-cpu-fp32", 1): 100.0, ("ort-opt", 1): 50.0, ("torch-eager", 1): 200.0})
    new = _bench_doc({("ort-cpu-fp32", 1): 115.0, ("ort-opt", 1): 52.5, ("torch-eager", 8): 900.0}, text_ms=9.0)
    diffs, only_old, only_new = compare_docs(old, new)
    by = {d.key: d for d in diffs}
    assert by["ort-cpu-fp32 B=1"].ratio == pytest.approx(1.15) and by["ort-cpu-fp32 B=1"].slower(0.10)
    assert by["ort-opt B=1"].ratio == pytest.approx(1.05) and not by["ort-opt B=1"].slower(0.10)
    assert not by["ort K=7"].slower(0.10)
    assert only_old == ["image: torch-eager B=1"] and only_new == ["image: torch-eager B=8"]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "bench.json").write_text(json.dumps(old))
    (b / "bench.json").write_text(json.dumps(new))
    assert main(["compare", str(a / "bench.json"), str(b / "bench.json")]) == 1
    table = capsys.readouterr().out
    flagged = [ln for ln in table.splitlines() if "SLOWER" in ln]
    assert len(flagged) == 1 and "ort-cpu-fp32 B=1" in flagged[0] and "1.150" in flagged[0]
    assert main(["compare", str(a), str(b), "--threshold", "0.2"]) == 0  # folders work too
    assert main(["compare", str(a), str(a)]) == 0


def test_compare_refuses_a_file_that_is_not_a_bench_report(tmp_path, capsys):
    from benchmarks.compare import main

    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    assert main([str(bad), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rsvl-bench compare: error: ") and "x.json" in err and len(err.strip().splitlines()) == 1
    assert main([str(tmp_path / "missing.json"), str(bad)]) == 2


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
