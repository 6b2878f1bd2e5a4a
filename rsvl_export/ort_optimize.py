"""ONNX-Runtime-only, CPU-oriented variants of the exported graphs (``image.ort.onnx``,
``text.ort.onnx``).

:func:`optimize_for_ort` takes an exported FP32 graph and

1. fuses transformer blocks into ONNX Runtime contrib ops with onnxscript's rewriter for
   dynamo-exported graphs (``onnxscript.rewriter.ort_fusions.optimize_for_ort``: SDPA ->
   ``MultiHeadAttention``/``Attention``, LayerNorm + residual -> ``SkipLayerNormalization``,
   bias + erf-GELU -> ``BiasGelu``, ``FusedMatMul``); when onnxscript raises, ONNX Runtime's
   transformer optimizer (``onnxruntime.transformers.optimizer.optimize_model``, ``opt_level``
   1, hardware-agnostic — never the NCHWc layout ops of ``ORT_ENABLE_ALL``, see
   docs/export-notes.md) is tried instead. The report lists how many of each fused op the graph
   holds (``fusion.fused_ops``) and what the rewriter applied (``fusion.rules``);
2. optionally quantises weight MatMul/Gemm nodes to INT8 with dynamic activation
   scales (``onnxruntime.quantization.quantize_dynamic``, per-channel weights), trying node
   selections from the widest to the narrowest (:func:`int8_plans`): every weight MatMul; the
   same with ``reduce_range`` (7-bit, no u8s8 saturation without VNNI); every weight MatMul but
   the attention output projections, then but the MLP output projections (less quantisation
   noise in the sum, most of the INT8 speed kept); on a CPU without VNNI,
   first every weight MatMul with u8 weights (``u8u8``: ORT's u8 x u8 kernels widen to int16
   before they multiply, so they cannot saturate, and keep 8-bit weights); the nodes of the
   backbone / MLP modules, selected by their module path (:func:`module_path`: the dynamo
   exporter's ``pkg.torch.onnx.name_scopes`` / ``namespace`` metadata, else the weight's name);
   and every weight MatMul but the most sensitive module groups, which stay FP32 (per-group
   sensitivity = the parity drop when only that group is quantised);

and keeps a candidate **only where parity holds** against the FP32 graph on the given inputs:
the fused FP32 graph must pass our FP32 gate (``fp32_logits`` / ``fp32_embeddings``), an INT8
image graph the ``int8_logits`` gate (cosine >= 0.999 and argmax agreement >= 0.995, over all
the check tiles at once: the share of pixels that keep their class; the agreement at 95 %
confidence over the tiles, so a candidate must clear the threshold by the margin their spread
calls for), an INT8
text graph the ``int8_embeddings`` gate (cosine >= 0.999 for the flattened and the mean
per-prompt embedding) and, where the caller gives a ``downstream`` check, the ``int8_logits``
gate on the image logits computed from its embeddings (the export does: a text embedding close
in cosine can still flip the class of pixels whose margins are small), and an INT8
graph must also be faster than the fused FP32 one, or it is not worth shipping. The returned
report says what was tried, what was accepted and why, and on which CPU (``cpu``: model name
and VNNI flag) — the shipped INT8 variant is valid for that kind of CPU.

The result uses ``com.microsoft`` contrib ops, so it is for ONNX Runtime's CPU provider only
(TensorRT and other runtimes use ``image.onnx`` / ``image.fp16.onnx``). Dynamic INT8 uses u8 x s8
integer GEMMs: exact on CPUs with AVX512-VNNI/AVX-VNNI; on older AVX2 CPUs without VNNI the
u8s8 products can saturate, so the runtime uses the FP32 graph there unless the variant cannot
saturate (u8 or 7-bit weights) or was validated on a CPU without VNNI
(``rsvl_runtime.backends.int8_refusal``).

Command line (for experiments)::

    python -m rsvl_export.ort_optimize BUNDLE_DIR [--kind auto] [--no-int8]
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .fp16 import NAME_SCOPES
from .onnx_export import op_counts
from .parity import Gate, argmax_lower_bound, compare, gate_for

log = logging.getLogger("rsvl.export.ort")

#: The gate an INT8 image graph must pass against the FP32 graph, over all the check tiles at once
#: (pooled: the share of pixels that keep their class, as over a scene), with the argmax agreement
#: held at 95 % confidence over the tiles. Per tile the agreement is a noisy sample: paper tsmnet's
#: random-weight tiles spread 0.9934-0.9963 under one plan (stop 25), so the worst of three tiles
#: decided by which tiles were drawn; and a variant shipped at a pooled 0.99500, exactly the
#: threshold, agreed on 0.9934 of the bench's own tiles. The bound asks the margin that the tiles'
#: spread calls for.
INT8_GATE = Gate("int8_logits", cosine=0.999, argmax_agreement=0.995, argmax_confidence=0.95)

#: Batch sizes of the image check inputs (seven tiles): B >= 2 checks batching, the INT8 gates pool
#: the tiles.
CHECK_BATCHES = (1, 2, 4)

#: The gate an INT8 text graph must pass against the FP32 one (its embeddings); the export also
#: asks the image logits computed from them to pass :data:`INT8_GATE` (``downstream``).
INT8_TEXT_GATE = Gate("int8_embeddings", cosine=0.999, mean_vector_cosine=0.999)

#: (a candidate's outputs, the source graph's outputs; one list per check input) -> a parity dict
#: with ``passed``: a check beyond the graph's own gate (for a text graph: the image logits
#: computed from its embeddings against those from the source's).
DownstreamCheck = Callable[[list[list[np.ndarray]], list[list[np.ndarray]]], dict[str, Any]]

#: Contrib ops the fusions produce (counted in the report, the export log and parity.json).
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
             "BiasGelu", "FastGelu", "Gelu", "QuickGelu", "BiasSplitGelu", "FusedMatMul", "GroupQueryAttention",
             "RotaryEmbedding", "SimplifiedLayerNormalization")

#: What ONNX Runtime's transformer optimizer (the fallback fusion engine) needs per model kind.
MODEL_KINDS: dict[str, dict[str, Any]] = {
    # open_clip ViT-B/16 branches (tsmnet)
    "vit": {"model_type": "vit", "num_heads": 12, "hidden_size": 768},
    # Swin image encoder (cadformer); heads differ per stage, let the optimizer detect them
    "swin": {"model_type": "swin", "num_heads": 0, "hidden_size": 0},
    # CNN backbones (tsmnet-tiny): only LayerNorm/GELU fusions in the small decoders
    "cnn": {"model_type": "bert", "num_heads": 0, "hidden_size": 0},
    "bert": {"model_type": "bert", "num_heads": 0, "hidden_size": 0},
}


@dataclass(frozen=True)
class Int8Plan:
    """One INT8 node selection. ``scopes``: module-path components a node's :func:`module_path`
    must contain (None = every weight MatMul/Gemm); ``keep_fp32``: module-path components whose
    nodes stay FP32 (the rest is quantised); ``sensitivity``: keep the most sensitive module
    groups FP32 (chosen by measurement)."""

    name: str
    scopes: tuple[str, ...] | None = None
    reduce_range: bool = False
    u8_weights: bool = False
    sensitivity: bool = False
    keep_fp32: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)


#: The attention output projections of the encoders we export (open_clip ``attn.out_proj``, timm
#: ``attn.proj``, our decoders' ``self_attn.proj`` / ``cross_attn.proj``, HF BERT's).
ATTENTION_OUTPUTS = ("attn.out_proj", "attn.proj", "self_attn.proj", "cross_attn.proj", "attention.output.dense")

#: The MLP output projections (open_clip ``mlp.c_proj``, timm ``mlp.fc2``, our ``mlp.2`` /
#: ``channel_mlp.2``): 1/3 of a transformer block's weight FLOPs.
MLP_OUTPUTS = ("mlp.c_proj", "mlp.fc2", "mlp.2", "channel_mlp.2")


#: Every weight MatMul with u8 weights: exact without VNNI (see :func:`int8_plans`).
U8U8_PLAN = Int8Plan("int8-all-u8u8", u8_weights=True)

#: Node selections tried for INT8 on a CPU with VNNI, widest first; the first that keeps parity is timed.
INT8_PLANS: tuple[Int8Plan, ...] = (
    Int8Plan("int8-all"),
    Int8Plan("int8-all-reduce-range", reduce_range=True),
    # every weight MatMul but a share of them, so that less quantisation noise adds up: on paper
    # tsmnet (random weights, seed 0, stop 25) int8-all held argmax 0.9944, these 0.9951 and 0.9957
    Int8Plan("int8-attn-out-fp32", keep_fp32=ATTENTION_OUTPUTS),
    Int8Plan("int8-mlp-out-fp32", keep_fp32=MLP_OUTPUTS),
    Int8Plan("int8-backbone", ("resblocks", "blocks", "layers", "stages", "transformer", "encoder", "backbone",
                               "optical_backbone", "sar_backbone", "image_encoder")),
    Int8Plan("int8-mlp", ("mlp", "c_fc", "c_proj", "fc1", "fc2", "ffn", "intermediate")),
    Int8Plan("int8-keep-sensitive-fp32", sensitivity=True),
)


def int8_plans(vnni: bool | None = None) -> tuple[Int8Plan, ...]:
    """The INT8 plans for a CPU (``vnni``: None = this one). Without VNNI, u8 x s8 products
    saturate in pairs at int16 (AVX2 ``vpmaddubsw``), so :data:`U8U8_PLAN` comes first: exact
    there, 8-bit weights, and on the AVX2-only EPYC of stop 24 as accurate as ``reduce_range``
    (tsmnet-tiny argmax 0.9997 vs 0.9975 for u8s8) and faster (86 vs 91 ms at B=1)."""
    if vnni is None:
        from rsvl_runtime.cpu import has_vnni

        vnni = has_vnni()
    if vnni:
        return INT8_PLANS
    # the partial plans keep u8 weights too: exact, and the accuracy of what they keep 8-bit
    return (U8U8_PLAN, *(replace(p, name=f"{p.name}-u8u8", u8_weights=True) if p.keep_fp32 else p
                         for p in INT8_PLANS))


def whole_graph_plans(vnni: bool | None = None) -> tuple[Int8Plan, ...]:
    """The plans of :func:`int8_plans` that quantise every weight MatMul (no scopes, no
    sensitivity search): what the export tries on a text graph, which runs once per vocabulary
    (its embeddings are cached), so only a whole-graph speed-up is worth the export's time (the
    five plans took 165 s on paper ``tsmnet``'s CLIP text tower at stop 25, none held parity)."""
    return tuple(p for p in int8_plans(vnni) if p.scopes is None and not p.sensitivity and not p.keep_fp32)


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
        paths = " ".join(module_path(n) for n in src.graph.node[:2000])
        model_kind = "vit" if "resblocks" in paths else ("swin" if "swin" in paths.lower() else "cnn")
    if model_kind not in MODEL_KINDS:
        raise OrtOptimizeError(f"model_kind={model_kind!r}; expected auto or one of {sorted(MODEL_KINDS)}")
    return {"kind": model_kind, **MODEL_KINDS[model_kind]}


