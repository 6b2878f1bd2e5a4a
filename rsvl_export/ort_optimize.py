"""An ONNX-Runtime-only, CPU-oriented variant of the image graph (``image.ort.onnx``).

:func:`optimize_for_ort` takes the exported FP32 image graph and

1. fuses what ONNX Runtime's transformer optimizer recognises (LayerNorm + residual add ->
   ``SkipLayerNormalization``, bias + GELU -> ``BiasGelu``, attention where the pattern
   matches) with ``onnxruntime.transformers.optimizer.optimize_model`` at ``opt_level`` 1
   (hardware-agnostic: constant folding and the Python fusions only — never the NCHWc
   layout ops of ``ORT_ENABLE_ALL``, which must not be shipped, see docs/export-notes.md);
2. optionally quantises the weight MatMul/Gemm nodes to INT8 with dynamic (per-batch)
   activation scales (``onnxruntime.quantization.quantize_dynamic``, per-channel weights),
   trying a few node selections from the widest to the narrowest;

and keeps a candidate **only where parity holds** against the FP32 graph on the given inputs:
the fused FP32 graph must pass our ``fp32_logits`` gate, an INT8 graph the ``int8_logits``
gate (cosine >= 0.999 and argmax agreement >= 0.995), and an INT8 graph must also be faster
than the fused FP32 one, or it is not worth shipping. The returned report says what was
tried, what was accepted and why.

The result uses ``com.microsoft`` contrib ops, so it is for ONNX Runtime only (TensorRT and
other runtimes use ``image.onnx`` / ``image.fp16.onnx``). Dynamic INT8 uses u8 x s8
integer GEMMs: exact on CPUs with AVX512-VNNI/AVX-VNNI (as measured here); on older AVX2
CPUs without VNNI the u8s8 products can saturate, so the report records the CPU flags it was
validated on and the runtime should re-check parity there (``check_inputs``).

Command line (for experiments)::

    python -m rsvl_export.ort_optimize BUNDLE_DIR [--kind auto] [--no-int8]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .parity import Gate, compare, gate_for

log = logging.getLogger("rsvl.export.ort")

#: The gate an INT8 candidate must pass against the FP32 graph.
INT8_GATE = Gate("int8_logits", cosine=0.999, argmax_agreement=0.995)

#: What the transformer optimizer needs to know per model kind.
MODEL_KINDS: dict[str, dict[str, Any]] = {
    # open_clip ViT-B/16 branches (tsmnet)
    "vit": {"model_type": "vit", "num_heads": 12, "hidden_size": 768},
    # Swin image encoder (cadformer); heads differ per stage, let the optimizer detect them
    "swin": {"model_type": "swin", "num_heads": 0, "hidden_size": 0},
    # CNN backbones (tsmnet-tiny): only LayerNorm/GELU fusions in the small decoders
    "cnn": {"model_type": "bert", "num_heads": 0, "hidden_size": 0},
    "bert": {"model_type": "bert", "num_heads": 0, "hidden_size": 0},
}

#: Node selections tried for INT8, widest first. ``scope`` filters by the dynamo exporter's
#: ``pkg.torch.onnx.name_scopes`` metadata (module paths); None = every weight MatMul/Gemm.
INT8_PLANS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("int8-all", None),
    ("int8-backbone", (".resblocks.", ".blocks.", ".layers.", ".stages.", ".transformer.")),
    ("int8-mlp", (".mlp.", ".mlp", ".c_fc", ".c_proj", ".fc1", ".fc2")),
)


class OrtOptimizeError(RuntimeError):
    """The source graph cannot be optimised (missing input, unreadable file)."""


# --------------------------------------------------------------------------- helpers
def model_kind_for(config: Mapping[str, Any]) -> str:
    """The optimizer kind of an rsvl model config: ``vit`` | ``swin`` | ``cnn``."""
    if config.get("architecture") == "cadformer" or config.get("image_encoder", {}).get("type") == "swin":
        return "swin"
    bb = config.get("backbone", {})
    if bb.get("type") == "open_clip_vit":
        return "vit"
    return "cnn"


def _kind_params(model_kind: str, src: onnx.ModelProto) -> dict[str, Any]:
    if model_kind == "auto":
        scopes = " ".join(_scopes(n) for n in src.graph.node[:2000])
        model_kind = "vit" if ".resblocks." in scopes else ("swin" if "swin" in scopes.lower() else "cnn")
    if model_kind not in MODEL_KINDS:
        raise OrtOptimizeError(f"model_kind={model_kind!r}; expected auto or one of {sorted(MODEL_KINDS)}")
    return {"kind": model_kind, **MODEL_KINDS[model_kind]}


def _scopes(node: onnx.NodeProto) -> str:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            return p.value
    return node.name


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def cpu_flags() -> dict[str, bool]:
    """The CPU features that decide INT8 exactness/speed (Linux /proc/cpuinfo; empty elsewhere)."""
    from rsvl_runtime.cpu import cpu_flags as flags

    have = flags()
    return {f: f in have for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")}


def _session(path: str | os.PathLike[str], threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # in memory only, never saved
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _as_feed_list(check_inputs: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]]
                  ) -> list[dict[str, np.ndarray]]:
    if isinstance(check_inputs, Mapping):
        return [dict(check_inputs)]
    feeds = [dict(f) for f in check_inputs]
    if not feeds:
        raise OrtOptimizeError("check_inputs is empty: parity needs at least one set of inputs")
    return feeds


def _run_all(sess, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    names = {i.name for i in sess.get_inputs()}
    outs = []
    for f in feeds:
        missing = names - set(f)
        if missing:
            raise OrtOptimizeError(f"check inputs lack {sorted(missing)} (the graph expects {sorted(names)})")
        outs.append(sess.run(None, {k: v for k, v in f.items() if k in names})[0])
    return outs


def _parity(refs: list[np.ndarray], gots: list[np.ndarray], gate: Gate) -> dict[str, Any]:
    """Worst case over the check inputs of our parity metrics, and the gate's verdict."""
    worst: dict[str, float] = {}
    fails: list[str] = []
    for r, g in zip(refs, gots):
        c = compare(r, g, kind="logits", gate=gate)
        fails += c.failed_checks
        for k, v in c.metrics.items():
            if k in ("max_abs", "max_abs_rel_to_range", "nonfinite"):
                worst[k] = max(worst.get(k, -np.inf), float(v))
            elif k in ("cosine", "argmax_agreement"):
                worst[k] = min(worst.get(k, np.inf), float(v))
    return {"gate": gate.name, "passed": not fails, "failed_checks": sorted(set(fails)), **worst}


