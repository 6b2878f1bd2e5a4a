"""The machine's own ceiling for ``rsvl-bench``, measured in the same run as the model rows.

* :func:`measure_ceilings` times large dense GEMMs: FP32 through ONNX Runtime (a one-node
  ``MatMul`` graph) and through torch; INT8 through ONNX Runtime (a one-node ``MatMulInteger``
  graph, u8 x s8 as dynamic INT8 runs it) and torch's ``torch._int_mm`` where it runs on the CPU;
  on a CUDA GPU the FP16 and BF16 tensor-core GEMM. INT8 is measured with and without VNNI
  and labelled (``vnni`` in the result): without VNNI it is not the instruction the INT8 graph
  would use on a VNNI CPU. Each ceiling is the best of a few timed calls (a ceiling is what
  the machine *can* do). The CPU model and its SIMD flags go into the result.
* :func:`ceiling_for` picks the ceiling that matches a bench row (INT8 rows against INT8, CUDA
  FP16/AMP/TensorRT rows against FP16, everything else against FP32, the best engine of that
  precision), and :func:`roofline_columns` turns a row's FLOPs per tile and throughput into
  achieved GFLOP/s and % of that ceiling (pure functions: the report and the tests use them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

log = logging.getLogger("rsvl.bench")

#: GEMM edge (M = N = K) per device; 2 * n^3 FLOPs per call.
CPU_GEMM_N = 1024
CPU_GEMM_N_QUICK = 512
GPU_GEMM_N = 8192


def gemm_flops(m: int, n: int, k: int) -> int:
    """Multiply-adds of an ``[m, k] @ [k, n]`` product, counted as 2 FLOPs each."""
    return 2 * m * n * k


def gflops_per_s(flops: float, seconds: float) -> float:
    """Achieved GFLOP/s of ``flops`` done in ``seconds``."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return flops / seconds / 1e9


def percent_of_peak(achieved_gflops: float, peak_gflops: float | None) -> float | None:
    """``achieved`` as a percentage of ``peak`` (None when the peak is unknown or zero)."""
    if not peak_gflops or peak_gflops <= 0:
        return None
    return 100.0 * achieved_gflops / peak_gflops


# --------------------------------------------------------------------------- row -> ceiling
def row_precision_class(row: Mapping[str, Any]) -> str:
    """Which ceiling a bench row is held against: ``int8`` | ``fp16`` | ``fp32``."""
    prec = str(row.get("precision", "")).lower()
    device = str(row.get("device", "cpu"))
    if "int8" in prec:
        return "int8"
    if device.startswith("cuda") and (prec in ("fp16", "bf16", "amp") or "fp16" in prec or "bf16" in prec
                                      or row.get("runner") in ("tensorrt", "ort-trt", "torch-amp",
                                                               "torch-cudagraph")):
        return "fp16"
    return "fp32"


def ceiling_for(row: Mapping[str, Any], ceilings: Mapping[str, Mapping[str, Any]]) -> tuple[str, float] | None:
    """The best measured ceiling (name, GFLOP/s) of the row's precision class on the row's device;
    a kernel marked ``exact: False`` (u8 x s8 without VNNI: its products saturate) is no ceiling,
    since no graph that holds parity can use it."""
    want = row_precision_class(row)
    on_gpu = str(row.get("device", "cpu")).startswith("cuda")
    best: tuple[str, float] | None = None
    for name, c in ceilings.items():
        g = c.get("gflops")
        if (c.get("status") != "ok" or not g or c.get("class") != want or (c.get("device") == "cuda") != on_gpu
                or c.get("exact") is False):
            continue
        if best is None or g > best[1]:
            best = (name, float(g))
    return best


def roofline_columns(flops_per_tile: float | None, tiles_per_s: float, ceiling: tuple[str, float] | None
                     ) -> dict[str, Any]:
    """Achieved GFLOP/s of a row and its % of ``ceiling`` (keys ``gflops_per_s``, ``ceiling``,
    ``ceiling_gflops``, ``percent_of_peak``); empty when the FLOP count is unknown."""
    if not flops_per_tile or tiles_per_s <= 0:
        return {}
    achieved = flops_per_tile * tiles_per_s / 1e9
    out: dict[str, Any] = {"gflops_per_s": round(achieved, 2)}
    if ceiling:
        pct = percent_of_peak(achieved, ceiling[1])
        out.update(ceiling=ceiling[0], ceiling_gflops=round(ceiling[1], 1),
                   percent_of_peak=round(pct, 2) if pct is not None else None)
    return out


