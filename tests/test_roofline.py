"""The roofline of rsvl-bench: FLOPs counted once at export (and typed in the manifest), the
pure GFLOP/s / % of peak arithmetic, the ceiling each row is held against, the GEMM ceiling
measurement, the ORT profile summary and ``rsvl-bench compare``."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from torch import nn

from benchmarks.roofline import (
    annotate_rows,
    ceiling_for,
    gemm_flops,
    gflops_per_s,
    percent_of_peak,
    roofline_columns,
    row_precision_class,
)


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


# --------------------------------------------------------------------------- FLOPs at export
def test_count_flops_equals_hand_count_of_a_linear_layer():
    from rsvl_export.onnx_export import count_flops

    m, k, n = 4, 16, 8
    got = count_flops(_Linear(), {"x": torch.randn(m, k)}, per_axis="B", per_input="x")
    assert got["total"] == 2 * m * n * k == 1024
    assert got["items"] == 4 and got["per_item"] == 256.0 and got["item_axis"] == "B"
    assert got["shapes"] == {"x": [4, 16]}


def test_pipeline_records_flops_and_manifest_types_them():
    from rsvl_export.pipeline import Exporter
    from rsvl_export.wrappers import GraphSpec
    from rsvl_runtime.manifest import FlopCount, GraphEntry

    spec = GraphSpec("image", _Linear(), {"x": torch.randn(3, 16)}, ["y"], {"x": {0: "B"}})
    graph: dict = {"fp32": "image.onnx", "inputs": {}, "outputs": {}}
    Exporter._count_flops(spec, graph)
    assert graph["flops"]["total"] == 2 * 3 * 8 * 16 and graph["flops"]["per_item"] == 2 * 8 * 16
    entry = GraphEntry.from_dict(json.loads(json.dumps(graph)), "graphs.image")
    assert isinstance(entry.flops, FlopCount)
    assert entry.flops.per_item == 256 and entry.flops.items == 3 and entry.flops.item_axis == "B"
    assert entry.to_dict() == json.loads(json.dumps(graph))  # the round trip keeps the seal stable
    old = GraphEntry.from_dict({"fp32": "image.onnx", "inputs": {}, "outputs": {}}, "graphs.image")  # an old bundle: no flops
    assert old.flops is None and "flops" not in old.to_dict()


def test_manifest_refuses_a_flops_entry_without_total():
    from rsvl_runtime.bundle import BundleError
    from rsvl_runtime.manifest import GraphEntry

    with pytest.raises(BundleError, match="graphs.image.flops.total"):
        GraphEntry.from_dict({"fp32": "image.onnx", "flops": {"per_item": 3.0}}, "graphs.image")


@pytest.mark.slow
def test_tiny_bundle_manifest_has_flops_per_tile_and_per_prompt(tiny_bundle):
    from rsvl_runtime.bundle import Bundle

    m = Bundle.load(tiny_bundle).meta
    img, txt = m.graphs["image"].flops, m.graphs["text"].flops
    assert img is not None and txt is not None
    assert img.items == 2 and img.item_axis == "B" and img.per_item == img.total / 2 and img.per_item > 1e6
    assert txt.item_axis == "K" and txt.items == 3 and txt.per_item == txt.total / 3 and txt.per_item > 0


# --------------------------------------------------------------------------- pure roofline arithmetic
def test_gflops_and_percent_of_peak_from_given_numbers():
    assert gemm_flops(1024, 1024, 1024) == 2 * 1024**3
    assert gflops_per_s(2e9, 0.5) == 4.0
    assert percent_of_peak(59.0, 236.0) == 25.0
    assert percent_of_peak(10.0, None) is None and percent_of_peak(10.0, 0.0) is None
    with pytest.raises(ValueError):
        gflops_per_s(1.0, 0.0)
    # 93.7 GFLOP per tile at 1.6 s per tile against a 200 GFLOP/s ceiling
    cols = roofline_columns(93.7e9, 1 / 1.6, ("ort-fp32-matmul", 200.0))
    assert cols["gflops_per_s"] == pytest.approx(58.56, abs=0.01)
    assert cols["percent_of_peak"] == pytest.approx(29.28, abs=0.01)
    assert cols["ceiling"] == "ort-fp32-matmul" and cols["ceiling_gflops"] == 200.0
    assert roofline_columns(None, 5.0, ("x", 1.0)) == {}


CEILINGS = {
    "ort-fp32-matmul": {"class": "fp32", "device": "cpu", "status": "ok", "gflops": 200.0},
    "torch-fp32-matmul": {"class": "fp32", "device": "cpu", "status": "ok", "gflops": 150.0},
    "ort-int8-matmulinteger": {"class": "int8", "device": "cpu", "status": "ok", "gflops": 600.0},
    "torch-int8-int_mm": {"class": "int8", "device": "cpu", "status": "error", "reason": "no kernel"},
    "cuda-fp16-matmul": {"class": "fp16", "device": "cuda", "status": "ok", "gflops": 700000.0},
    "cuda-fp32-matmul": {"class": "fp32", "device": "cuda", "status": "ok", "gflops": 50000.0},
}


def test_each_row_is_held_against_its_own_ceiling():
    fp32 = {"runner": "ort-cpu-fp32", "precision": "fp32", "device": "cpu"}
    int8 = {"runner": "ort-opt", "precision": "int8-dynamic", "device": "cpu"}
    trt = {"runner": "tensorrt", "precision": "fp16", "device": "cuda"}
    cuda32 = {"runner": "ort-cuda-fp32", "precision": "fp32", "device": "cuda"}
    assert [row_precision_class(r) for r in (fp32, int8, trt, cuda32)] == ["fp32", "int8", "fp16", "fp32"]
    assert ceiling_for(fp32, CEILINGS) == ("ort-fp32-matmul", 200.0)  # the best FP32 engine
    assert ceiling_for(int8, CEILINGS) == ("ort-int8-matmulinteger", 600.0)  # failed ceilings are ignored
    assert ceiling_for(trt, CEILINGS) == ("cuda-fp16-matmul", 700000.0)
    assert ceiling_for(cuda32, CEILINGS) == ("cuda-fp32-matmul", 50000.0)
    # without VNNI the u8s8 kernel saturates: the exact u8u8 one is the INT8 ceiling
    no_vnni = {**CEILINGS, "ort-int8-matmulinteger": {**CEILINGS["ort-int8-matmulinteger"], "exact": False},
               "ort-int8-matmulinteger-u8u8": {"class": "int8", "device": "cpu", "status": "ok", "gflops": 450.0}}
    assert ceiling_for(int8, no_vnni) == ("ort-int8-matmulinteger-u8u8", 450.0)
    rows = [{**fp32, "status": "ok", "tiles_per_s": 2.0}, {**int8, "status": "ok", "tiles_per_s": 4.0},
            {**fp32, "status": "error"}]
    annotate_rows(rows, 30e9, CEILINGS)
    assert rows[0]["gflops_per_s"] == 60.0 and rows[0]["percent_of_peak"] == 30.0
    assert rows[1]["gflops_per_s"] == 120.0 and rows[1]["percent_of_peak"] == 20.0
    assert rows[1]["ceiling_class"] == "int8"
    assert "gflops_per_s" not in rows[2]


def test_measure_ceilings_runs_small_gemms_and_names_the_cpu(monkeypatch):
    import benchmarks.roofline as rl

    monkeypatch.setattr(rl, "CPU_GEMM_N_QUICK", 64)
    doc = rl.measure_ceilings(threads=1, quick=True, budget_s=0.05)
    assert doc["cpu"]["model"] and isinstance(doc["cpu"]["vnni"], bool)
    c = doc["ceilings"]
    assert {"ort-fp32-matmul", "torch-fp32-matmul", "ort-int8-matmulinteger", "ort-int8-matmulinteger-u8u8",
            "torch-int8-int_mm"} <= set(c)
    for name in ("ort-fp32-matmul", "torch-fp32-matmul", "ort-int8-matmulinteger", "ort-int8-matmulinteger-u8u8"):
        assert c[name]["status"] == "ok" and c[name]["gflops"] > 0 and c[name]["n"] == 64, c[name]
    assert c["ort-int8-matmulinteger"]["vnni"] == doc["cpu"]["vnni"] == c["ort-int8-matmulinteger"]["exact"]
    assert ("VNNI" in c["ort-int8-matmulinteger"]["engine"])


def test_ort_matmulinteger_ceiling_graph_is_exact_where_its_products_cannot_saturate():
    """The ceiling's u8 x s8 GEMM is exact with VNNI; without it (AVX2 ``vpmaddubsw``) pairs of
    8-bit products saturate at int16, so only 7-bit (``reduce_range``) weights are exact there —
    the reason the runtime's INT8 guard exists (``backends.int8_refusal``)."""
    import numpy as np

    from benchmarks.roofline import _ort_one_node
    from rsvl_runtime.cpu import has_vnni

    for bits, weights in ((8, "s8"), (7, "s7")):
        sess, feed = _ort_one_node("MatMulInteger", 32, threads=1, weights=weights)
        y = sess.run(None, feed)[0]
        rng = np.random.default_rng(0)  # the generator the ceiling graph uses: B is its initializer
        a = rng.integers(0, 255, (32, 32), dtype=np.uint8)
        top = 2 ** (bits - 1) - 1
        b = rng.integers(-top, top, (32, 32), dtype=np.int8)
        assert np.array_equal(feed["A"], a)
        assert y.dtype == np.int32 and y.shape == (32, 32)
        if bits == 7 or has_vnni():
            assert np.array_equal(y, a.astype(np.int32) @ b.astype(np.int32)), bits
    sess, feed = _ort_one_node("MatMulInteger", 32, threads=1, weights="u8")  # u8 x u8: exact on every CPU
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (32, 32), dtype=np.uint8)
    b = rng.integers(0, 255, (32, 32), dtype=np.uint8)
    assert np.array_equal(sess.run(None, feed)[0], a.astype(np.int32) @ b.astype(np.int32))
    with pytest.raises(ValueError, match="expected one of"):
        _ort_one_node("MatMulInteger", 32, threads=1, weights="u7")