def _interleaved_latency(sessions: Mapping[str, Any], feed: dict[str, np.ndarray], budget_s: float = 6.0,
                         min_rounds: int = 3, max_rounds: int = 15) -> dict[str, float]:
    """Median latency (ms) of each session on ``feed``, measured round-robin (one warm-up each)."""
    feeds = {}
    for k, s in sessions.items():
        names = {i.name for i in s.get_inputs()}
        feeds[k] = {n: v for n, v in feed.items() if n in names}
        s.run(None, feeds[k])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    t_end = time.perf_counter() + budget_s
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() < t_end):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds[k])
            times[k].append(time.perf_counter() - t0)
        rounds += 1
    return {k: float(np.median(v) * 1e3) for k, v in times.items()}


def _weight_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMul/Gemm nodes whose second input is an initializer (what dynamic INT8 quantises)."""
    inits = {i.name for i in model.graph.initializer}
    consts = {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1
            and (n.input[1] in inits or n.input[1] in consts)]


def _ensure_names(model: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)


# --------------------------------------------------------------------------- steps
def fuse(src: str | os.PathLike[str], dst: str | os.PathLike[str], model_kind: str = "auto",
         opt_level: int = 1) -> dict[str, Any]:
    """Transformer-optimizer fusions of ``src`` into ``dst`` (FP32). Returns op counts and timing."""
    from onnxruntime.transformers.optimizer import optimize_model

    t0 = time.perf_counter()
    model = onnx.load(str(src))
    params = _kind_params(model_kind, model)
    before = _op_counts(model)
    opt = optimize_model(str(src), model_type=params["model_type"], num_heads=params["num_heads"],
                         hidden_size=params["hidden_size"], opt_level=opt_level, use_gpu=False,
                         only_onnxruntime=False)
    out = opt.model
    _ensure_names(out)
    # keep the exporter's metadata (model name, task, graph) and record what was done
    meta = {p.key: p.value for p in out.metadata_props}
    for p in model.metadata_props:
        meta.setdefault(p.key, p.value)
    meta["rsvl_ort_variant"] = "fused"
    del out.metadata_props[:]
    for k, v in meta.items():
        out.metadata_props.add(key=k, value=v)
    onnx.save(out, str(dst))
    after = _op_counts(out)
    fused = {k: v for k, v in after.items() if k in ("Attention", "MultiHeadAttention", "SkipLayerNormalization",
                                                      "BiasGelu", "FastGelu", "Gelu", "BiasSplitGelu",
                                                      "SkipSimplifiedLayerNormalization", "QuickGelu")}
    return {"kind": params["kind"], "model_type": params["model_type"], "num_heads": params["num_heads"],
            "hidden_size": params["hidden_size"], "opt_level": opt_level, "fused_ops": fused,
            "nodes_before": sum(before.values()), "nodes_after": sum(after.values()),
            "seconds": round(time.perf_counter() - t0, 2)}


def quantize_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                  scopes: Sequence[str] | None = None, per_channel: bool = True) -> dict[str, Any]:
    """Dynamic INT8 quantisation of the weight MatMul/Gemm nodes of ``src`` (all of them, or those
    whose module path contains one of ``scopes``). Returns the quantised node count."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    nodes = _weight_matmuls(model)
    if scopes is not None:
        nodes = [n for n in nodes if any(s in _scopes(n) for s in scopes)]
    if not nodes:
        return {"nodes": 0}
    names = [n.name for n in nodes]
    t0 = time.perf_counter()
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=names,
                     per_channel=per_channel, reduce_range=False, weight_type=QuantType.QInt8,
                     extra_options={"MatMulConstBOnly": True})
    q = onnx.load(str(dst))
    meta = {p.key: p.value for p in q.metadata_props}
    meta["rsvl_ort_variant"] = "int8-dynamic"
    del q.metadata_props[:]
    for k, v in meta.items():
        q.metadata_props.add(key=k, value=v)
    onnx.save(q, str(dst))
    return {"nodes": len(names), "per_channel": per_channel, "seconds": round(time.perf_counter() - t0, 2),
            "ops": {k: v for k, v in _op_counts(q).items()
                    if k in ("DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger")}}