def annotate_rows(rows: list[dict[str, Any]], flops_per_tile: float | None,
                  ceilings: Mapping[str, Mapping[str, Any]]) -> None:
    """Add :func:`roofline_columns` to every successful image row in place."""
    for r in rows:
        if r.get("status") == "ok" and r.get("tiles_per_s"):
            r.update(roofline_columns(flops_per_tile, float(r["tiles_per_s"]), ceiling_for(r, ceilings)),
                     ceiling_class=row_precision_class(r))


def headroom(rows: list[Mapping[str, Any]], ceilings: Mapping[str, Mapping[str, Any]],
             eager: str = "torch-eager", graph: str = "image") -> list[dict[str, Any]]:
    """The most ``x eager`` any engine of each precision class can reach on this machine: per
    batch, each class's best ceiling (on the eager row's device) over the eager row's achieved
    GFLOP/s. A target above it cannot be met by that precision here, whatever the graph does
    (the FLOPs are the same). Rows need :func:`roofline_columns` (``gflops_per_s``)."""
    out = []
    for r in rows:
        if r.get("runner") != eager or r.get("status") != "ok" or not r.get("gflops_per_s"):
            continue
        bounds: dict[str, dict[str, Any]] = {}
        for cls in ("fp32", "int8", "fp16"):
            as_cls = {**r, "precision": cls, "runner": ""}
            best = ceiling_for(as_cls, ceilings) if row_precision_class(as_cls) == cls else None
            if best is not None:
                bounds[cls] = {"ceiling": best[0], "ceiling_gflops": round(best[1], 1),
                               "max_speedup_vs_eager": round(best[1] / float(r["gflops_per_s"]), 2)}
        out.append({"graph": graph, "batch": r.get("batch", r.get("prompts")), "eager_gflops_per_s": r["gflops_per_s"],
                    "bounds": bounds})
    return out


# --------------------------------------------------------------------------- measuring
def _best_seconds(fn: Callable[[], Any], repeats: int, budget_s: float,
                  sync: Callable[[], None] | None = None) -> float:
    """Minimum wall time of ``fn`` over ``repeats`` calls (one warm-up; stops early past ``budget_s``)."""
    fn()
    if sync:
        sync()
    best = float("inf")
    t_end = time.perf_counter() + budget_s
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t0)
        if i >= 1 and time.perf_counter() > t_end:
            break
    return best


#: ``MatMulInteger`` weight kinds of the ceiling graphs: s8 (what ``quantize_dynamic`` writes),
#: s8 within 7 bits (``reduce_range``) and u8 (the u8u8 plan).
WEIGHT_KINDS = ("s8", "s7", "u8")