_NAMESPACE_PATH = re.compile(r"/?([A-Za-z_][\w.]*): [\w.]+")


def module_path(node: onnx.NodeProto, weight_names: Mapping[str, str] | None = None) -> str:
    """The dotted module path of ``node`` (``model.fuse.0.in1``), from what the dynamo exporter
    records on each node: ``pkg.torch.onnx.name_scopes`` (a list whose last entry is the op,
    the one before it the innermost module), else ``namespace`` (``: Cls/path: Cls/...``), else
    the name of its weight initializer (``weight_names``: node name -> initializer, without
    ``.weight``), else the node name. Nodes rewritten by a fusion keep the metadata."""
    meta = {p.key: p.value for p in node.metadata_props}
    scopes = meta.get(NAME_SCOPES)
    if scopes:
        try:
            items = [s for s in ast.literal_eval(scopes) if isinstance(s, str) and s]
        except (ValueError, SyntaxError):
            items = []
        if len(items) >= 2:
            return items[-2]
        if items:
            return items[-1]
    ns = meta.get("namespace")
    if ns:
        paths = [m.group(1) for m in _NAMESPACE_PATH.finditer(ns) if "." in m.group(1) or m.group(1) == "model"]
        paths = [p for p in paths if not p.startswith(("aten.", "torch."))]
        if paths:
            return paths[-1]
    if weight_names and node.name in weight_names:
        w = weight_names[node.name]
        return w.removesuffix(".weight")
    return node.name