# --------------------------------------------------------------------------- ORT profile summary
def test_summarize_profile_sums_kernel_time_per_op_type():
    from benchmarks.profiling import summarize_profile

    ev = [{"cat": "Node", "name": "conv1_kernel_time", "dur": 3000, "args": {"op_name": "Conv"}},
          {"cat": "Node", "name": "conv2_kernel_time", "dur": 1000, "args": {"op_name": "Conv"}},
          {"cat": "Node", "name": "mm_kernel_time", "dur": 1000, "args": {"op_name": "MatMul"}},
          {"cat": "Node", "name": "mm_fence_before", "dur": 999, "args": {"op_name": "MatMul"}},
          {"cat": "Session", "name": "model_run", "dur": 9000}]
    s = summarize_profile(ev, runs=2)
    assert s["total_ms_per_run"] == 2.5
    assert s["ops"][0] == {"op_type": "Conv", "ms_per_run": 2.0, "percent": 80.0, "nodes": 2, "calls": 2}
    assert s["ops"][1]["op_type"] == "MatMul" and s["ops"][1]["percent"] == 20.0
    top1 = summarize_profile(ev, runs=1, top=1)
    assert [o["op_type"] for o in top1["ops"]] == ["Conv", "other"] and top1["ops"][1]["ms_per_run"] == 1.0