# --------------------------------------------------------------------------- main entry
def optimize_for_ort(src_onnx: str | os.PathLike[str], dst_onnx: str | os.PathLike[str], model_kind: str = "auto",
                     check_inputs: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None = None,
                     *, int8: bool = True, threads: int | None = None, min_speedup: float = 1.05,
                     int8_gate: Gate = INT8_GATE, opt_level: int = 1, timing_budget_s: float = 6.0
                     ) -> dict[str, Any]:
    """Write the fastest ONNX-Runtime CPU variant of ``src_onnx`` that keeps parity to ``dst_onnx``.

    Args:
        src_onnx: the exported FP32 image graph (``image.onnx``).
        dst_onnx: where to write the variant (``image.ort.onnx``); always written (at worst a copy
            of the fused or the source graph).
        model_kind: ``auto`` | ``vit`` | ``swin`` | ``cnn`` | ``bert`` (see :func:`model_kind_for`).
        check_inputs: one feed dict (name -> array) or a list of them; the parity inputs. Use
            realistic, normalised tiles and the real vocabulary size; include B >= 2 if the graph
            will run batched.
        int8: try dynamic INT8 (accepted only where ``int8_gate`` holds and it is at least
            ``min_speedup`` x faster than the fused FP32 graph at the first check input).
        threads: ONNX Runtime intra-op threads for the checks (None: ORT's default).
        timing_budget_s: seconds for the round-robin latency comparison of the candidates.

    Returns:
        a JSON-serialisable report: ``variant`` (``source`` | ``fused`` | ``int8-...``), ``fusion``,
        ``attempts`` (each INT8 plan with node count, parity and latency), ``parity`` of the
        written file against the source, ``latency_ms`` per candidate at the first check input,
        ``speedup`` of the written file over the source, ``cpu_flags`` and versions.
    """
    import onnxruntime as ort

    t_start = time.perf_counter()
    src, dst = Path(src_onnx), Path(dst_onnx)
    if not src.is_file():
        raise OrtOptimizeError(f"{src}: no such ONNX file")
    if check_inputs is None:
        raise OrtOptimizeError("check_inputs are required: a variant is only accepted where parity holds")
    feeds = _as_feed_list(check_inputs)
    dst.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"source": str(src), "output": str(dst), "onnxruntime": ort.__version__,
                              "cpu_flags": cpu_flags(), "int8_gate": {"cosine": int8_gate.cosine,
                                                                      "argmax_agreement": int8_gate.argmax_agreement},
                              "check_inputs": [{k: list(v.shape) for k, v in f.items()} for f in feeds],
                              "attempts": [], "latency_ms": {}}
    src_sess = _session(src, threads)
    refs = _run_all(src_sess, feeds)
    identity = {"gate": "identity", "passed": True, "cosine": 1.0, "argmax_agreement": 1.0, "max_abs": 0.0}
    # name -> (path, session, parity); timed together at the end, interleaved, so that load from
    # other processes affects every candidate alike
    cands: dict[str, tuple[Path, Any, dict[str, Any]]] = {"source": (src, src_sess, identity)}

    with tempfile.TemporaryDirectory(prefix="rsvl-ort-", dir=dst.parent) as tmp:
        fused = Path(tmp) / "fused.onnx"
        base = src
        try:
            report["fusion"] = fuse(src, fused, model_kind, opt_level)
            sess = _session(fused, threads)
            par = _parity(refs, _run_all(sess, feeds), gate_for("fp32", "logits"))
            report["fusion"]["parity"] = par
            if par["passed"]:
                cands["fused"] = (fused, sess, par)
                base = fused
            else:
                log.warning("fused graph fails the FP32 gate (%s): not used", "; ".join(par["failed_checks"]))
                del sess
        except Exception as e:  # noqa: BLE001 - the optimizer raises many types
            log.warning("transformer-optimizer fusion failed: %s", e)
            report["fusion"] = {"error": f"{type(e).__name__}: {e}"}

        if int8:
            for name, scopes in INT8_PLANS:
                q = Path(tmp) / f"{name}.onnx"
                attempt: dict[str, Any] = {"name": name, "scopes": list(scopes) if scopes else None}
                report["attempts"].append(attempt)
                try:
                    attempt.update(quantize_int8(base, q, scopes))
                    if not attempt["nodes"]:
                        attempt["result"] = "no weight MatMul/Gemm in scope"
                        continue
                    sess = _session(q, threads)
                    par = _parity(refs, _run_all(sess, feeds), int8_gate)
                    attempt["parity"] = par
                    if par["passed"]:
                        attempt["result"] = "parity ok"
                        cands[name] = (q, sess, par)
                        break  # the widest selection that keeps parity is the one to time
                    attempt["result"] = "rejected: parity " + "; ".join(par["failed_checks"])
                    del sess
                except Exception as e:  # noqa: BLE001
                    attempt["result"] = f"error: {type(e).__name__}: {e}"
                    log.warning("INT8 plan %s failed: %s", name, e)

        lat = _interleaved_latency({k: v[1] for k, v in cands.items()}, feeds[0], budget_s=timing_budget_s)
        report["latency_ms"] = lat
        fp32 = [k for k in ("source", "fused") if k in lat]
        best_name = "source"
        if "fused" in lat and lat["fused"] <= lat["source"] * 1.02:
            best_name = "fused"  # numerically neutral and fewer nodes: keep unless clearly slower
        q_name = next((k for k in lat if k.startswith("int8")), None)
        if q_name:
            att = next(a for a in report["attempts"] if a["name"] == q_name)
            att["latency_ms"] = lat[q_name]
            fastest_fp32 = min(lat[k] for k in fp32)
            if lat[q_name] * min_speedup <= fastest_fp32:
                att["result"] = "accepted"
                best_name = q_name
            else:
                att["result"] = f"rejected: not faster ({lat[q_name]:.1f} ms vs {fastest_fp32:.1f} ms FP32)"
        best_path, _, best_parity = cands[best_name]
        best_ms = lat[best_name]
        for k in list(cands):
            cands.pop(k)
        model = onnx.load(str(best_path))
        meta = {p.key: p.value for p in model.metadata_props}
        meta["rsvl_ort_variant"] = best_name
        meta["rsvl_ort_only"] = "true"
        del model.metadata_props[:]
        for k, v in meta.items():
            model.metadata_props.add(key=k, value=v)
        onnx.save(model, str(dst))
    report.update(variant=best_name, parity=best_parity,
                  speedup=round(report["latency_ms"]["source"] / best_ms, 3) if best_ms > 0 else None,
                  bytes=dst.stat().st_size, op_counts=_op_counts(onnx.load(str(dst))),
                  seconds=round(time.perf_counter() - t_start, 1))
    log.info("image.ort variant: %s, %.1f ms vs %.1f ms source (x%.2f), parity cos %.6f argmax %.4f",
             best_name, best_ms, report["latency_ms"]["source"], report["speedup"] or 0,
             best_parity.get("cosine", 1.0), best_parity.get("argmax_agreement", 1.0))
    return report