def in_scopes(path: str, scopes: Sequence[str]) -> bool:
    """Whether the dotted ``path`` has one of ``scopes`` as a whole component (or a dotted run of
    components): ``blocks`` matches ``model.backbone.blocks.3.mlp`` but not ``model.resblocks``."""
    parts = f".{path}."
    return any(f".{s.strip('.')}." in parts for s in scopes)


def fused_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many of each fused contrib op (:data:`FUSED_OPS`) ``model`` holds (zeros left out)."""
    return {k: v for k, v in op_counts(model).items() if k in FUSED_OPS}


def cpu_flags() -> dict[str, bool]:
    """The CPU features that decide INT8 exactness/speed (Linux /proc/cpuinfo; empty elsewhere)."""
    from rsvl_runtime.cpu import cpu_flags as flags

    have = flags()
    return {f: f in have for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")}


def cpu_identity() -> dict[str, Any]:
    """The CPU a variant was validated on: model name (``/proc/cpuinfo``) and whether it has VNNI."""
    from rsvl_runtime.cpu import has_vnni

    name = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    return {"model": name, "vnni": has_vnni()}


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


def _run_all(sess, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Every output of ``sess`` for each feed."""
    names = {i.name for i in sess.get_inputs()}
    outs = []
    for f in feeds:
        missing = names - set(f)
        if missing:
            raise OrtOptimizeError(f"check inputs lack {sorted(missing)} (the graph expects {sorted(names)})")
        outs.append(sess.run(None, {k: v for k, v in f.items() if k in names}))
    return outs