def test_profile_ort_on_a_one_node_graph(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from benchmarks.profiling import profile_ort

    node = helper.make_node("Relu", ["X"], ["Y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 4])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, 4])])
    p = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(p))
    s = profile_ort(p, {"X": np.ones((4, 4), np.float32)}, threads=1, runs=3)
    assert s["runs"] == 3 and s["ops"][0]["op_type"] == "Relu" and s["ops"][0]["calls"] == 3
    assert math.isclose(sum(o["percent"] for o in s["ops"]), 100.0, abs_tol=0.05)


def test_headroom_is_each_ceiling_over_eagers_achieved_rate():
    from benchmarks.report import roofline_lines
    from benchmarks.roofline import headroom

    rows = [{"runner": "torch-eager", "precision": "fp32", "device": "cpu", "batch": 1, "status": "ok",
             "gflops_per_s": 80.0},
            {"runner": "ort-cpu-fp32", "precision": "fp32", "device": "cpu", "batch": 1, "status": "ok",
             "gflops_per_s": 120.0},
            {"runner": "torch-eager", "precision": "fp32", "device": "cpu", "batch": 8, "status": "error"}]
    room = headroom(rows, CEILINGS)
    assert len(room) == 1 and room[0]["batch"] == 1 and room[0]["eager_gflops_per_s"] == 80.0
    b = room[0]["bounds"]
    assert b["fp32"] == {"ceiling": "ort-fp32-matmul", "ceiling_gflops": 200.0, "max_speedup_vs_eager": 2.5}
    assert b["int8"]["max_speedup_vs_eager"] == 7.5
    assert "fp16" not in b  # no FP16 tensor cores on the CPU
    gpu = headroom([{"runner": "torch-eager", "precision": "fp32", "device": "cuda", "batch": 8, "status": "ok",
                     "gflops_per_s": 35000.0}], CEILINGS)
    assert gpu[0]["bounds"]["fp16"]["max_speedup_vs_eager"] == 20.0
    assert gpu[0]["bounds"]["fp32"]["ceiling"] == "cuda-fp32-matmul" and "int8" not in gpu[0]["bounds"]
    text = headroom([{"runner": "torch-eager", "prompts": 7, "status": "ok", "gflops_per_s": 100.0}], CEILINGS,
                    graph="text")
    assert text[0]["graph"] == "text" and text[0]["batch"] == 7 and text[0]["bounds"]["fp32"]["max_speedup_vs_eager"] == 2.0
    lines = roofline_lines({"roofline": {"cpu": {}, "ceilings": CEILINGS}, "model": {}, "headroom": room + text})
    table = "\n".join(lines)
    assert "**Headroom**" in table and "| image | 1 | 80.0 | 2.50× | 7.50× |" in table
    assert "| text | 7 | 100.0 | 2.00× | 6.00× |" in table


def test_bench_markdown_names_the_int8_attempts_lower_bound():
    from benchmarks.report import markdown

    attempt = {"name": "int8-all", "nodes": 12, "latency_ms": 5.0, "result": "rejected",
               "parity": {"cosine": 0.9995, "argmax_agreement": 0.995, "argmax_agreement_lower": 0.99240,
                          "argmax_confidence": 0.95, "tiles": 7}}
    doc = {"ort_optimize": {"variant": "fused", "latency_ms": {"source": 10.0, "fused": 9.0}, "speedup": 1.11,
                            "attempts": [attempt, {**attempt, "name": "old", "parity": {"argmax_agreement": 0.99}}]}}
    lines = markdown(doc).splitlines()
    assert ("- int8-all: 12 nodes, cosine 0.999500, argmax 0.9950 (lower bound 0.9924 at 95% over 7 tiles), "
            "5.00 ms — rejected") in lines
    assert any(line.startswith("- old: 12 nodes, cosine –, argmax 0.9900, 5.00 ms") for line in lines)
