"""FP16 variant of an exported ONNX graph, with the numerically fragile ops kept in FP32.

TensorRT >= 10.12 builds *strongly typed* networks: the precision of every tensor comes from
the ONNX graph, so the FP16 engine is only as good as this conversion. :func:`convert_fp16`
uses onnxconverter-common with

* an op block list: normalisations (LayerNormalization & co.), Softmax, reductions,
  Pow/Sqrt/Exp/Log/Reciprocal and onnxconverter-common's own defaults (Resize, Range, TopK...)
  stay FP32;
* a node block list: every ``Div`` whose divisor comes from a norm (``x / ||x||`` of the
  cosine head, traced back through Clip/Max/Expand/Cast/...) stays FP32;
* ``keep_io_types=True`` — inputs and outputs stay float32.

and then *verifies* instead of trusting it (``docs/export-notes.md``, FP16 on CPU): output and input dtypes are
float32 (a Cast is inserted when the converter still declared FP16, which it does when the
last op is blocked), the blocked nodes really compute in FP32, ``onnx.checker`` passes, and
ONNX Runtime creates a session with ``ORT_ENABLE_ALL`` (checked in a child process, because
a LayerNormalization in FP16 segfaults ORT instead of raising).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import TensorProto, helper

log = logging.getLogger(__name__)

#: Ops we keep in FP32 on top of onnxconverter-common's DEFAULT_OP_BLOCK_LIST.
FP32_OPS: tuple[str, ...] = (
    "LayerNormalization", "GroupNormalization", "InstanceNormalization", "RMSNormalization",
    "BatchNormalization", "LpNormalization", "SimplifiedLayerNormalization",
    "Softmax", "LogSoftmax",
    "ReduceMean", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceProd",
    "Pow", "Sqrt", "Reciprocal", "Exp", "Log",
)

#: Ops a norm passes through on its way to a Div (``x / clamp(||x||, eps).expand_as(x)``).
_NORM_PASS_THROUGH = {"Clip", "Max", "Expand", "Cast", "Unsqueeze", "Reshape", "Add",
                      "Identity", "Squeeze", "Mul"}
_NORM_SOURCES = {"ReduceL2", "Sqrt", "ReduceSumSquare", "LpNormalization", "Pow"}
_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


class FP16ConversionError(RuntimeError):
    """The FP16 graph breaks one of our rules (dtype of an IO, blocked op in FP16, checker, ORT)."""


@dataclass
class FP16Result:
    """What :func:`convert_fp16_detailed` did."""

    path: str
    kept_fp32_ops: list[str]
    kept_fp32_nodes: list[str]
    fp16_nodes: int
    casts_added_for_outputs: list[str] = field(default_factory=list)


def _div_of_norm_nodes(graph: onnx.GraphProto, max_hops: int = 6) -> list[str]:
    """Names of the Div nodes whose divisor is produced by a norm, plus the pass-through nodes
    (Clip/Max/Expand/...) between the norm and the Div, so ``x / clamp(||x||)`` stays FP32."""
    producer = {o: n for n in graph.node for o in n.output}
    found: list[str] = []
    for n in graph.node:
        if n.op_type != "Div" or len(n.input) < 2:
            continue
        # breadth-first walk up the divisor, remembering the path of pass-through nodes
        frontier: list[tuple[str, tuple[str, ...]]] = [(n.input[1], ())]
        path: tuple[str, ...] | None = None
        for _ in range(max_hops):
            nxt: list[tuple[str, tuple[str, ...]]] = []
            for t, via in frontier:
                p = producer.get(t)
                if p is None:
                    continue
                if p.op_type in _NORM_SOURCES:
                    path = via
                    break
                if p.op_type in _NORM_PASS_THROUGH:
                    nxt.extend((x, (*via, p.name)) for x in p.input if x)
            if path is not None or not nxt:
                break
            frontier = nxt
        if path is not None:
            found.extend([n.name, *path])
    return list(dict.fromkeys(found))


def _ensure_node_names(graph: onnx.GraphProto) -> None:
    used = {n.name for n in graph.node if n.name}
    for i, n in enumerate(graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.value_info, *g.input, *g.output]}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


def _fix_io_types(model: onnx.ModelProto, want: dict[str, int]) -> list[str]:
    """Make every graph output declared with the original float dtype; insert a Cast when needed.

    Returns the names of outputs that got a Cast."""
    g = model.graph
    fixed: list[str] = []
    for vi in g.output:
        target = want.get(vi.name)
        if target is None or vi.type.tensor_type.elem_type == target:
            continue
        pre = f"{vi.name}__fp16_pre_cast"
        for n in g.node:
            for i, o in enumerate(n.output):
                if o == vi.name:
                    n.output[i] = pre
            for i, x in enumerate(n.input):
                if x == vi.name:
                    n.input[i] = pre
        g.node.append(helper.make_node("Cast", [pre], [vi.name], to=target, name=f"{vi.name}__to_fp32"))
        vi.type.tensor_type.elem_type = target
        for v in g.value_info:
            if v.name == vi.name:
                v.name = pre
        fixed.append(vi.name)
    return fixed


def check_ort_loads(path: str | os.PathLike[str], in_subprocess: bool = True, timeout: float = 300.0) -> None:
    """Create an ONNX Runtime CPU session with ORT_ENABLE_ALL; raise if that fails or crashes.

    In a child process by default, so a segfault (FP16 LayerNormalization) becomes an error
    message instead of killing the exporter."""
    code = ("import onnxruntime as ort, sys\n"
            "so = ort.SessionOptions(); so.log_severity_level = 3\n"
            "so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL\n"
            "ort.InferenceSession(sys.argv[1], so, providers=['CPUExecutionProvider'])\n")
    if not in_subprocess:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        how = (f"crashed with signal {-proc.returncode}" if proc.returncode < 0
               else f"failed (exit {proc.returncode})")
        raise FP16ConversionError(f"ONNX Runtime session creation with ORT_ENABLE_ALL {how} for {path}: "
                                  f"{proc.stderr.strip()[-2000:]}\nA LayerNormalization in FP16 is the known "
                                  "cause of a crash; keep it in the op block list")


def _fix_cast_targets(model: onnx.ModelProto) -> int:
    """Make ``Cast(to=FLOAT)`` nodes whose output the converter declared FLOAT16 cast to FLOAT16.

    onnxconverter-common rewrites the value_info of a Cast's output (e.g. an int mask cast to
    float inside attention) to FLOAT16 but leaves the ``to`` attribute at FLOAT, which the
    checker rejects. The consumers were converted to FP16, so FLOAT16 is the consistent fix.
    Returns the number of nodes changed."""
    declared = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    changed = 0
    for n in model.graph.node:
        if n.op_type != "Cast" or not n.output or declared.get(n.output[0]) != TensorProto.FLOAT16:
            continue
        for a in n.attribute:
            if a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
                changed += 1
    return changed


#: Metadata key where the dynamo exporter records the module path of a node.
NAME_SCOPES = "pkg.torch.onnx.name_scopes"


def nodes_outside_modules(graph: onnx.GraphProto, modules: Sequence[str]) -> list[str]:
    """Names of nodes that do not belong to any of ``modules`` (paths under the exported
    wrapper's ``model``, e.g. ``"optical_backbone"``), read from the dynamo exporter's
    name-scope metadata. Used to keep everything but the heavy modules in FP32."""
    marks = [(f"'model.{m}'", f"'model.{m}.") for m in modules]
    out = []
    for n in graph.node:
        scopes = next((p.value for p in n.metadata_props if p.key == NAME_SCOPES), "")
        if not any(a in scopes or b in scopes for a, b in marks):
            out.append(n.name)
    return out


def convert_fp16_detailed(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    extra_fp32_ops: Iterable[str] = (),
    keep_div_of_norms: bool = True,
    check_ort: bool = True,
    fp16_modules: Sequence[str] | None = None,
) -> FP16Result:
    """Convert ``src`` (FP32 ONNX) to ``dst`` (FP16 weights and compute, FP32 IO and fragile ops).

    Returns an :class:`FP16Result` (ops and nodes kept in FP32, Casts added for outputs).
    Raises :class:`FP16ConversionError` when a check fails."""
    from onnxconverter_common import float16

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    _ensure_node_names(model.graph)
    inits = {i.name for i in model.graph.initializer}
    want_in = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input if vi.name not in inits}
    want_out = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.output}

    op_block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS) | set(extra_fp32_ops))
    node_block = _div_of_norm_nodes(model.graph) if keep_div_of_norms else []
    if fp16_modules:
        # a precision plan: FP16 only inside the named (heavy) modules; the decision head — whose
        # argmax margins are smallest — stays FP32
        node_block = sorted(set(node_block) | set(nodes_outside_modules(model.graph, fp16_modules)))
    present_ops = {n.op_type for n in model.graph.node}
    by_name = {n.name: n.op_type for n in model.graph.node}
    kept_ops = sorted((present_ops & set(op_block)) | {by_name[x] for x in node_block})
    kept_nodes = sorted([n.name for n in model.graph.node if n.op_type in op_block] + node_block)

    with warnings.catch_warnings():
        # "the float32 number 1e-12 will be truncated to 1e-07": clamping of tiny constants, expected
        warnings.filterwarnings("ignore", message=".*will be truncated to.*", category=UserWarning)
        fp16 = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=op_block, node_block_list=node_block,
            disable_shape_infer=False,
        )
    _fix_cast_targets(fp16)
    casts = _fix_io_types(fp16, want_out)

    # --- verify: IO dtypes unchanged
    for vi in fp16.graph.input:
        if vi.name in want_in and vi.type.tensor_type.elem_type != want_in[vi.name]:
            raise FP16ConversionError(
                f"input {vi.name!r} became {TensorProto.DataType.Name(vi.type.tensor_type.elem_type)} "
                f"(was {TensorProto.DataType.Name(want_in[vi.name])}); keep_io_types did not hold")
    for vi in fp16.graph.output:
        if vi.type.tensor_type.elem_type != want_out[vi.name]:
            raise FP16ConversionError(f"output {vi.name!r} is still declared "
                                      f"{TensorProto.DataType.Name(vi.type.tensor_type.elem_type)}")
    try:
        onnx.checker.check_model(fp16, full_check=True)
    except Exception as e:
        raise FP16ConversionError(f"onnx.checker rejects the FP16 graph: {e}") from e

    # --- verify: blocked nodes compute in FP32, and something actually runs in FP16
    types = _elem_types(fp16)
    kept_set = set(kept_nodes)
    n_fp16 = 0
    for n in fp16.graph.node:
        float_types = {types.get(t) for t in [*n.input, *n.output] if t and types.get(t) in _FLOATS}
        if n.name in kept_set and TensorProto.FLOAT16 in float_types:
            raise FP16ConversionError(f"node {n.name!r} ({n.op_type}) is on the FP32 list but has FP16 "
                                      "inputs/outputs in the converted graph")
        if n.op_type != "Cast" and TensorProto.FLOAT16 in float_types:
            n_fp16 += 1
    if n_fp16 == 0:
        raise FP16ConversionError(f"no node of {src.name} computes in FP16 after conversion: the FP16 graph "
                                  "would silently be an FP32 graph")

    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(fp16, str(dst))
    if check_ort:
        check_ort_loads(dst)
    log.info("FP16 graph %s: %d nodes in FP16, kept in FP32: %s%s", dst.name, n_fp16, ", ".join(kept_ops),
             f"; Cast added for outputs {casts}" if casts else "")
    return FP16Result(path=str(dst), kept_fp32_ops=kept_ops, kept_fp32_nodes=kept_nodes, fp16_nodes=n_fp16,
                      casts_added_for_outputs=casts)


def convert_fp16(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    extra_fp32_ops: Sequence[str] = (),
    check_ort: bool = True,
    fp16_modules: Sequence[str] | None = None,
) -> list[str]:
    """Write the FP16 variant of ``src`` to ``dst``; return the op types kept in FP32.

    ``fp16_modules``: when given, only nodes inside these modules compute in FP16 (see
    :func:`nodes_outside_modules`). See :func:`convert_fp16_detailed` for the checks."""
    return convert_fp16_detailed(src, dst, extra_fp32_ops=extra_fp32_ops, check_ort=check_ort,
                                 fp16_modules=fp16_modules).kept_fp32_ops
