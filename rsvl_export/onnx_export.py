"""Export one graph (text or image) of a model to a single-file ONNX model, and prove it.

:func:`export_onnx` wraps ``torch.onnx.export(..., dynamo=True)`` with the checks that our
measured traps call for (see ``docs/export-notes.md``, Exporter):

* dynamic axes are given by *name* (``{"optical": {0: "B"}, "text_emb": {0: "K"}}``); one
  :class:`torch.export.Dim` is created per axis name and shared by every input that uses it;
* an example input whose dynamic axis has size < 2 is refused up front (dynamo silently
  freezes a size-1 axis: the "K=1 trap");
* the written graph is checked: the dynamic axes must be symbolic in the declared inputs
  *and* the graph must run in ONNX Runtime at a second size of every dynamic axis, giving
  outputs whose dynamic axes follow; outputs at the example inputs are compared with eager
  (``ExportResult.example_max_abs``; the caller's parity gates decide pass/fail);
* ``onnx.checker.check_model(full_check=True)``, shape inference, constant folding with the
  onnxscript optimizer, opset >= 17, and ``LayerNormalization`` present as one op when the
  module has a LayerNorm (TensorRT FP16 accuracy depends on it being fused);
* the legacy TorchScript exporter is used only when dynamo raises, and the result says so
  (``exporter == "legacy"``) so the caller must check parity before accepting it.

The result carries what the bundle manifest needs: input/output names, dtypes and symbolic
shapes, the exporter used, seconds and file size. :func:`count_flops` counts a graph's FLOPs
once, on the export wrapper (the manifest's ``graphs[name].flops``).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from .attention_export import sdpa_attention as _sdpa_form
from .pixel_attention_export import QUERY_CHUNK, chunked_pixel_attention

log = logging.getLogger(__name__)

#: onnxscript's constant folder, run by the dynamo exporter (``optimize=True``) and again by
#: :func:`_fold_constants` on the loaded graph: it logs a
#: WARNING "Evaluation failed: ..." for every node that the ONNX reference evaluator cannot fold
#: (e.g. a Reshape of a shape value it does not know yet) and leaves that node in the graph, which
#: is correct; the warning alarmed users of ``rsvl-export``, so it is demoted to DEBUG while we
#: export (the graph is checked against eager below either way).
CONSTANT_FOLDING_LOGGER = "onnxscript.optimizer._constant_folding"


@contextmanager
def _quiet_constant_folding() -> Iterator[None]:
    """Show onnxscript's "Evaluation failed" folding warnings only at DEBUG level."""
    logger = logging.getLogger(CONSTANT_FOLDING_LOGGER)

    def demote(record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith("Evaluation failed"):
            log.debug("onnxscript constant folding skipped a node: %s", record.getMessage())
            return False
        return True

    logger.addFilter(demote)
    try:
        yield
    finally:
        logger.removeFilter(demote)

#: Lowest opset we accept: 17 is the first with a LayerNormalization op.
MIN_OPSET = 17

_ONNX_TO_NUMPY: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.BOOL: "bool",
}