def _ort_one_node(op: str, n: int, threads: int | None, weights: str = "s8") -> tuple[Any, dict[str, np.ndarray]]:
    """A session of a one-node ``MatMul`` (FP32) or ``MatMulInteger`` graph and its feed: u8
    activations times ``weights`` (one of :data:`WEIGHT_KINDS`)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if weights not in WEIGHT_KINDS:
        raise ValueError(f"weights={weights!r}; expected one of {WEIGHT_KINDS}")
    rng = np.random.default_rng(0)
    if op == "MatMul":
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        ta, ty = TensorProto.FLOAT, TensorProto.FLOAT
    else:
        a = rng.integers(0, 255, (n, n), dtype=np.uint8)
        top = 63 if weights == "s7" else 127
        b = (rng.integers(0, 255, (n, n), dtype=np.uint8) if weights == "u8"
             else rng.integers(-top, top, (n, n), dtype=np.int8))
        ta, ty = TensorProto.UINT8, TensorProto.INT32
    node = helper.make_node(op, ["A", "B"], ["Y"])
    graph = helper.make_graph([node], f"roofline_{op}", [helper.make_tensor_value_info("A", ta, [n, n])],
                              [helper.make_tensor_value_info("Y", ty, [n, n])],
                              initializer=[onnx.numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess, {"A": a}


def _ort_gemm(op: str, n: int, threads: int | None, repeats: int, budget_s: float, weights: str = "s8") -> float:
    sess, feed = _ort_one_node(op, n, threads, weights)
    return gflops_per_s(gemm_flops(n, n, n), _best_seconds(lambda: sess.run(None, feed), repeats, budget_s))


def _torch_gemm(dtype: str, n: int, device: str, repeats: int, budget_s: float) -> float:
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    if dtype == "int8":
        a = torch.randint(-127, 127, (n, n), dtype=torch.int8, device=device, generator=g)
        b = torch.randint(-127, 127, (n, n), dtype=torch.int8, device=device, generator=g)

        def fn() -> Any:
            return torch._int_mm(a, b)
    else:
        dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        a = torch.randn(n, n, device=device, dtype=dt, generator=g)
        b = torch.randn(n, n, device=device, dtype=dt, generator=g)

        def fn() -> Any:
            return a @ b
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    with torch.inference_mode():
        return gflops_per_s(gemm_flops(n, n, n), _best_seconds(fn, repeats, budget_s, sync))


def cpu_description() -> dict[str, Any]:
    """CPU model name, the SIMD flags that set the ceilings, and whether it has VNNI."""
    from rsvl_runtime.cpu import cpu_flags, has_vnni

    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    flags = cpu_flags()
    simd = sorted(f for f in flags if f.startswith(("avx", "fma", "amx", "sse4")))
    return {"model": model or "unknown", "vnni": has_vnni(), "simd_flags": simd}


def measure_ceilings(threads: int | None = None, quick: bool = False, device: str = "cpu",
                     budget_s: float = 2.0) -> dict[str, Any]:
    """Measure every GEMM ceiling this machine offers; each entry has ``class`` (fp32/int8/fp16),
    ``device``, ``engine``, ``n``, ``gflops`` and ``status`` (``ok`` | ``error`` | ``skipped``)."""
    import torch

    cpu = cpu_description()
    n = CPU_GEMM_N_QUICK if quick else CPU_GEMM_N
    repeats = 5 if quick else 10
    vnni_note = "VNNI" if cpu["vnni"] else "no VNNI on this CPU"
    # (name, class, device, engine, measure, exact): ``exact`` False marks a kernel whose products
    # saturate on this CPU (u8 x s8 pairs at int16 without VNNI): measured, but no ceiling
    plan: list[tuple[str, str, str, str, Callable[[], float], bool | None]] = [
        ("ort-fp32-matmul", "fp32", "cpu", "onnxruntime MatMul",
         lambda: _ort_gemm("MatMul", n, threads, repeats, budget_s), None),
        ("torch-fp32-matmul", "fp32", "cpu", "torch a @ b",
         lambda: _torch_gemm("fp32", n, "cpu", repeats, budget_s), None),
        ("ort-int8-matmulinteger", "int8", "cpu",
         "onnxruntime MatMulInteger u8s8 (" + ("VNNI" if cpu["vnni"] else
                                               "no VNNI on this CPU: its products saturate, not a ceiling") + ")",
         lambda: _ort_gemm("MatMulInteger", n, threads, repeats, budget_s), bool(cpu["vnni"])),
        # what an INT8 graph with u8 weights runs (int8_plans' first plan without VNNI): exact everywhere
        ("ort-int8-matmulinteger-u8u8", "int8", "cpu", "onnxruntime MatMulInteger u8u8 (no saturation, any CPU)",
         lambda: _ort_gemm("MatMulInteger", n, threads, repeats, budget_s, "u8"), None),
        ("torch-int8-int_mm", "int8", "cpu", f"torch._int_mm ({vnni_note})",
         lambda: _torch_gemm("int8", n, "cpu", repeats, budget_s), None),
    ]
    if device.startswith("cuda") and torch.cuda.is_available():
        gn = GPU_GEMM_N // 2 if quick else GPU_GEMM_N
        plan += [(f"cuda-{dt}-matmul", "fp16", "cuda", f"torch a @ b {dt.upper()} tensor cores",
                  (lambda dt=dt: _torch_gemm(dt, gn, "cuda", repeats, budget_s)), None) for dt in ("fp16", "bf16")]
        plan.append(("cuda-fp32-matmul", "fp32", "cuda", "torch a @ b FP32 (TF32 off)",
                     lambda: _torch_gemm("fp32", gn, "cuda", repeats, budget_s), None))
    out: dict[str, Any] = {}
    for name, cls, dev, engine, fn, exact in plan:
        entry: dict[str, Any] = {"class": cls, "device": dev, "engine": engine,
                                 "n": GPU_GEMM_N if dev == "cuda" and not quick else (GPU_GEMM_N // 2 if dev == "cuda"
                                                                                      else n)}
        if cls == "int8":
            entry["vnni"] = cpu["vnni"]
        if exact is not None:
            entry["exact"] = exact
        try:
            entry.update(status="ok", gflops=float(f"{fn():.4g}"))
        except Exception as e:  # noqa: BLE001 - a missing kernel (e.g. _int_mm on this CPU build) is a result
            entry.update(status="error", reason=f"{type(e).__name__}: {e}")
        out[name] = entry
        log.info("ceiling %-24s %s", name, f"{entry['gflops']:.1f} GFLOP/s" if entry["status"] == "ok"
                 else entry["reason"])
    return {"cpu": cpu, "threads": threads, "ceilings": out}
