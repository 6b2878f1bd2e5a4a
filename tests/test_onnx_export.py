"""rsvl_export.onnx_export: dynamic B and K really dynamic, numbers match eager, traps refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from rsvl_export.onnx_export import ExportError, _check_dynamic, check_layer_norm, export_onnx, op_counts
from rsvl_export.parity import compare
from tests.export_toy import DIM_RANGES, DYNAMIC_AXES, TILE, example_inputs, exported_toy, make_model


@pytest.fixture(scope="module")
def toy():
    return exported_toy()


def _session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def test_result_describes_the_graph_for_the_manifest(toy) -> None:
    res, _ = toy
    assert res.exporter == "dynamo" and not res.needs_parity_check and res.dynamo_error is None
    assert res.inputs == {"optical": {"dtype": "float32", "shape": ["B", 3, TILE, TILE]},
                          "text_emb": {"dtype": "float32", "shape": ["K", 8]}}
    assert res.outputs == {"logits": {"dtype": "float32", "shape": ["B", "K", TILE, TILE]}}
    assert res.opset >= 17 and res.seconds > 0 and res.bytes == Path(res.path).stat().st_size
    assert not Path(res.path + ".data").exists(), "weights must be embedded (external_data=False)"
    json.dumps(res.to_dict())  # manifest-serialisable
    assert res.to_manifest() == {"inputs": res.inputs, "outputs": res.outputs}


def test_written_graph_passes_checker_has_one_layernorm_and_metadata(toy) -> None:
    res, _ = toy
    model = onnx.load(res.path)
    onnx.checker.check_model(model, full_check=True)
    assert max(i.version for i in model.opset_import if i.domain in ("", "ai.onnx")) >= 17
    counts = op_counts(model)
    assert counts.get("LayerNormalization") == 1, counts          # one fused op, not ReduceMean/Pow/Sqrt
    assert "ReduceMean" not in counts and "Pow" not in counts
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["rsvl_model"] == "toy" and json.loads(meta["classes"]) == ["water", "building", "road"]
    dims = [d.dim_param for d in model.graph.input[1].type.tensor_type.shape.dim]
    assert dims[0] == "K"


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("k", [3, 20])
def test_ort_matches_eager_at_two_batches_and_two_vocabularies(toy, b: int, k: int) -> None:
    """One export, run at B in {1,3} x K in {3,20}: within 1e-4 of the reference range."""
    res, model = toy
    x = example_inputs(b=b, k=k, seed=10 + b + k)
    with torch.no_grad():
        ref = model(**x).numpy()
    got = _session(res.path).run(["logits"], {n: t.numpy() for n, t in x.items()})[0]
    assert got.shape == (b, k, TILE, TILE)
    c = compare(ref, got, "logits", precision="fp32")
    assert c["max_abs_rel_to_range"] <= 1e-4, c.metrics
    assert c["argmax_agreement"] == 1.0 and c.passed


def test_export_records_example_error_and_dynamic_probe(toy) -> None:
    res, _ = toy
    assert res.example_max_abs["logits"] < 1e-4
    assert res.dynamic_probe == {"B": 3, "K": 4}   # the graph ran at a second B and K


@pytest.mark.parametrize("axis_name, kwargs", [("K", {"b": 2, "k": 1}), ("B", {"b": 1, "k": 3})])
def test_size_one_example_on_a_dynamic_axis_is_refused(tmp_path: Path, axis_name: str, kwargs) -> None:
    """The K=1 trap: dynamo would silently freeze the axis; we refuse before exporting."""
    with pytest.raises(ExportError, match=rf"size 1 on dynamic axis .*'{axis_name}'.*{axis_name} >= 2"):
        export_onnx(make_model(), example_inputs(**kwargs), ["logits"], DYNAMIC_AXES, tmp_path / "x.onnx",
                    dim_ranges=DIM_RANGES)
    assert not (tmp_path / "x.onnx").exists()


def test_a_frozen_axis_in_the_written_graph_is_detected(toy) -> None:
    res, _ = toy
    model = onnx.load(res.path)
    dim = model.graph.input[1].type.tensor_type.shape.dim[0]
    dim.dim_value = 1                                   # what the K=1 trap produces
    with pytest.raises(ExportError, match=r"axis 0 \('K'\) of 'text_emb' is frozen to 1"):
        _check_dynamic(model, DYNAMIC_AXES)


@pytest.mark.parametrize("bad, match", [
    ({"opset": 16}, "opset=16 is too old"),
    ({"dynamic_axes": {"optical": {0: "B"}, "textemb": {0: "K"}}}, "neither an example input"),
    ({"dim_ranges": {"B": (1, 8)}}, "'K'.*no entry in dim_ranges"),
    ({"dim_ranges": {"B": (1, 8), "K": (5, 64)}}, "outside dim_ranges"),
])
def test_bad_arguments_are_refused_with_the_reason(tmp_path: Path, bad: dict, match: str) -> None:
    kw = {"opset": 18, "dynamic_axes": DYNAMIC_AXES, "dim_ranges": DIM_RANGES} | bad
    with pytest.raises(ExportError, match=match):
        export_onnx(make_model(), example_inputs(), ["logits"], kw["dynamic_axes"], tmp_path / "x.onnx",
                    opset=kw["opset"], dim_ranges=kw["dim_ranges"])


def test_example_keys_must_be_forward_argument_names(tmp_path: Path) -> None:
    x = example_inputs()
    x["image"] = x.pop("optical")
    with pytest.raises(ExportError, match=r"\['image'\] are not arguments of ToyImageGraph.forward"):
        export_onnx(make_model(), x, ["logits"], {"text_emb": {0: "K"}}, tmp_path / "x.onnx", dim_ranges=DIM_RANGES)


def test_layernorm_decomposed_into_reductions_is_refused() -> None:
    """A module with nn.LayerNorm whose graph has no LayerNormalization op (decomposed) is refused."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["K", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["K", 1])
    g = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["y"], keepdims=1)], "g", [x], [y])
    decomposed = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(ExportError, match="1 LayerNorm module.* no LayerNormalization op"):
        check_layer_norm(decomposed, nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)))
    assert check_layer_norm(decomposed, nn.Linear(8, 8)) == 0           # no LayerNorm: nothing required