class ExportError(RuntimeError):
    """The export failed or produced a graph that breaks one of our rules; the message says which."""


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote, in the form the bundle manifest records.

    ``inputs`` / ``outputs`` map a tensor name to ``{"dtype": "float32", "shape": ["B", 3, 256, 256]}``
    (symbolic axes as strings). ``exporter`` is ``"dynamo"`` or ``"legacy"``; a legacy export
    is only acceptable after the caller's parity check passes.
    """

    path: str
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    exporter: str
    opset: int
    seconds: float
    bytes: int
    node_count: int
    op_counts: dict[str, int]
    dynamic_axes: dict[str, dict[int, str]]
    dim_ranges: dict[str, tuple[int, int]]
    layer_norm_nodes: int
    example_max_abs: dict[str, float] = field(default_factory=dict)
    dynamic_probe: dict[str, int] = field(default_factory=dict)
    dynamo_error: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    #: module paths of the ``nn.MultiheadAttention`` modules swapped for the SDPA form during the
    #: export (:mod:`rsvl_export.attention_export`; modules the graph does not reach included)
    sdpa_attention: list[str] = field(default_factory=list)
    #: module paths of the pixel self-attention layers exported in query chunks
    #: (:mod:`rsvl_export.pixel_attention_export`)
    chunked_attention: list[str] = field(default_factory=list)

    @property
    def needs_parity_check(self) -> bool:
        """True when the legacy exporter was used: the graph is only acceptable if parity holds."""
        return self.exporter != "dynamo"

    def to_manifest(self) -> dict[str, Any]:
        """The ``inputs`` / ``outputs`` entries of ``manifest["graphs"][graph]``."""
        return {"inputs": self.inputs, "outputs": self.outputs}

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-serialisable (dynamic-axis keys become strings)."""
        d = asdict(self)
        d["dynamic_axes"] = {k: {str(a): n for a, n in v.items()} for k, v in self.dynamic_axes.items()}
        d["dim_ranges"] = {k: list(v) for k, v in self.dim_ranges.items()}
        return d


