"""rsvl-export end to end: the bundle's contents, parity, dynamic K, inspect and tampering."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rsvl_runtime.bundle import Bundle, BundleError

pytestmark = pytest.mark.slow

MANIFEST_KEYS = {"format_version", "model", "task", "modalities", "tile", "embedding_dim", "text",
                 "default_vocabulary", "graphs", "precision", "opset", "engines", "vocab_cache", "parity",
                 "versions", "files", "modes", "limits"}


def test_bundle_contents(tiny_bundle: Path) -> None:
    b = Bundle.load(tiny_bundle)
    m = b.manifest
    assert MANIFEST_KEYS <= set(m)
    assert m["model"] == "tsmnet-tiny" and m["task"] == "semantic" and m["precision"] == "fp16"
    assert m["opset"] >= 17
    assert {"text.onnx", "image.onnx", "image.fp16.onnx", "tokenizer.json", "vocab_cache.npz", "parity.json",
            "weights.safetensors"} <= set(m["files"])
    assert not [f for f in m["files"] if f.endswith((".pt", ".pth", ".pkl", ".bin"))]
    img = m["graphs"]["image"]
    assert img["inputs"]["optical"]["shape"] == ["B", 3, 64, 64]
    assert img["inputs"]["text_emb"]["shape"][0] == "K"
    assert img["outputs"]["logits"]["shape"][:2] == ["B", "K"]
    assert m["modalities"]["optical"]["dtype"] == "uint8" and len(m["modalities"]["optical"]["mean"]) == 3
    assert m["modalities"]["sar"]["units"] == "db"
    assert m["text"]["templates"] and m["text"]["max_length"] > 0
    assert "torch" in m["versions"] and "onnx" in m["versions"]


def test_parity_gates_recorded_and_passing(tiny_bundle: Path) -> None:
    parity = json.loads((tiny_bundle / "parity.json").read_text())
    assert parity["passed"] is True
    cases = parity["cases"]
    assert {(c["batch"], c["vocab_size"]) for c in cases if c["graph"] == "image"} == {(1, 3), (2, 3), (1, 20), (2, 20)}
    for c in cases:
        mt = c["metrics"]
        if c["graph"] == "text":
            assert mt["cosine"] >= 0.9999
        elif c["precision"] == "fp32":
            assert mt["max_abs_rel_to_range"] <= 1e-4
        else:
            assert mt["cosine"] >= 0.999 and mt["argmax_agreement"] >= 0.995


@pytest.mark.parametrize("k", [3, 20])
def test_image_graph_runs_at_two_vocab_sizes_and_matches_eager(tiny_bundle: Path, k: int) -> None:
    """One export, K=3 and K=20, against the eager model loaded from the bundle's weights."""
    import onnxruntime as ort
    import torch

    from rsvl_train.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_bundle / "weights.safetensors", tile_size=64)
    rng = np.random.default_rng(k)
    opt = rng.normal(size=(2, 3, 64, 64)).astype(np.float32)
    sar = rng.normal(size=(2, 1, 64, 64)).astype(np.float32)
    emb = rng.normal(size=(k, model.config["embed_dim"])).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sess = ort.InferenceSession(str(tiny_bundle / "image.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"optical": opt, "sar": sar, "text_emb": emb})[0]
    with torch.no_grad():
        ref = model.forward_image(torch.from_numpy(opt), torch.from_numpy(sar), torch.from_numpy(emb))["logits"].numpy()
    assert got.shape == (2, k, 64, 64)
    assert np.abs(got - ref).max() <= 1e-4 * (ref.max() - ref.min())


def test_inspect_prints_and_rejects_a_tampered_file(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    from rsvl_export.cli import main

    assert main(["inspect", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    assert "tsmnet-tiny" in out and "image.fp16.onnx" in out and "parity" in out

    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    with open(bad / "image.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "image.onnx" in err and "does not match the manifest" in err
    with pytest.raises(BundleError, match="image.onnx"):
        Bundle.load(bad)


def test_tensorrt_required_without_tensorrt_fails_clearly(tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnx")
    from rsvl_runtime.backends.tensorrt.flavours import can_build

    if can_build("tensorrt")[0]:
        pytest.skip("enterprise TensorRT and a GPU are present: the failure path does not apply")
    from rsvl_export.cli import main

    rc = main(["--model", "tsmnet-tiny", "--tile", "64", "--engine", "tensorrt", "--precision", "fp16",
               "--out", str(tmp_path / "b"), "--max-batch", "2"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "--engine tensorrt: tensorrt" in err and "pip install tensorrt" in err
    assert not (tmp_path / "b").exists()  # nothing half-written under the final name


def test_paper_head_export_fixes_k(tmp_path: Path) -> None:
    """The released fixed-K classifier: K is static in the graph, recorded in the manifest, and the
    runtime refuses another vocabulary size with the fix."""
    from rsvl_export.pipeline import ExportOptions, export_bundle
    from rsvl_runtime import Segmenter, VocabularyError

    out = export_bundle(ExportOptions(model="tsmnet-tiny", tile=64, precision="fp32", engine="none", max_batch=2,
                                      parity_batches=(1, 2), include_weights=False, out=str(tmp_path / "paper"),
                                      overrides={"head": "paper"}))
    m = Bundle.load(out).manifest
    assert m["head"] == "paper" and m["fixed_vocabulary_size"] == 7
    assert m["graphs"]["image"]["inputs"]["text_emb"]["shape"][0] == 7
    seg = Segmenter.load(out)
    labels, probs = seg.predict(np.zeros((3, 64, 64), np.uint8), np.full((1, 64, 64), -12.0, np.float32))
    assert probs.shape == (7, 64, 64)
    with pytest.raises(VocabularyError, match="fixed-K"):
        seg.set_vocabulary("water,building,road")