def test_legacy_exporter_only_when_dynamo_raises_and_it_is_flagged(tmp_path: Path, monkeypatch) -> None:
    real = torch.onnx.export

    def dynamo_breaks(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("simulated dynamo failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_breaks)
    model = make_model()
    res = export_onnx(model, example_inputs(), ["logits"], DYNAMIC_AXES, tmp_path / "legacy.onnx",
                      dim_ranges=DIM_RANGES)
    assert res.exporter == "legacy" and res.needs_parity_check
    assert "simulated dynamo failure" in (res.dynamo_error or "")
    assert res.inputs["text_emb"]["shape"] == ["K", 8] and res.outputs["logits"]["shape"][:2] == ["B", "K"]
    x = example_inputs(b=3, k=20, seed=5)
    with torch.no_grad():
        ref = model(**x).numpy()
    got = _session(res.path).run(None, {n: t.numpy() for n, t in x.items()})[0]
    assert compare(ref, got, "logits", precision="fp32").passed   # the caller's parity check


def test_no_fallback_when_disallowed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(ExportError, match="dynamo export of ToyImageGraph failed: RuntimeError: boom"):
        export_onnx(make_model(), example_inputs(), ["logits"], DYNAMIC_AXES, tmp_path / "x.onnx",
                    dim_ranges=DIM_RANGES, allow_legacy_fallback=False)


def test_output_names_must_match_the_number_of_outputs(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="forward returns 1 outputs, but output_names lists 2"):
        export_onnx(make_model(), example_inputs(), ["logits", "emb"], {"optical": {0: "B"}, "text_emb": {0: "K"}},
                    tmp_path / "x.onnx", dim_ranges=DIM_RANGES, check_runtime=False)


def test_outputs_are_numpy_comparable(toy) -> None:
    """Sanity of the eager/ORT contract used by the parity step: float32 in, float32 out."""
    res, _ = toy
    sess = _session(res.path)
    assert [i.type for i in sess.get_inputs()] == ["tensor(float)", "tensor(float)"]
    out = sess.run(None, {n: t.numpy() for n, t in example_inputs().items()})[0]
    assert out.dtype == np.float32


def _reset_logger_level(request, logger) -> None:
    """``logger`` at NOTSET for this test, its level restored afterwards (``setLevel`` both ways:
    it clears the loggers' ``isEnabledFor`` caches)."""
    import logging

    request.addfinalizer(lambda level=logger.level: logger.setLevel(level))
    logger.setLevel(logging.NOTSET)


def test_onnxscript_folding_warnings_are_demoted_to_debug_while_exporting(tmp_path: Path, monkeypatch,
                                                                          caplog, request) -> None:
    """onnxscript's "Evaluation failed" (a node its constant folder leaves unfolded, harmless) is
    logged at DEBUG by rsvl during the export; its other warnings, and the same warning outside
    an export, still reach the user."""
    import logging

    from rsvl_export.onnx_export import CONSTANT_FOLDING_LOGGER

    folding = logging.getLogger(CONSTANT_FOLDING_LOGGER)
    # An in-process CLI run earlier in the session (setup_logging) leaves the "onnxscript" logger
    # at ERROR and ours at INFO, which drops these records before any filter or caplog sees them:
    # start from the defaults.
    for name in ("onnxscript", CONSTANT_FOLDING_LOGGER, "rsvl_export"):
        _reset_logger_level(request, logging.getLogger(name))
    real = torch.onnx.export

    def export_that_warns(*args, **kwargs):
        folding.warning("Evaluation failed: %s", "cannot reshape array of size 1 into shape (1,20)")
        folding.warning("something else")
        return real(*args, **kwargs)

    import onnxscript.optimizer as oso

    real_optimize = oso.optimize

    def optimize_that_warns(*args, **kwargs):  # rsvl's own folding pass after the export
        folding.warning("Evaluation failed: %s", "in the folding pass")
        return real_optimize(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export_that_warns)
    monkeypatch.setattr(oso, "optimize", optimize_that_warns)
    with caplog.at_level(logging.DEBUG):
        export_onnx(make_model(), example_inputs(), ["logits"], DYNAMIC_AXES, tmp_path / "x.onnx",
                    dim_ranges=DIM_RANGES, check_runtime=False)
        folding.warning("Evaluation failed: after the export")
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "something else" in warned and "Evaluation failed: after the export" in warned
    assert not any("size 1 into shape" in m or "in the folding pass" in m for m in warned)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and r.name == "rsvl_export.onnx_export"]
    assert any("skipped a node: Evaluation failed: cannot reshape" in m for m in debug)
    assert any("skipped a node: Evaluation failed: in the folding pass" in m for m in debug)