# --------------------------------------------------------------------------- helpers
def _forward_parameters(module: nn.Module) -> list[str]:
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return []
    return [p.name for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _flatten_outputs(out: Any) -> list[torch.Tensor]:
    """Eager outputs in the order the exporter flattens them (tensor, tuple/list, dict values)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _flatten_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flatten_outputs(v)]
    if out is None:
        return []
    raise ExportError(f"cannot flatten a model output of type {type(out).__name__}; "
                      "return a Tensor, a tuple of Tensors or a dict of Tensors")


def _validate_arguments(
    module: nn.Module,
    example_inputs: Mapping[str, torch.Tensor],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    dim_ranges: Mapping[str, tuple[int, int]],
    opset: int,
) -> None:
    if opset < MIN_OPSET:
        raise ExportError(f"opset={opset} is too old: we need opset >= {MIN_OPSET} so that LayerNorm "
                          "exports as one LayerNormalization op (TensorRT fuses it; FP16 accuracy depends on it)")
    params = _forward_parameters(module)
    if params:
        unknown = [k for k in example_inputs if k not in params]
        if unknown:
            raise ExportError(f"example_inputs keys {unknown} are not arguments of "
                              f"{type(module).__name__}.forward{tuple(params)}; keys must be forward() argument names")
    for name, t in example_inputs.items():
        if not isinstance(t, torch.Tensor):
            raise ExportError(f"example input {name!r} is a {type(t).__name__}, not a torch.Tensor")
    if len(set(output_names)) != len(output_names):
        raise ExportError(f"output_names has duplicates: {list(output_names)}")
    known = set(example_inputs) | set(output_names)
    for name, axes in dynamic_axes.items():
        if name not in known:
            raise ExportError(f"dynamic_axes names {name!r}, which is neither an example input "
                              f"({list(example_inputs)}) nor an output ({list(output_names)})")
        for axis, axis_name in axes.items():
            if axis_name not in dim_ranges:
                raise ExportError(f"dynamic axis {axis_name!r} ({name}[{axis}]) has no entry in dim_ranges "
                                  f"(have {sorted(dim_ranges)}); give (min, max) for it")
            lo, hi = dim_ranges[axis_name]
            if not (1 <= lo <= hi):
                raise ExportError(f"dim_ranges[{axis_name!r}] = {(lo, hi)} is not a valid range (need 1 <= min <= max)")
            if name not in example_inputs:
                continue
            t = example_inputs[name]
            if axis >= t.dim():
                raise ExportError(f"dynamic axis {axis} of {name!r} does not exist: example shape {tuple(t.shape)}")
            size = int(t.shape[axis])
            if size < 2:
                raise ExportError(
                    f"example input {name!r} has size {size} on dynamic axis {axis} ({axis_name!r}): the dynamo "
                    f"exporter silently freezes a size-1 axis, so the graph would only accept {axis_name}=1. "
                    f"Use an example with {axis_name} >= 2 (e.g. {axis_name}=2 or 3).")
            if not (lo <= size <= hi):
                raise ExportError(f"example input {name!r} has {axis_name}={size}, outside dim_ranges "
                                  f"[{lo}, {hi}]")
    # The same axis name must have the same size wherever it appears in the examples.
    seen: dict[str, tuple[str, int]] = {}
    for name, axes in dynamic_axes.items():
        if name not in example_inputs:
            continue
        for axis, axis_name in axes.items():
            size = int(example_inputs[name].shape[axis])
            if axis_name in seen and seen[axis_name][1] != size:
                other, osize = seen[axis_name]
                raise ExportError(f"axis {axis_name!r} is {osize} in {other!r} but {size} in {name!r}; "
                                  "inputs sharing an axis name must agree in the example")
            seen.setdefault(axis_name, (name, size))


def _dynamic_shapes(
    example_inputs: Mapping[str, torch.Tensor],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    dim_ranges: Mapping[str, tuple[int, int]],
) -> dict[str, dict[int, Any] | None]:
    """``torch.export`` dynamic_shapes keyed by forward() argument name, one Dim per axis name."""
    dims: dict[str, Any] = {}
    out: dict[str, dict[int, Any] | None] = {}
    for name in example_inputs:
        axes = dynamic_axes.get(name)
        if not axes:
            out[name] = None
            continue
        spec: dict[int, Any] = {}
        for axis, axis_name in axes.items():
            if axis_name not in dims:
                lo, hi = dim_ranges[axis_name]
                dims[axis_name] = torch.export.Dim(axis_name, min=int(lo), max=int(hi))
            spec[int(axis)] = dims[axis_name]
        out[name] = spec
    return out


def _value_info_spec(vi: onnx.ValueInfoProto) -> dict[str, Any]:
    tt = vi.type.tensor_type
    shape: list[int | str] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            shape.append(d.dim_param)
        else:
            shape.append("?")
    return {"dtype": _ONNX_TO_NUMPY.get(tt.elem_type, onnx.TensorProto.DataType.Name(tt.elem_type).lower()),
            "shape": shape}


def io_specs(model: onnx.ModelProto) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(inputs, outputs) of a model as ``name -> {"dtype", "shape"}`` (initializers excluded)."""
    inits = {i.name for i in model.graph.initializer}
    ins = {vi.name: _value_info_spec(vi) for vi in model.graph.input if vi.name not in inits}
    outs = {vi.name: _value_info_spec(vi) for vi in model.graph.output}
    return ins, outs


def _all_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    nodes = list(model.graph.node)
    for fn in model.functions:
        nodes.extend(fn.node)
    stack = list(nodes)
    while stack:  # nodes of subgraphs (If/Loop/Scan)
        n = stack.pop()
        for a in n.attribute:
            graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for g in graphs:
                nodes.extend(g.node)
                stack.extend(g.node)
    return nodes


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Number of nodes per op type, functions and subgraphs included."""
    counts: dict[str, int] = {}
    for n in _all_nodes(model):
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))


def default_opset(model: onnx.ModelProto) -> int:
    """Version of the default ("" / "ai.onnx") opset of a model."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ExportError("the model imports no default-domain opset")


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    if old == new:
        return
    for n in graph.node:
        for i, x in enumerate(n.input):
            if x == old:
                n.input[i] = new
        for i, x in enumerate(n.output):
            if x == old:
                n.output[i] = new
    for coll in (graph.input, graph.output, graph.value_info):
        for vi in coll:
            if vi.name == old:
                vi.name = new
    for init in graph.initializer:
        if init.name == old:
            init.name = new


def _apply_names(model: onnx.ModelProto, input_names: Sequence[str], output_names: Sequence[str]) -> None:
    """Make the graph's inputs/outputs carry exactly the requested names (in order)."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    graph_inputs = [vi.name for vi in g.input if vi.name not in inits]
    if set(graph_inputs) != set(input_names):
        if len(graph_inputs) != len(input_names):
            raise ExportError(f"the exported graph has inputs {graph_inputs}, expected {list(input_names)}: "
                              "an example input was not used by forward() (unused inputs are dropped) "
                              "or a non-tensor argument was passed")
        for old, new in zip(graph_inputs, input_names):
            _rename_value(g, old, new)
    graph_outputs = [vi.name for vi in g.output]
    if len(graph_outputs) != len(output_names):
        raise ExportError(f"the exported graph has {len(graph_outputs)} outputs {graph_outputs}, "
                          f"but output_names lists {len(output_names)}: {list(output_names)}")
    for old, new in zip(graph_outputs, output_names):
        if old != new:
            if new in graph_inputs or any(new in n.output for n in g.node if old not in n.output):
                raise ExportError(f"cannot rename output {old!r} to {new!r}: the name is taken in the graph")
            _rename_value(g, old, new)


def _check_dynamic(model: onnx.ModelProto, dynamic_axes: Mapping[str, Mapping[int, str]]) -> None:
    ins, outs = io_specs(model)
    specs = {**ins, **outs}
    for name, axes in dynamic_axes.items():
        if name not in specs:
            raise ExportError(f"{name!r} listed in dynamic_axes is not an input or output of the written graph "
                              f"(have {sorted(specs)})")
        shape = specs[name]["shape"]
        for axis, axis_name in axes.items():
            if axis >= len(shape):
                raise ExportError(f"{name!r} has rank {len(shape)} in the written graph; axis {axis} does not exist")
            dim = shape[axis]
            if not isinstance(dim, str):
                raise ExportError(f"axis {axis} ({axis_name!r}) of {name!r} is frozen to {dim} in the written graph "
                                  f"(shape {shape}); the exporter did not keep it dynamic")


def _set_axis_names(model: onnx.ModelProto, dynamic_axes: Mapping[str, Mapping[int, str]]) -> None:
    """Give the declared dynamic axes of graph inputs/outputs the requested names ("B", "K")."""
    for coll in (model.graph.input, model.graph.output):
        for vi in coll:
            axes = dynamic_axes.get(vi.name)
            if not axes:
                continue
            dims = vi.type.tensor_type.shape.dim
            for axis, axis_name in axes.items():
                if axis < len(dims) and not dims[axis].HasField("dim_value"):
                    dims[axis].dim_param = axis_name


def _fold_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Constant folding + dead-code removal with onnxscript's optimizer (if available)."""
    try:
        import onnxscript.optimizer as oso
    except ImportError:  # pragma: no cover - onnxscript is an export dependency
        return model, "none (onnxscript not installed)"
    try:
        with _quiet_constant_folding():
            return oso.optimize(model), "onnxscript.optimizer.optimize"
    except Exception as e:  # noqa: BLE001 - optimisation is best-effort, the unoptimised graph is valid
        log.warning("onnxscript optimizer failed (%s); keeping the unfolded graph", e)
        return model, f"none (optimizer failed: {e})"


def _resize_axis(arr: np.ndarray, axis: int, size: int) -> np.ndarray:
    """The example array with ``axis`` grown/shrunk to ``size`` by cycling its own entries."""
    idx = np.arange(size) % arr.shape[axis]
    return np.take(arr, idx, axis=axis)


def _probe_sizes(
    example_inputs: Mapping[str, torch.Tensor],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    dim_ranges: Mapping[str, tuple[int, int]],
) -> dict[str, int]:
    """A second size per axis name, different from the example's and inside its range."""
    sizes: dict[str, int] = {}
    for name, axes in dynamic_axes.items():
        if name not in example_inputs:
            continue
        for axis, axis_name in axes.items():
            if axis_name in sizes:
                continue
            cur = int(example_inputs[name].shape[axis])
            lo, hi = dim_ranges[axis_name]
            cand = [cur + 1, cur - 1, lo, hi]
            sizes[axis_name] = next((c for c in cand if lo <= c <= hi and c != cur), cur)
    return sizes


def _ort_check(
    path: Path,
    ref: list[np.ndarray],
    example_inputs: Mapping[str, torch.Tensor],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    dim_ranges: Mapping[str, tuple[int, int]],
) -> tuple[dict[str, float], dict[str, int]]:
    """Run the written graph in ORT at the example inputs (compare with eager) and at a second
    size of every dynamic axis (outputs must follow). Returns (max_abs per output, probe sizes)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feeds = {k: v.detach().cpu().numpy() for k, v in example_inputs.items()}
    got = sess.run(list(output_names), feeds)
    if len(ref) != len(got):
        raise ExportError(f"eager returns {len(ref)} outputs, the graph {len(got)} ({list(output_names)})")
    max_abs: dict[str, float] = {}
    for name, r, g in zip(output_names, ref, got):
        if r.shape != g.shape:
            raise ExportError(f"output {name!r}: ONNX Runtime gives shape {g.shape}, eager {r.shape}")
        max_abs[name] = float(np.max(np.abs(r - g.astype(np.float32)))) if r.size else 0.0

    sizes = _probe_sizes(example_inputs, dynamic_axes, dim_ranges)
    if not sizes:
        return max_abs, {}
    probe = dict(feeds)
    for name, axes in dynamic_axes.items():
        if name in probe:
            for axis, axis_name in axes.items():
                probe[name] = _resize_axis(probe[name], axis, sizes[axis_name])
    try:
        outs = sess.run(list(output_names), probe)
    except Exception as e:
        shapes = {k: list(v.shape) for k, v in probe.items()}
        raise ExportError(f"the exported graph does not run at a second size of its dynamic axes {sizes} "
                          f"(inputs {shapes}): {e}. An axis was probably frozen during export "
                          "(size-1 example, or a size baked into a reshape)") from e
    for name, arr in zip(output_names, outs):
        for axis, axis_name in dynamic_axes.get(name, {}).items():
            if arr.shape[axis] != sizes[axis_name]:
                raise ExportError(f"output {name!r} axis {axis} is {arr.shape[axis]} when {axis_name}="
                                  f"{sizes[axis_name]}: the graph does not follow its dynamic axis")
    return max_abs, sizes


def check_layer_norm(model: onnx.ModelProto, module: nn.Module) -> int:
    """Number of LayerNormalization nodes; raise if ``module`` has a LayerNorm and the graph none."""
    n_modules = sum(1 for m in module.modules() if isinstance(m, nn.LayerNorm))
    n_nodes = op_counts(model).get("LayerNormalization", 0)
    if n_modules and n_nodes == 0:
        raise ExportError(f"{type(module).__name__} has {n_modules} LayerNorm module(s) but the graph has no "
                          "LayerNormalization op (it was decomposed into ReduceMean/Sub/Pow/...); TensorRT then "
                          "cannot fuse it and FP16 accuracy collapses. Export with opset >= 17 and the dynamo exporter")
    return n_nodes


# --------------------------------------------------------------------------- main entry
def count_flops(module: nn.Module, example_inputs: Mapping[str, torch.Tensor], per_axis: str | None = None,
                per_input: str | None = None) -> dict[str, Any]:
    """FLOPs of one forward pass of ``module`` at ``example_inputs``, counted once with
    ``torch.utils.flop_counter.FlopCounterMode`` (matmul, conv, attention; 2 FLOPs per
    multiply-add; element-wise ops are not counted).

    ``per_input``/``per_axis`` name the input whose axis 0 is the unit of work (``optical`` /
    ``B`` for an image graph: per tile; ``input_ids`` / ``K`` for a text graph: per prompt).
    Returns ``{"total", "per_item", "item_axis", "items", "shapes", "counter"}``: the
    manifest's ``graphs[name].flops`` (:class:`rsvl_runtime.manifest.FlopCount`)."""
    from torch.utils.flop_counter import FlopCounterMode

    module = module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        module(**example_inputs)
    total = int(fc.get_total_flops())
    name = per_input or next(iter(example_inputs))
    items = int(example_inputs[name].shape[0]) if example_inputs[name].dim() else 1
    return {"total": total, "per_item": total / max(items, 1), "item_axis": per_axis or f"{name}[0]",
            "items": items, "shapes": {k: list(v.shape) for k, v in example_inputs.items()},
            "counter": "torch.utils.flop_counter.FlopCounterMode"}


def export_onnx(
    module: nn.Module,
    example_inputs: dict[str, torch.Tensor],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    path: str | os.PathLike[str],
    opset: int = 18,
    dim_ranges: dict[str, tuple[int, int]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    allow_legacy_fallback: bool = True,
    check_runtime: bool = True,
    sdpa_attention: bool = True,
    attention_chunk: int = QUERY_CHUNK,
) -> ExportResult:
    """Export ``module`` to a single ONNX file at ``path`` and check the written graph.

    Args:
        module: the export wrapper (eval mode is set here); its ``forward`` takes the
            example inputs as keyword arguments.
        example_inputs: forward() argument name -> example tensor. These names become the
            graph's input names. Every dynamic axis must have size >= 2 in the example.
        output_names: names of the graph outputs, in the order forward() returns them
            (dict outputs flatten in insertion order).
        dynamic_axes: tensor name (input or output) -> {axis: axis name}; inputs sharing an
            axis name share one ``torch.export.Dim``.
        path: where to write the ``.onnx`` file (weights embedded, no ``.onnx.data``).
        opset: default-domain opset (>= 17).
        dim_ranges: axis name -> (min, max). Defaults to (1, 64) per axis name.
        metadata: written to ``metadata_props`` (non-string values as JSON), e.g. model name,
            task, class names.
        allow_legacy_fallback: if dynamo raises, try the legacy exporter (the result says
            ``exporter="legacy"``; the caller must check parity before accepting it).
        check_runtime: run the graph in ONNX Runtime at the example inputs (max-abs vs eager
            recorded) and at a second size of every dynamic axis.
        sdpa_attention: export open_clip's ``nn.MultiheadAttention`` blocks in the SDPA form that
            ONNX Runtime's attention fusions match (:func:`rsvl_export.attention_export.sdpa_attention`;
            the module is swapped only during the export and compared with its original eager output).
        attention_chunk: query rows per chunk of CADFormer's pixel self-attention in the graph
            (:func:`rsvl_export.pixel_attention_export.chunked_pixel_attention`), so that ONNX
            Runtime never holds the full ``N x N`` scores.

    Raises:
        ExportError: bad arguments (unknown names, size-1 dynamic example, opset < 17), both
            exporters failing, a frozen dynamic axis, a missing LayerNormalization, a checker error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    output_names = list(output_names)
    dynamic_axes = {k: {int(a): str(n) for a, n in v.items()} for k, v in dynamic_axes.items()}
    if dim_ranges is None:
        dim_ranges = {n: (1, 64) for axes in dynamic_axes.values() for n in axes.values()}
    dim_ranges = {k: (int(v[0]), int(v[1])) for k, v in dim_ranges.items()}
    _validate_arguments(module, example_inputs, output_names, dynamic_axes, dim_ranges, opset)
    module = module.eval()
    input_names = list(example_inputs)
    # One eager run first: it fails fast on a broken forward, fixes the number of outputs, and is
    # the reference for the ONNX Runtime check below.
    with torch.no_grad():
        eager = [t.detach().cpu().float().numpy() for t in _flatten_outputs(module(**example_inputs))]
    if len(eager) != len(output_names):
        raise ExportError(f"{type(module).__name__}.forward returns {len(eager)} outputs, but output_names lists "
                          f"{len(output_names)}: {output_names}")

    t0 = time.perf_counter()
    exporter = "dynamo"
    dynamo_error: str | None = None
    data_file = path.with_name(path.name + ".data")
    # open_clip's attention in the form ORT's fusions match, only while exporting (eager ref above)
    swaps = ExitStack()
    swapped = swaps.enter_context(_sdpa_form(module, enabled=sdpa_attention))
    chunked = swaps.enter_context(chunked_pixel_attention(module, attention_chunk))
    swaps.enter_context(_quiet_constant_folding())
    try:
        with torch.no_grad():
            torch.onnx.export(
                module, (), str(path), kwargs=dict(example_inputs), dynamo=True,
                dynamic_shapes=_dynamic_shapes(example_inputs, dynamic_axes, dim_ranges),
                output_names=output_names, opset_version=opset, external_data=False,
                optimize=True, verbose=False,
            )
    except Exception as e:
        dynamo_error = f"{type(e).__name__}: {e}"
        if not allow_legacy_fallback:
            raise ExportError(f"dynamo export of {type(module).__name__} failed: {dynamo_error}") from e
        log.warning("dynamo export failed (%s); trying the legacy exporter — the result is only "
                    "acceptable if parity holds", dynamo_error.splitlines()[0])
        log.debug("dynamo traceback:\n%s", traceback.format_exc())
        exporter = "legacy"
        params = _forward_parameters(module)
        ordered = [n for n in params if n in example_inputs] or input_names
        args = tuple(example_inputs[n] for n in ordered)
        legacy_axes: dict[str, dict[int, str]] = dict(dynamic_axes)
        try:
            with torch.no_grad():
                torch.onnx.export(
                    module, args, str(path), dynamo=False, input_names=ordered,
                    output_names=output_names, dynamic_axes=legacy_axes, opset_version=opset,
                )
        except Exception as e2:
            raise ExportError(f"both exporters failed for {type(module).__name__}.\n  dynamo: {dynamo_error}\n"
                              f"  legacy: {type(e2).__name__}: {e2}") from e2
        input_names = ordered
    finally:
        swaps.close()  # the original attention modules are back
    if data_file.exists():
        raise ExportError(f"the exporter wrote external weights {data_file}; expected one self-contained file "
                          "(models above 2 GB need external data — not supported by this bundle format)")

    model = onnx.load(str(path))
    _apply_names(model, input_names, output_names)
    model, _ = _fold_constants(model)
    _set_axis_names(model, dynamic_axes)
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, data_prop=True)
    except Exception as e:
        raise ExportError(f"ONNX shape inference failed on the exported graph: {e}") from e

    got_opset = default_opset(model)
    if got_opset < MIN_OPSET:
        raise ExportError(f"the exported graph has opset {got_opset} < {MIN_OPSET}")
    counts = op_counts(model)
    n_ln_nodes = check_layer_norm(model, module)
    _check_dynamic(model, dynamic_axes)

    meta: dict[str, str] = {}
    if metadata:
        for k, v in metadata.items():
            meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
        existing = {p.key: p for p in model.metadata_props}
        for k, v in meta.items():
            if k in existing:
                existing[k].value = v
            else:
                model.metadata_props.add(key=k, value=v)

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ExportError(f"onnx.checker rejects the exported graph: {e}") from e
    onnx.save(model, str(path))
    seconds = time.perf_counter() - t0

    example_max_abs: dict[str, float] = {}
    probe: dict[str, int] = {}
    if check_runtime:
        example_max_abs, probe = _ort_check(path, eager, example_inputs, output_names, dynamic_axes, dim_ranges)

    ins, outs = io_specs(model)
    result = ExportResult(
        path=str(path), inputs=ins, outputs=outs, exporter=exporter, opset=got_opset,
        seconds=round(seconds, 3), bytes=path.stat().st_size, node_count=len(model.graph.node),
        op_counts=counts, dynamic_axes=dynamic_axes, dim_ranges=dim_ranges,
        layer_norm_nodes=n_ln_nodes, example_max_abs=example_max_abs, dynamic_probe=probe,
        dynamo_error=dynamo_error, metadata=meta, sdpa_attention=list(swapped.swapped),
        chunked_attention=list(chunked),
    )
    log.info("exported %s (%s, opset %d) in %.1f s, %.1f MB, %d nodes%s", path.name, exporter, got_opset,
             seconds, result.bytes / 1e6, result.node_count,
             f", {len(swapped)} open_clip attention modules in SDPA form" if len(swapped) else "")
    return result
