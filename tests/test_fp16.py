"""rsvl_export.fp16: FP16 weights/compute, FP32 IO and fragile ops, checked and within the FP16 gates."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from rsvl_export.fp16 import FP16ConversionError, _fix_io_types, check_ort_loads, convert_fp16
from rsvl_export.parity import ParityReport, ort_session
from tests.export_toy import example_inputs, exported_toy_fp16

BLOCKED_IN_TOY = {"LayerNormalization", "Softmax", "ReduceL2", "Div", "Resize"}


@pytest.fixture(scope="module")
def fp16():
    return exported_toy_fp16()


def _types(model: onnx.ModelProto) -> dict[str, int]:
    g = onnx.shape_inference.infer_shapes(model).graph
    t = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.value_info, *g.input, *g.output]}
    t.update({i.name: i.data_type for i in g.initializer})
    return t


def test_io_stays_float32_and_the_output_cast_trap_is_fixed(fp16) -> None:
    result, _, _ = fp16
    m = onnx.load(result.path)
    assert [vi.type.tensor_type.elem_type for vi in m.graph.input] == [TensorProto.FLOAT] * 2
    assert [vi.type.tensor_type.elem_type for vi in m.graph.output] == [TensorProto.FLOAT]
    # the toy ends with Resize (blocked): onnxconverter-common declares the output FP16 -> we add a Cast
    assert result.casts_added_for_outputs == ["logits"]
    onnx.checker.check_model(m, full_check=True)


def test_blocked_ops_compute_in_fp32_and_the_rest_in_fp16(fp16) -> None:
    result, _, _ = fp16
    assert BLOCKED_IN_TOY <= set(result.kept_fp32_ops), result.kept_fp32_ops
    m = onnx.load(result.path)
    types = _types(m)
    by_op: dict[str, set[int]] = {}
    for n in m.graph.node:
        for t in [*n.input, *n.output]:
            if t and types.get(t) in (TensorProto.FLOAT, TensorProto.FLOAT16):
                by_op.setdefault(n.op_type, set()).add(types[t])
    for op in ("LayerNormalization", "Softmax", "ReduceL2", "Resize"):
        assert by_op[op] == {TensorProto.FLOAT}, (op, by_op[op])
    norm_divs = [n for n in m.graph.node if n.name in result.kept_fp32_nodes and n.op_type == "Div"]
    assert len(norm_divs) == 2                                   # x / ||x|| for pixels and vocabulary
    for n in norm_divs:
        assert {types[t] for t in [*n.input, *n.output]} == {TensorProto.FLOAT}
    assert TensorProto.FLOAT16 in by_op["MatMul"] and TensorProto.FLOAT16 in by_op["Conv"]
    assert result.fp16_nodes >= 10
    assert any(i.data_type == TensorProto.FLOAT16 for i in m.graph.initializer)   # weights are FP16


def test_ort_loads_with_enable_all(fp16) -> None:
    result, _, _ = fp16
    check_ort_loads(result.path)          # child process: a segfault would be an error here
    ort_session(result.path, optimization="all")


@pytest.mark.parametrize("b, k", [(1, 3), (3, 20)])
def test_fp16_graph_passes_cosine_and_argmax_gates_against_eager(fp16, b: int, k: int) -> None:
    result, res32, model = fp16
    x = example_inputs(b=b, k=k, seed=40 + b + k)
    with torch.no_grad():
        ref = model(**x).numpy()
    feeds = {n: t.numpy() for n, t in x.items()}
    report = ParityReport()
    for prec, path in (("fp32", res32.path), ("fp16", result.path)):
        got = ort_session(path).run(None, feeds)[0]
        assert got.dtype == ref.dtype
        report.check("image", prec, "logits", ref, got, kind="logits", batch=b, vocab=k)
    assert report.passed, report.summary()
    fp16_case = report.cases[1]
    assert fp16_case.metrics["cosine"] >= 0.999 and fp16_case.metrics["argmax_agreement"] >= 0.995


def test_convert_fp16_returns_the_ops_kept_in_fp32(fp16, tmp_path: Path) -> None:
    _, res32, _ = fp16
    kept = convert_fp16(res32.path, tmp_path / "again.fp16.onnx", check_ort=False)
    assert isinstance(kept, list) and BLOCKED_IN_TOY <= set(kept)


def test_fix_io_types_inserts_a_cast_for_an_output_declared_fp16() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N"])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    assert _fix_io_types(m, {"y": TensorProto.FLOAT}) == ["y"]
    assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert [n.op_type for n in m.graph.node] == ["Relu", "Cast"]
    onnx.checker.check_model(m, full_check=True)


def test_ort_load_failure_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(FP16ConversionError, match="ORT_ENABLE_ALL failed"):
        check_ort_loads(bad)


def test_precision_plan_selects_nodes_by_module_scope() -> None:
    """``fp16_modules`` keeps every node outside the named modules in FP32 (scope metadata)."""
    from onnx import TensorProto, helper

    from rsvl_export.fp16 import NAME_SCOPES, nodes_outside_modules

    def node(name: str, scopes: str):
        n = helper.make_node("Relu", [f"{name}_in"], [f"{name}_out"], name=name)
        n.metadata_props.add(key=NAME_SCOPES, value=scopes)
        return n

    nodes = [node("a", "['', 'model.optical_backbone', 'model.optical_backbone.vit']"),
             node("b", "['', 'model.optical_backbone_extra']"),
             node("c", "['', 'model.decoder', 'model.decoder.head']"),
             node("d", "['_empty_nn_module_stack_from_metadata_hook']")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a_in", TensorProto.FLOAT, [1])], [])
    assert nodes_outside_modules(g, ["optical_backbone"]) == ["b", "c", "d"]
    assert nodes_outside_modules(g, ["optical_backbone", "decoder"]) == ["b", "d"]