def _pool(outs: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """The check inputs' outputs joined along the batch axis (one "input" holding every tile or
    prompt), where each output's other axes agree across inputs; else ``outs`` unchanged."""
    if len(outs) < 2 or any(len(o) != len(outs[0]) for o in outs):
        return outs
    joined = []
    for i in range(len(outs[0])):
        parts = [o[i] for o in outs]
        if any(p.ndim == 0 or p.shape[1:] != parts[0].shape[1:] for p in parts):
            return outs
        joined.append(np.concatenate(parts, axis=0))
    return [joined]


def _parity(refs: list[list[np.ndarray]], gots: list[list[np.ndarray]], gate: Gate, kind: str = "logits",
            pooled: bool = False) -> dict[str, Any]:
    """Worst case over the check inputs and outputs of our parity metrics, and the gate's verdict;
    ``pooled``: over all check inputs at once (see :data:`INT8_GATE`)."""
    if pooled:
        refs, gots = _pool(refs), _pool(gots)
    worst: dict[str, float] = {}
    fails: list[str] = []
    for rs, gs in zip(refs, gots):
        for r, g in zip(rs, gs):
            c = compare(r, g, kind=kind, gate=gate)
            fails += c.failed_checks
            for k, v in c.metrics.items():
                if k in ("max_abs", "max_abs_rel_to_range", "nonfinite"):
                    worst[k] = max(worst.get(k, -np.inf), float(v))
                elif k in ("cosine", "argmax_agreement", "mean_vector_cosine", "min_vector_cosine",
                           "argmax_tile_min"):
                    worst[k] = min(worst.get(k, np.inf), float(v))
            low = argmax_lower_bound(c.metrics, gate.argmax_confidence) if gate.argmax_confidence else None
            if low is not None:
                if low < worst.get("argmax_agreement_lower", np.inf):
                    worst.update(argmax_agreement_lower=low, tiles=c.metrics["tiles"],
                                 argmax_confidence=gate.argmax_confidence)
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


def weight_matmul_paths(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> :func:`module_path` of every weight MatMul/Gemm (names made unique first)."""
    _ensure_names(model)
    nodes = _weight_matmuls(model)
    weights = {n.name: n.input[1] for n in nodes}
    return {n.name: module_path(n, weights) for n in nodes}


def select_nodes(model: onnx.ModelProto, scopes: Sequence[str] | None = None,
                 keep_fp32: Sequence[str] = ()) -> list[str]:
    """Names of the weight MatMul/Gemm nodes to quantise: all of them, or those whose module path
    has one of ``scopes`` as a component, minus those with one of ``keep_fp32`` (see
    :func:`in_scopes`)."""
    paths = weight_matmul_paths(model)
    return [n for n, p in paths.items() if (scopes is None or in_scopes(p, scopes))
            and not (keep_fp32 and in_scopes(p, keep_fp32))]


def groups(paths: Mapping[str, str], depth: int | None = None, max_groups: int = 24) -> dict[str, list[str]]:
    """Weight nodes grouped by module-path prefix (the parent module of each Linear, coarsened
    until there are at most ``max_groups`` groups); ``depth`` fixes the prefix length instead."""
    def by(d: int | None) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for n, p in paths.items():
            parts = p.split(".")
            key = ".".join(parts[:d] if d is not None else parts[:-1] or parts)
            out.setdefault(key, []).append(n)
        return out

    if depth is not None:
        return by(depth)
    g = by(None)
    d = max((len(p.split(".")) for p in paths.values()), default=1)
    while len(g) > max_groups and d > 1:
        d -= 1
        g = by(d)
    return g


def _ensure_names(model: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)


def _set_meta(model: onnx.ModelProto, **values: str) -> None:
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update(values)
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)


# --------------------------------------------------------------------------- steps
def _fuse_onnxscript(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort as ort_fusions

    fused, counts = ort_fusions(ir.from_proto(model))
    return ir.to_proto(fused), {k: int(v) for k, v in counts.items() if v}


def _fuse_ort_transformers(src: Path, params: Mapping[str, Any], opt_level: int) -> onnx.ModelProto:
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(src), model_type=params["model_type"], num_heads=params["num_heads"],
                         hidden_size=params["hidden_size"], opt_level=opt_level, use_gpu=False,
                         only_onnxruntime=False)
    return opt.model


def fuse(src: str | os.PathLike[str], dst: str | os.PathLike[str], model_kind: str = "auto",
         opt_level: int = 1, engine: str = "onnxscript") -> dict[str, Any]:
    """Fusions of ``src`` into ``dst`` (FP32): ``engine`` ``onnxscript`` (the ORT fusion rules for
    dynamo-exported graphs; falls back to the transformer optimizer when it raises) or
    ``ort-transformers``. Returns the fused-op counts, the rules applied, node counts and timing."""
    t0 = time.perf_counter()
    model = onnx.load(str(src))
    params = _kind_params(model_kind, model)
    before = op_counts(model)
    rules: dict[str, int] = {}
    used = engine
    out: onnx.ModelProto | None = None
    if engine == "onnxscript":
        try:
            out, rules = _fuse_onnxscript(model)
        except Exception as e:  # noqa: BLE001 - the rewriter raises many types
            log.warning("onnxscript ORT fusions failed (%s: %s); trying onnxruntime.transformers", type(e).__name__, e)
            used = "ort-transformers"
    elif engine != "ort-transformers":
        raise OrtOptimizeError(f"fusion engine={engine!r}; expected onnxscript or ort-transformers")
    if out is None:
        out = _fuse_ort_transformers(Path(src), params, opt_level)
    _ensure_names(out)
    # keep the exporter's metadata (model name, task, graph) and record what was done
    meta = {p.key: p.value for p in out.metadata_props}
    for p in model.metadata_props:
        meta.setdefault(p.key, p.value)
    del out.metadata_props[:]
    for k, v in meta.items():
        out.metadata_props.add(key=k, value=v)
    _set_meta(out, rsvl_ort_variant="fused")
    onnx.save(out, str(dst))
    after = op_counts(out)
    return {"engine": used, "kind": params["kind"], "model_type": params["model_type"],
            "opt_level": opt_level if used == "ort-transformers" else None, "rules": rules,
            "fused_ops": fused_op_counts(out), "nodes_before": sum(before.values()),
            "nodes_after": sum(after.values()), "seconds": round(time.perf_counter() - t0, 2)}


def quantize_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                  scopes: Sequence[str] | None = None, per_channel: bool = True, reduce_range: bool = False,
                  nodes: Sequence[str] | None = None, u8_weights: bool = False,
                  keep_fp32: Sequence[str] = ()) -> dict[str, Any]:
    """Dynamic INT8 quantisation of weight MatMul/Gemm nodes of ``src``: ``nodes`` by name, or
    :func:`select_nodes` with ``scopes`` (None = all) and ``keep_fp32``; s8 weights, or u8 with
    ``u8_weights``. Returns the quantised node count (``fp32_nodes``: the weight MatMuls left
    FP32) and the settings."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    names = list(nodes) if nodes is not None else select_nodes(model, scopes, keep_fp32)
    fp32_nodes = len(_weight_matmuls(model)) - len(names)
    if not names:
        return {"nodes": 0, "fp32_nodes": fp32_nodes}
    t0 = time.perf_counter()
    # names made unique by select_nodes: quantise that copy, not the file on disk
    with tempfile.TemporaryDirectory(prefix="rsvl-q-", dir=Path(dst).parent) as tmp:
        named = Path(tmp) / "named.onnx"
        _ensure_names(model)
        onnx.save(model, str(named))
        quantize_dynamic(str(named), str(dst), op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=names,
                         per_channel=per_channel, reduce_range=reduce_range,
                         weight_type=QuantType.QUInt8 if u8_weights else QuantType.QInt8,
                         extra_options={"MatMulConstBOnly": True})
    q = onnx.load(str(dst))
    _set_meta(q, rsvl_ort_variant="int8-dynamic")
    onnx.save(q, str(dst))
    return {"nodes": len(names), "fp32_nodes": fp32_nodes, "per_channel": per_channel, "reduce_range": reduce_range,
            "weights": "u8" if u8_weights else "s8",
            "seconds": round(time.perf_counter() - t0, 2),
            "ops": {k: v for k, v in op_counts(q).items()
                    if k in ("DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger")}}


def sensitivity(base: Path, refs: list[list[np.ndarray]], feeds: list[dict[str, np.ndarray]], tmp: Path,
                threads: int | None, max_groups: int = 24, gate: Gate = INT8_GATE,
                kind: str = "logits") -> list[dict[str, Any]]:
    """Per module group: the parity drop (1 - cosine, 1 - argmax agreement) at the first check
    input when only that group is quantised; most sensitive first."""
    model = onnx.load(str(base))
    gmap = groups(weight_matmul_paths(model), max_groups=max_groups)
    out = []
    for i, (g, names) in enumerate(gmap.items()):
        q = tmp / f"sens_{i}.onnx"
        quantize_int8(base, q, nodes=names)
        par = _parity(refs[:1], _run_all(_session(q, threads), feeds[:1]), gate, kind, pooled=True)
        out.append({"group": g, "nodes": len(names), "cosine_drop": 1 - par.get("cosine", 1.0),
                    "argmax_drop": 1 - par.get("argmax_agreement", 1.0)})
        q.unlink(missing_ok=True)
    return sorted(out, key=lambda r: (r["argmax_drop"], r["cosine_drop"]), reverse=True)


def logits_downstream(image_onnx: str | os.PathLike[str],
                      feeds_for: Callable[[list[np.ndarray]], list[dict[str, np.ndarray]]],
                      threads: int | None = None, gate: Gate = INT8_GATE) -> DownstreamCheck:
    """The downstream check of a text-graph candidate: the image graph's logits from its outputs
    at the first check input (``feeds_for(outputs)``: the image feeds holding them) against the
    logits from the source text graph's outputs there, under ``gate``. The image session and the
    reference logits are made at the first call: only a candidate that passed its own gate pays
    for them (paper models: a GB-sized graph, seconds per tile)."""
    state: dict[str, Any] = {}

    def check(outs: list[list[np.ndarray]], refs: list[list[np.ndarray]]) -> dict[str, Any]:
        if not state:
            state["sess"] = _session(image_onnx, threads)
            state["ref"] = _run_all(state["sess"], feeds_for(refs[0]))
        return _parity(state["ref"], _run_all(state["sess"], feeds_for(outs[0])), gate, pooled=True)

    return check


# --------------------------------------------------------------------------- main entry
def _check(q: Path, threads: int | None, refs: list[list[np.ndarray]], feeds: list[dict[str, np.ndarray]],
           gate: Gate, kind: str, downstream: DownstreamCheck | None) -> tuple[Any, dict[str, Any]]:
    """A quantised graph's session and parity: its own gate, then ``downstream`` where given."""
    sess = _session(q, threads)
    outs = _run_all(sess, feeds)
    par = _parity(refs, outs, gate, kind, pooled=True)
    if par["passed"] and downstream is not None:
        down = downstream(outs, refs)
        par["downstream"] = down
        if not down["passed"]:
            par["passed"] = False
            par["failed_checks"] = [f"downstream {c}" for c in down.get("failed_checks", ["failed"])]
    return sess, par


def _try_plan(plan: Int8Plan, base: Path, tmp: Path, refs: list[list[np.ndarray]],
              feeds: list[dict[str, np.ndarray]], threads: int | None, gate: Gate,
              attempt: dict[str, Any], kind: str = "logits",
              downstream: DownstreamCheck | None = None) -> tuple[Path, Any, dict[str, Any]] | None:
    """Quantise ``base`` by ``plan`` and check parity; (path, session, parity) when it holds."""
    q = tmp / f"{plan.name}.onnx"
    if plan.sensitivity:
        sens = sensitivity(base, refs, feeds, tmp, threads, gate=gate, kind=kind)
        attempt["sensitivity"] = [{**r, "cosine_drop": float(f"{r['cosine_drop']:.3g}"),
                                   "argmax_drop": float(f"{r['argmax_drop']:.3g}")} for r in sens[:8]]
        gmap = groups(weight_matmul_paths(onnx.load(str(base))))
        order = [r["group"] for r in sens]
        for keep in (1, 2, 4, 8):  # the most sensitive groups stay FP32
            if keep >= len(order):
                break
            kept = set(order[:keep])
            names = [n for g, ns in gmap.items() if g not in kept for n in ns]
            attempt.update(quantize_int8(base, q, nodes=names), fp32_groups=sorted(kept))
            sess, par = _check(q, threads, refs, feeds, gate, kind, downstream)
            attempt["parity"] = par
            if par["passed"]:
                return q, sess, par
        return None
    if plan.keep_fp32 and not any(in_scopes(p, plan.keep_fp32) for p in
                                  weight_matmul_paths(onnx.load(str(base), load_external_data=False)).values()):
        attempt["result"] = "no weight MatMul/Gemm matches keep_fp32 (the same graph as int8-all)"
        return None
    attempt.update(quantize_int8(base, q, plan.scopes, reduce_range=plan.reduce_range, u8_weights=plan.u8_weights,
                                 keep_fp32=plan.keep_fp32))
    if not attempt["nodes"]:
        attempt["result"] = "no weight MatMul/Gemm in scope"
        return None
    sess, par = _check(q, threads, refs, feeds, gate, kind, downstream)
    attempt["parity"] = par
    return (q, sess, par) if par["passed"] else None


def optimize_for_ort(src_onnx: str | os.PathLike[str], dst_onnx: str | os.PathLike[str], model_kind: str = "auto",
                     check_inputs: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None = None,
                     *, int8: bool = True, threads: int | None = None, min_speedup: float = 1.05,
                     int8_gate: Gate | None = None, opt_level: int = 1, timing_budget_s: float = 6.0,
                     output_kind: str = "logits", plans: Sequence[Int8Plan] | None = None,
                     fusion_engine: str = "onnxscript", fused_tolerance: float = 1.0,
                     downstream: DownstreamCheck | None = None) -> dict[str, Any]:
    """Write the fastest ONNX-Runtime CPU variant of ``src_onnx`` that keeps parity to ``dst_onnx``.

    Args:
        src_onnx: the exported FP32 graph (``image.onnx`` or ``text.onnx``).
        dst_onnx: where to write the variant (``image.ort.onnx``); always written (at worst a copy
            of the fused or the source graph).
        model_kind: ``auto`` | ``vit`` | ``swin`` | ``cnn`` | ``bert`` (see :func:`model_kind_for`).
        check_inputs: one feed dict (name -> array) or a list of them; the parity inputs. Use
            realistic, normalised tiles and the real vocabulary size; include B >= 2 if the graph
            will run batched.
        int8: try dynamic INT8 (accepted only where ``int8_gate`` holds and it is at least
            ``min_speedup`` x faster than the fused FP32 graph at the first check input).
        int8_gate: None: :data:`INT8_GATE` for logits, :data:`INT8_TEXT_GATE` for embeddings.
        threads: ONNX Runtime intra-op threads for the checks (None: ORT's default).
        timing_budget_s: seconds for the round-robin latency comparison of the candidates.
        output_kind: ``logits`` (image graphs) or ``embedding`` (text graphs): the parity gates.
        plans: the INT8 node selections, tried in order (None: :func:`int8_plans` of this CPU).
        fusion_engine: ``onnxscript`` (default) or ``ort-transformers`` (see :func:`fuse`).
        fused_tolerance: the fused graph is shipped over the source only when its latency is at
            most the source's times this factor (default 1.0: not slower). The runtime prefers
            ``image.ort.onnx`` on the CPU, so a fused graph that measures slower must not be it (paper
            ``tsmnet`` at stop 19: fused 923 ms vs source 890 ms here, 818 vs 745 ms in the bench).
        downstream: a further check of each INT8 candidate's outputs (see :data:`DownstreamCheck`);
            its result is ``parity.downstream`` of the attempt.

    Returns:
        a JSON-serialisable report: ``variant`` (``source`` | ``fused`` | ``int8-...``), ``fusion``
        (engine, rules applied, ``fused_ops`` counts, parity), ``attempts`` (each INT8 plan with
        node count, parity and latency), ``parity`` of the written file against the source,
        ``latency_ms`` per candidate at the first check input, ``speedup`` of the written file
        over the source, ``fused_ops`` of the written file, ``cpu`` (model, vnni), ``cpu_flags``;
        for an INT8 variant also ``weights`` (``u8``/``s8``) and ``reduce_range``.
    """
    import onnxruntime as ort

    t_start = time.perf_counter()
    kind = "embeddings" if output_kind in ("embedding", "embeddings") else output_kind
    if int8_gate is None:
        int8_gate = INT8_TEXT_GATE if kind == "embeddings" else INT8_GATE
    src, dst = Path(src_onnx), Path(dst_onnx)
    if not src.is_file():
        raise OrtOptimizeError(f"{src}: no such ONNX file")
    if check_inputs is None:
        raise OrtOptimizeError("check_inputs are required: a variant is only accepted where parity holds")
    feeds = _as_feed_list(check_inputs)
    dst.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"source": str(src), "output": str(dst), "onnxruntime": ort.__version__,
                              "cpu": cpu_identity(), "cpu_flags": cpu_flags(),
                              "int8_gate": {"cosine": int8_gate.cosine,
                                            "argmax_agreement": int8_gate.argmax_agreement,
                                            "argmax_confidence": int8_gate.argmax_confidence},
                              "check_inputs": [{k: list(v.shape) for k, v in f.items()} for f in feeds],
                              "attempts": [], "latency_ms": {}}
    src_sess = _session(src, threads)
    refs = _run_all(src_sess, feeds)
    identity = {"gate": "identity", "passed": True, "cosine": 1.0, "argmax_agreement": 1.0, "max_abs": 0.0}
    # name -> (path, session, parity); timed together at the end, interleaved, so that load from
    # other processes affects every candidate alike
    cands: dict[str, tuple[Path, Any, dict[str, Any]]] = {"source": (src, src_sess, identity)}

    with tempfile.TemporaryDirectory(prefix="rsvl-ort-", dir=dst.parent) as tmp_dir:
        tmp = Path(tmp_dir)
        fused = tmp / "fused.onnx"
        base = src
        try:
            report["fusion"] = fuse(src, fused, model_kind, opt_level, engine=fusion_engine)
            sess = _session(fused, threads)
            par = _parity(refs, _run_all(sess, feeds), gate_for("fp32", kind), kind)
            report["fusion"]["parity"] = par
            if par["passed"]:
                cands["fused"] = (fused, sess, par)
                base = fused
            else:
                log.warning("fused graph fails the FP32 gate (%s): not used", "; ".join(par["failed_checks"]))
                del sess
        except Exception as e:  # noqa: BLE001 - the optimizers raise many types
            log.warning("fusion failed: %s", e)
            report["fusion"] = {"error": f"{type(e).__name__}: {e}"}

        if int8:
            for plan in int8_plans() if plans is None else plans:
                attempt: dict[str, Any] = {"name": plan.name, "scopes": list(plan.scopes) if plan.scopes else None}
                if plan.keep_fp32:
                    attempt["keep_fp32"] = list(plan.keep_fp32)
                report["attempts"].append(attempt)
                try:
                    got = _try_plan(plan, base, tmp, refs, feeds, threads, int8_gate, attempt, kind, downstream)
                except Exception as e:  # noqa: BLE001
                    attempt["result"] = f"error: {type(e).__name__}: {e}"
                    log.warning("INT8 plan %s failed: %s", plan.name, e)
                    continue
                if got is not None:
                    attempt["result"] = "parity ok"
                    cands[plan.name] = got
                    break  # the widest selection that keeps parity is the one to time
                if "result" not in attempt:
                    attempt["result"] = "rejected: parity " + "; ".join(attempt.get("parity", {})
                                                                        .get("failed_checks", ["not reached"]))

        lat = _interleaved_latency({k: v[1] for k, v in cands.items()}, feeds[0], budget_s=timing_budget_s)
        report["latency_ms"] = lat
        fp32 = [k for k in ("source", "fused") if k in lat]
        best_name = "source"
        if "fused" in lat and lat["fused"] <= lat["source"] * fused_tolerance:
            best_name = "fused"  # parity-held and fewer nodes: keep unless clearly slower
        q_name = next((k for k in lat if k.startswith("int8")), None)
        if q_name:
            att = next(a for a in report["attempts"] if a["name"] == q_name)
            att["latency_ms"] = lat[q_name]
            fastest_fp32 = min(lat[k] for k in fp32)
            if lat[q_name] * min_speedup <= fastest_fp32:
                att["result"] = "accepted"
                best_name = q_name
                # what the runtime's guard reads: u8 or 7-bit weights cannot saturate without VNNI
                report.update(weights=att["weights"], reduce_range=att["reduce_range"])
            else:
                att["result"] = f"rejected: not faster ({lat[q_name]:.1f} ms vs {fastest_fp32:.1f} ms FP32)"
        best_path, _, best_parity = cands[best_name]
        best_ms = lat[best_name]
        cands.clear()
        model = onnx.load(str(best_path))
        _set_meta(model, rsvl_ort_variant=best_name, rsvl_ort_only="true")
        onnx.save(model, str(dst))
    written = onnx.load(str(dst))
    report.update(variant=best_name, parity=best_parity,
                  speedup=round(report["latency_ms"]["source"] / best_ms, 3) if best_ms > 0 else None,
                  bytes=dst.stat().st_size, op_counts=op_counts(written), fused_ops=fused_op_counts(written),
                  seconds=round(time.perf_counter() - t_start, 1))
    log.info("%s variant: %s, %.1f ms vs %.1f ms source (x%.2f), fused ops %s, parity cos %.6f", dst.name,
             best_name, best_ms, report["latency_ms"]["source"], report["speedup"] or 0, report["fused_ops"],
             best_parity.get("cosine", 1.0))
    return report


# --------------------------------------------------------------------------- bundle helper
def bundle_check_inputs(bundle_dir: str | os.PathLike[str], batches: Sequence[int] = CHECK_BATCHES,
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
