"""ORT variants (``rsvl_export/ort_optimize.py``): fused attention / normalisation in the
dynamo-exported graphs, parity of the fused graphs against eager, INT8 node selections that
select real nodes, and the runtime's choice of ``text.ort.onnx``."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

sys.path.insert(0, str(Path(__file__).parent))
from export_toy import example_inputs, exported_toy

from rsvl_export.ort_optimize import (
    INT8_PLANS,
    U8U8_PLAN,
    fuse,
    fused_op_counts,
    in_scopes,
    int8_plans,
    module_path,
    optimize_for_ort,
    select_nodes,
    weight_matmul_paths,
    whole_graph_plans,
)
from rsvl_export.parity import Gate, compare

PLAN = {p.name: p for p in (*INT8_PLANS, U8U8_PLAN)}


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 2
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in s.get_inputs()}
    return s.run(None, {k: v for k, v in feeds.items() if k in names})


def _assert_eager_parity(ref: np.ndarray, got: np.ndarray) -> None:
    c = compare(ref, got, kind="logits")
    assert c.metrics["cosine"] >= 0.999 and c.metrics["argmax_agreement"] >= 0.995, c.metrics
    assert c.metrics["max_abs_rel_to_range"] < 1e-4, c.metrics


# --------------------------------------------------------------------------- fast: the toy graph
def test_module_paths_come_from_the_exporter_metadata():
    res, _ = exported_toy()
    paths = weight_matmul_paths(onnx.load(res.path))
    assert sorted(paths.values()) == ["out", "qkv", "to_emb"]  # the toy's three nn.Linear modules
    assert in_scopes("model.backbone.blocks.3.mlp", ["blocks"]) and in_scopes("a.mlp.fc1", ["mlp.fc1"])
    assert not in_scopes("model.resblocks.0", ["blocks"]) and not in_scopes("model.mlpx", ["mlp"])


def test_module_path_falls_back_to_namespace_then_weight_name():
    node = onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="n0")
    node.metadata_props.add(key="namespace", value=": rsvl_export.wrappers.SemanticImage/model.fuse.0: "
                                                   "rsvl_train.models.fusion.MFFM/model.fuse.0.in1: "
                                                   "torch.nn.modules.linear.Linear/linear_2: aten.linear.default")
    assert module_path(node) == "model.fuse.0.in1"
    bare = onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="n1")
    assert module_path(bare, {"n1": "model.head.proj.weight"}) == "model.head.proj"
    assert module_path(bare) == "n1"


def test_scoped_selection_selects_real_nodes_of_the_exported_toy():
    res, _ = exported_toy()
    model = onnx.load(res.path)
    assert len(select_nodes(model)) == 3
    assert len(select_nodes(model, ("qkv", "out"))) == 2
    assert select_nodes(model, ("mlp",)) == []  # the toy has no MLP module


def test_toy_fused_graph_has_attention_and_matches_eager(tmp_path):
    res, model = exported_toy()
    rep = fuse(res.path, tmp_path / "fused.onnx")
    assert rep["engine"] == "onnxscript"
    assert rep["fused_ops"].get("MultiHeadAttention", 0) >= 1, rep
    assert fused_op_counts(onnx.load(str(tmp_path / "fused.onnx"))) == rep["fused_ops"]
    for b, k in ((1, 3), (2, 20)):
        x = example_inputs(b=b, k=k, seed=5)
        with torch.no_grad():
            ref = model(**x).numpy()
        got = _run(tmp_path / "fused.onnx", {n: t.numpy() for n, t in x.items()})[0]
        _assert_eager_parity(ref, got)


def test_optimize_for_ort_ships_fused_or_int8_with_parity_and_records_the_cpu(tmp_path):
    res, _ = exported_toy()
    feeds = [{n: t.numpy() for n, t in example_inputs(b=b, k=5, seed=b).items()} for b in (1, 2)]
    rep = optimize_for_ort(res.path, tmp_path / "image.ort.onnx", "cnn", feeds, threads=2, timing_budget_s=0.2,
                           plans=[PLAN["int8-all"]])
    assert rep["variant"] in ("source", "fused", "int8-all") and rep["parity"]["passed"]
    if rep["variant"] == "int8-all":  # the shipped INT8 variant's weights, for the runtime's guard
        assert rep["weights"] == "s8" and rep["reduce_range"] is False, rep
    else:
        assert "weights" not in rep and "reduce_range" not in rep, rep
    assert rep["fusion"]["fused_ops"].get("MultiHeadAttention", 0) >= 1
    assert rep["cpu"]["model"] and isinstance(rep["cpu"]["vnni"], bool)
    assert rep["attempts"][0]["nodes"] == 3  # every weight MatMul found and tried
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "image.ort.onnx")).metadata_props}
    assert meta["rsvl_ort_variant"] == rep["variant"] and meta["rsvl_ort_only"] == "true"


def test_without_vnni_int8_tries_u8_weights_first_and_they_are_u8_in_the_graph(tmp_path):
    from rsvl_export.ort_optimize import quantize_int8

    assert int8_plans(vnni=True) == INT8_PLANS
    no_vnni = int8_plans(vnni=False)
    assert no_vnni[0] is U8U8_PLAN and len(no_vnni) == len(INT8_PLANS) + 1
    for p, q in zip(no_vnni[1:], INT8_PLANS):  # the partial plans keep u8 weights there too
        assert p == q or (p.keep_fp32 == q.keep_fp32 and p.u8_weights and p.name == f"{q.name}-u8u8"), (p, q)
    assert sum(p.u8_weights for p in no_vnni) == 1 + sum(bool(p.keep_fp32) for p in INT8_PLANS) == 3
    # a text graph gets the whole-graph plans only
    assert [p.name for p in whole_graph_plans(vnni=True)] == ["int8-all", "int8-all-reduce-range"]
    assert [p.name for p in whole_graph_plans(vnni=False)] == ["int8-all-u8u8", "int8-all", "int8-all-reduce-range"]
    res, _ = exported_toy()
    info = quantize_int8(res.path, tmp_path / "u8u8.onnx", u8_weights=True)
    assert info["nodes"] == 3 and info["weights"] == "u8" and info["ops"], info
    q = onnx.load(str(tmp_path / "u8u8.onnx"))
    inits = {i.name: i for i in q.graph.initializer}
    b_inputs = [n.input[1] for n in q.graph.node if n.op_type == "MatMulInteger"]
    assert len(b_inputs) == 3 and all(inits[b].data_type == onnx.TensorProto.UINT8 for b in b_inputs), b_inputs
    # u8 x u8 cannot saturate on any CPU: only the quantisation error is left (s8 weights on this
    # toy without VNNI: cosine 0.992, argmax 0.911; u8: cosine 0.99995, argmax 0.994)
    feeds = {n: t.numpy() for n, t in example_inputs(b=2, k=5, seed=2).items()}
    c = compare(_run(res.path, feeds)[0], _run(tmp_path / "u8u8.onnx", feeds)[0], kind="logits")
    assert c.metrics["cosine"] >= 0.999 and c.metrics["argmax_agreement"] >= 0.98, c.metrics


def test_int8_gates_pool_the_check_tiles_and_fp32_gates_take_the_worst():
    from rsvl_export.ort_optimize import INT8_GATE, _parity

    rng = np.random.default_rng(0)
    refs = [[rng.normal(size=(b, 4, 32, 32)).astype(np.float32)] for b in (1, 2, 4)]
    gots = [[r[0].copy()] for r in refs]
    flip = refs[0][0].argmax(1) == 0  # change the class of ~1/4 of tile 0's 1024 pixels
    g = gots[0][0]
    g[:, 1][flip] = g[:, 0][flip] + 1.0
    per_tile = float((refs[0][0].argmax(1) == g.argmax(1)).mean())
    assert 0.6 < per_tile < 0.9
    worst = _parity(refs, gots, INT8_GATE)
    pooled = _parity(refs, gots, INT8_GATE, pooled=True)
    assert worst["argmax_agreement"] == pytest.approx(per_tile)
    assert pooled["argmax_agreement"] == pytest.approx(1 - (1 - per_tile) / 7)  # one tile in seven
    assert not worst["passed"] and not pooled["passed"]  # 0.96 < 0.995 either way
    # the pooled INT8 verdict carries its lower bound over the seven tiles (t = 1.943, 6 dof)
    per = np.array([per_tile] + [1.0] * 6)
    assert pooled["tiles"] == 7 and pooled["argmax_tile_min"] == pytest.approx(per_tile)
    assert pooled["argmax_agreement_lower"] == pytest.approx(per.mean() - 1.9432 * per.std(ddof=1) / 7**0.5,
                                                             abs=1e-4)
    # one tile alone has no spread to bound: the INT8 gate refuses to judge it
    assert any("needs >= 2 tiles (have 1)" in f for f in worst["failed_checks"])
    # outputs whose other axes differ cannot be joined: the worst case stays
    from rsvl_export.ort_optimize import _pool

    mixed = [[np.ones((2, 3), np.float32)], [np.ones((2, 5), np.float32)]]
    assert _pool(mixed) is mixed and len(_pool(refs)) == 1 and _pool(refs)[0][0].shape == (7, 4, 32, 32)


def test_keep_fp32_plans_leave_the_named_projections_fp32(tmp_path):
    from rsvl_export.ort_optimize import Int8Plan, quantize_int8

    res, _ = exported_toy()
    model = onnx.load(str(res.path))
    every = select_nodes(model)
    kept = set(every) - set(select_nodes(model, keep_fp32=("out",)))
    assert len(every) == 3 and [weight_matmul_paths(model)[n] for n in kept] == ["out"], kept
    info = quantize_int8(res.path, tmp_path / "q.onnx", keep_fp32=("out",))
    assert info["nodes"] == 2 and info["fp32_nodes"] == 1, info
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert sum(n.op_type == "MatMulInteger" for n in q.graph.node) == 2
    # a plan whose FP32 scopes match nothing would be int8-all again: skipped, not timed
    feeds = [{n: t.numpy() for n, t in example_inputs(b=1, k=5, seed=1).items()}]
    rep = optimize_for_ort(res.path, tmp_path / "a.onnx", "cnn", feeds, threads=2, timing_budget_s=0.2,
                           plans=[Int8Plan("int8-mlp-out-fp32", keep_fp32=("mlp.c_proj",))])
    att = rep["attempts"][0]
    assert att["keep_fp32"] == ["mlp.c_proj"] and att["result"].startswith("no weight MatMul/Gemm matches"), att


def test_an_int8_candidate_ships_only_where_its_downstream_check_passes_too(tmp_path):
    from rsvl_export.ort_optimize import logits_downstream

    res, _ = exported_toy()
    feeds = [{n: t.numpy() for n, t in example_inputs(b=b, k=5, seed=b).items()} for b in (1, 2)]
    seen: list[int] = []

    def refuse(outs: list[list[np.ndarray]], refs: list[list[np.ndarray]]) -> dict:
        seen.append(len(outs))
        assert len(refs) == len(outs) and refs[0][0].shape == outs[0][0].shape  # the source's outputs
        return {"gate": "int8_logits", "passed": False, "failed_checks": ["argmax_agreement=0.9 < 0.995"]}

    rep = optimize_for_ort(res.path, tmp_path / "a.onnx", "cnn", feeds, threads=2, timing_budget_s=0.2,
                           plans=[PLAN["int8-all"]], downstream=refuse, int8_gate=Gate("loose", cosine=0.9))
    att = rep["attempts"][0]
    assert seen == [2], seen  # called once, with the candidate's outputs at both check inputs
    assert not rep["variant"].startswith("int8"), rep["variant"]
    assert att["parity"]["downstream"]["passed"] is False
    assert att["result"] == "rejected: parity downstream argmax_agreement=0.9 < 0.995", att["result"]

    # the real check (the export's, for a text graph): the image logits from the candidate's
    # outputs against those from the reference outputs, here the toy's text_emb input itself
    text = feeds[0]["text_emb"]

    def feeds_for(outputs: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [{**f, "text_emb": outputs[0]} for f in feeds]

    check = logits_downstream(res.path, feeds_for)
    same = check([[text.copy()]], [[text]])
    assert same["passed"] and same["argmax_agreement"] == 1.0 and same["cosine"] > 0.999999, same
    rng = np.random.default_rng(0)
    moved = text + rng.normal(0, 0.3 * text.std(), text.shape).astype(np.float32)
    emb = compare(text, moved, kind="embeddings").metrics
    other = check([[moved]], [[text]])
    assert not other["passed"] and other["argmax_agreement"] < 0.995, (emb, other)
    assert emb["mean_vector_cosine"] > 0.9, emb  # close embeddings, other classes for some pixels


def test_runtime_picks_text_ort_only_with_the_ort_image_graph_on_cpu(monkeypatch, caplog):
    from rsvl_runtime.backends.onnxruntime_backend import text_graph_precision
    from rsvl_runtime.manifest import GraphEntry

    # an INT8 text.ort.onnx with s8 weights checked on a VNNI CPU: not on a CPU without VNNI
    int8_text = GraphEntry(fp32="text.onnx", ort="text.ort.onnx",
                           ort_report={"variant": "int8-all", "weights": "s8", "reduce_range": False,
                                       "cpu": {"model": "EPYC", "vnni": True}})
    monkeypatch.setattr("rsvl_runtime.cpu.has_vnni", lambda: False)
    with caplog.at_level(logging.WARNING, logger="rsvl"):
        assert text_graph_precision(int8_text, "ort", on_gpu=False) == "fp32"
    assert "text.ort.onnx is INT8" in caplog.text and "using text.onnx" in caplog.text
    monkeypatch.setattr("rsvl_runtime.cpu.has_vnni", lambda: True)
    assert text_graph_precision(int8_text, "ort", on_gpu=False) == "ort"

    with_ort = GraphEntry(fp32="text.onnx", ort="text.ort.onnx")
    plain = GraphEntry(fp32="text.onnx")
    assert text_graph_precision(with_ort, "ort", on_gpu=False) == "ort"
    assert text_graph_precision(with_ort, "fp32", on_gpu=False) == "fp32"
    assert text_graph_precision(with_ort, "ort", on_gpu=True) == "fp32"
    assert text_graph_precision(plain, "ort", on_gpu=False) == "fp32"
    assert text_graph_precision(None, "ort", on_gpu=False) == "fp32"


def test_int8_image_graph_runs_without_vnni_only_where_its_products_cannot_saturate(monkeypatch, caplog):
    import rsvl_runtime.backends as backends
    from rsvl_runtime.manifest import GraphEntry

    def image(variant: str = "int8-all", **report: object) -> GraphEntry:
        return GraphEntry(fp32="image.onnx", ort="image.ort.onnx", ort_report={"variant": variant, **report})

    checked_with_vnni = image(cpu={"model": "EPYC", "vnni": True}, reduce_range=False)
    monkeypatch.setattr("rsvl_runtime.cpu.has_vnni", lambda: False)
    with caplog.at_level(logging.WARNING, logger="rsvl"):
        assert not backends.int8_safe(checked_with_vnni)
    assert "this CPU has none" in caplog.text and "--ort-optimize" in caplog.text
    assert backends.int8_safe(image("int8-all-reduce-range", cpu={"vnni": True}, reduce_range=True))
    assert backends.int8_safe(image("int8-all-u8u8", cpu={"vnni": True}, reduce_range=False, weights="u8"))
    assert backends.int8_safe(image(cpu={"model": "Xeon", "vnni": False}, reduce_range=False))
    assert backends.int8_safe(image("fused", cpu={"vnni": True}))
    from rsvl_runtime.inspect import ort_variant_row

    row = ort_variant_row("image", checked_with_vnni)  # what `rsvl-export inspect` shows here
    assert row is not None and row[:5] == ("image", "image.ort.onnx", "int8-all", "s8", "EPYC, VNNI")
    assert "no" in row[5] and "this CPU has none" in row[5] and "image.onnx" in row[5]
    u8 = ort_variant_row("image", image("int8-all-u8u8", cpu={"model": "EPYC", "vnni": False}, weights="u8"))
    assert u8 == ("image", "image.ort.onnx", "int8-all-u8u8", "u8", "EPYC, no VNNI", "yes")
    assert ort_variant_row("image", GraphEntry(fp32="image.onnx")) is None
    monkeypatch.setattr("rsvl_runtime.cpu.has_vnni", lambda: True)
    assert backends.int8_safe(checked_with_vnni)
    assert ort_variant_row("image", checked_with_vnni)[5] == "yes"


# --------------------------------------------------------------------------- slow: the tiny models
@pytest.fixture(scope="module")
def tiny_model(tiny_bundle):
    from rsvl_runtime.bundle import Bundle
    from rsvl_train.checkpoint import load_checkpoint

    b = Bundle.load(tiny_bundle)
    return b, load_checkpoint(b.path(b.meta.weights.file)).eval()


@pytest.mark.slow
def test_tsmnet_tiny_fused_graphs_have_attention_and_skip_layernorm_and_match_eager(tiny_model, tmp_path):
    from rsvl_export.ort_optimize import bundle_check_inputs
    from rsvl_export.wrappers import SemanticImage, SemanticText

    bundle, model = tiny_model
    img = fuse(bundle.graph_file("image", "fp32"), tmp_path / "image.f.onnx")
    txt = fuse(bundle.graph_file("text", "fp32"), tmp_path / "text.f.onnx")
    for rep in (img, txt):
        ops = rep["fused_ops"]
        assert ops.get("MultiHeadAttention", 0) + ops.get("Attention", 0) > 0, rep
        assert ops.get("SkipLayerNormalization", 0) > 0, rep
    assert txt["fused_ops"].get("BiasGelu", 0) > 0
    for feed in bundle_check_inputs(bundle.root, batches=(1, 2)):
        with torch.no_grad():
            ref = SemanticImage(model)(*[torch.from_numpy(feed[n]) for n in ("optical", "sar", "text_emb")]).numpy()
        _assert_eager_parity(ref, _run(tmp_path / "image.f.onnx", feed)[0])
    ids, mask = model.tokenize(["water", "building", "road", "a forest", "bare soil"])
    with torch.no_grad():
        ref = SemanticText(model)(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    got = _run(tmp_path / "text.f.onnx", {"input_ids": ids, "attention_mask": mask})[0]
    c = compare(ref, got, kind="embeddings")
    assert c.metrics["min_vector_cosine"] >= 0.9999, c.metrics


@pytest.mark.slow
def test_int8_scoped_plans_select_real_nodes_of_tsmnet_tiny(tiny_model, tmp_path):
    bundle, _ = tiny_model
    src = onnx.load(str(bundle.graph_file("image", "fp32")))
    fuse(bundle.graph_file("image", "fp32"), tmp_path / "f.onnx")
    fused = onnx.load(str(tmp_path / "f.onnx"))
    for model in (src, fused):
        every = select_nodes(model)
        backbone = select_nodes(model, PLAN["int8-backbone"].scopes)
        mlp = select_nodes(model, PLAN["int8-mlp"].scopes)
        assert len(every) > 10
        assert 0 < len(backbone) < len(every) and 0 < len(mlp) < len(every), (len(every), backbone, mlp)
        assert set(mlp) <= set(every)
        paths = weight_matmul_paths(model)
        for plan in ("int8-attn-out-fp32", "int8-mlp-out-fp32"):  # real projections stay FP32
            kept = set(every) - set(select_nodes(model, keep_fp32=PLAN[plan].keep_fp32))
            assert 0 < len(kept) < len(every) // 3, (plan, len(kept))
            assert all(p.endswith(("proj", ".2")) for p in (paths[n] for n in kept)), [paths[n] for n in kept]


@pytest.mark.slow
def test_export_step_writes_text_and_image_ort_variants(tiny_model, tmp_path):
    import json

    from rsvl_export.pipeline import Exporter, ExportOptions
    from rsvl_runtime.manifest import GraphEntry

    bundle, model = tiny_model
    work = tmp_path / "work"
    shutil.copytree(bundle.root, work)
    graphs = json.loads((work / "manifest.json").read_text())["graphs"]
    Exporter(ExportOptions(ort_optimize=True))._ort_variant(model, work, graphs, "semantic")
    for name in ("image", "text"):
        g = GraphEntry.from_dict(graphs[name], f"graphs.{name}")
        assert g.ort == f"{name}.ort.onnx" and (work / g.ort).is_file()
        assert g.ort_report["parity"]["passed"] and g.ort_report["cpu"]["model"]
        # the shipped file holds the fused ops unless timing kept the source graph (a noisy, shared CPU)
        shipped = onnx.load(str(work / g.ort))
        assert fused_op_counts(shipped) == g.ort_report["fused_ops"]
        if g.ort_report["variant"] != "source":
            assert g.ort_report["fused_ops"].get("SkipLayerNormalization", 0) > 0, g.ort_report
    par = json.loads((work / "parity.json").read_text())["meta"]["ort_variants"]
    assert par["text"]["fusion_rules"]["skip_layer_normalization"] > 0
    text_attempts = par["text"]["int8_attempts"]
    assert text_attempts and text_attempts[0]["nodes"] > 5  # INT8 tried on the text graph's weight MatMuls
    assert [a["name"] for a in text_attempts] == [p.name for p in whole_graph_plans()][:len(text_attempts)]
    for a in text_attempts:  # every text candidate that held its own gate met the image-logits check
        p = a.get("parity") or {}
        if p.get("gate") == "int8_embeddings" and "downstream" in p:
            assert p["downstream"]["gate"] == "int8_logits" and "argmax_agreement" in p["downstream"], p
    if par["text"]["variant"].startswith("int8"):
        shipped = next(a for a in text_attempts if a["result"] == "accepted")
        assert shipped["parity"]["downstream"]["passed"], shipped
    assert par["image"]["fusion_rules"]["skip_layer_normalization"] > 0
    assert par["image"]["cpu"]["vnni"] in (True, False) and par["image"]["int8_attempts"]
    assert par["image"]["int8_attempts"][0]["nodes"] > 10  # INT8 found the real weight MatMuls
    image = graphs["image"]["ort_report"]
    if image["variant"].startswith("int8"):  # what the runtime's guard on CPUs without VNNI reads
        assert image["reduce_range"] is image["variant"].endswith("reduce-range"), image
        assert image["weights"] == ("u8" if image["variant"].endswith("u8u8") else "s8"), image


@pytest.mark.slow
def test_referring_text_downstream_check_feeds_each_tile_its_expression(tmp_path):
    """The downstream check of a referring text graph: tile i of a batch gets expression i % n's
    word features, sentence embedding and mask, as the runtime feeds them."""
    import json

    from rsvl_export.pipeline import Exporter, ExportOptions, export_bundle
    from rsvl_runtime.bundle import Bundle
    from rsvl_train.checkpoint import load_checkpoint

    root = export_bundle(ExportOptions(model="cadformer-tiny", tile=64, precision="fp32", engine="none",
                                       max_batch=4, parity_batches=(1, 2), out=str(tmp_path / "cad")))
    bundle = Bundle.load(root)
    model = load_checkpoint(bundle.path(bundle.meta.weights.file)).eval()
    graphs = json.loads((root / "manifest.json").read_text())["graphs"]
    text_feeds, image_feeds = Exporter._ort_check_inputs(model, graphs, "referring")
    check = Exporter._text_downstream(root, graphs, image_feeds, "referring")
    text = _run(root / graphs["text"]["fp32"], text_feeds[0])  # [word_feats, sentence_emb] of 2 expressions
    assert len(text) == 2 and text[0].shape[0] == 2
    same = check([text], [text])
    assert same["passed"] and same["argmax_agreement"] == 1.0, same
    # swapping the two expressions gives every tile the other expression's features
    swapped = check([[t[::-1].copy() for t in text]], [text])
    assert swapped["argmax_agreement"] < 0.999, swapped