# --------------------------------------------------------------------------- bundle helper
def bundle_check_inputs(bundle_dir: str | os.PathLike[str], batches: Sequence[int] = (1, 2),
                        seed: int = 7) -> list[dict[str, np.ndarray]]:
    """Parity inputs for a semantic or referring bundle: normalised synthetic tiles (the same
    generator as the export's parity step) and the bundle's cached default vocabulary, or
    seeded unit vectors when the bundle has none."""
    from rsvl_runtime.bundle import Bundle

    b = Bundle.load(bundle_dir)
    m = b.meta
    tile = b.tile_size
    inputs = m.graphs["image"].inputs
    rng = np.random.default_rng(seed)
    text_emb = None
    if m.vocab_cache:
        with np.load(b.path(m.vocab_cache), allow_pickle=False) as z:
            text_emb = z["text_emb"].astype(np.float32)
    out = []
    for bs in batches:
        tiles = _synthetic(m.modalities, bs, tile, seed + bs)
        feed: dict[str, np.ndarray] = {}
        for name, spec in inputs.items():
            if name in tiles:
                feed[name] = tiles[name]
            elif name == "text_emb":
                if text_emb is None:
                    d = int(spec.shape[-1])
                    e = rng.standard_normal((7, d)).astype(np.float32)
                    text_emb = e / np.linalg.norm(e, axis=1, keepdims=True)
                feed[name] = text_emb
            else:
                raise OrtOptimizeError(f"bundle_check_inputs cannot synthesise input {name!r}; pass check_inputs")
        out.append(feed)
    return out


def _synthetic(modalities: Mapping[str, Any], batch: int, tile: int, seed: int) -> dict[str, np.ndarray]:
    """Normalised synthetic tiles for the bundle's modalities, from the export's generator
    (:func:`rsvl_train.data.synthetic.tiles.synthetic_tiles`, torch-free)."""
    from rsvl_train.data.synthetic.tiles import synthetic_tiles

    return synthetic_tiles(modalities, batch, tile, seed)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rsvl_export.ort_optimize",
                                description="write image.ort.onnx (fused / INT8, parity-gated) beside a bundle's image.onnx")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--kind", default="auto", choices=["auto", *MODEL_KINDS])
    p.add_argument("--out", help="output file (default BUNDLE/image.ort.onnx)")
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from rsvl_runtime.bundle import Bundle

    b = Bundle.load(a.bundle)
    src = b.graph_file("image", "fp32")
    kind = a.kind if a.kind != "auto" else model_kind_for({"architecture": b.meta.architecture})
    rep = optimize_for_ort(src, a.out or Path(a.bundle) / "image.ort.onnx", kind if a.kind != "auto" else "auto",
                           bundle_check_inputs(a.bundle), int8=not a.no_int8, threads=a.threads)
    print(json.dumps(rep, indent=2, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
