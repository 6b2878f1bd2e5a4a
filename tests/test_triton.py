"""Triton model repository from a bundle: written, validated, its Python model run without a
server (a stand-in for triton_python_backend_utils), and served by a real tritonserver."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rsvl_export import triton as T
from rsvl_export import triton_config as C
from rsvl_export.triton_cli import main as triton_main
from rsvl_export.triton_model import model as triton_model
from rsvl_runtime.bundle import write_manifest

from ._triton_server import (
    TritonServer,
    TritonUnavailable,
    find_tritonserver,
    start_server,
)

VOCAB = "water|lake,building,road"


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> Path:
    return tiny_bundle


@pytest.fixture(scope="module")
def repo(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    assert triton_main([str(bundle), str(out)]) == 0  # writes and validates
    return out


def _engine_bundle(bundle: Path, dst: Path) -> Path:
    """A copy of the bundle that declares a TensorRT engine (a placeholder file: only the
    repository layout and the profile checks are tested here)."""
    shutil.copytree(bundle, dst, copy_function=os.link)
    m = json.loads((dst / "manifest.json").read_text())
    (dst / "manifest.json").unlink()
    (dst / "image.fp16.engine").write_bytes(b"placeholder engine")
    t = m["tile"]["size"]
    m["engines"] = [{"graph": "image", "file": "image.fp16.engine", "precision": "fp16",
                     "flavour": "tensorrt", "version": "10.13.0", "targets": ["9.0"], "built_on": "NVIDIA H100",
                     "profiles": {"optical": {"min": [1, 3, t, t], "opt": [4, 3, t, t], "max": [6, 3, t, t]},
                                  "sar": {"min": [1, 1, t, t], "opt": [4, 1, t, t], "max": [6, 1, t, t]},
                                  "text_emb": {"min": [1, 128], "opt": [16, 128], "max": [256, 128]}}}]
    write_manifest(dst, m)
    return dst


def test_repository_layout_and_configs(repo: Path, bundle: Path) -> None:
    name = "tsmnet-tiny"
    assert sorted(p.name for p in repo.iterdir()) == [name, f"{name}_image", f"{name}_text"]
    py = T.parse_config(repo / name / "config.pbtxt")
    assert py["backend"] == "python" and py["max_batch_size"] == 8
    assert py["dynamic_batching"] == {"max_queue_delay_microseconds": T.DEFAULT_QUEUE_DELAY_US}
    assert {t["name"]: (t["data_type"], t["dims"]) for t in py["input"]} == {
        "optical": ("TYPE_UINT8", [3, 64, 64]), "sar": ("TYPE_FP32", [1, 64, 64]), "vocabulary": ("TYPE_STRING", [1])}
    assert py["output"][0]["data_type"] == "TYPE_UINT8" and py["output"][0]["dims"] == [64, 64]
    assert (repo / name / "1" / "model.py").is_file() and (repo / name / "1" / "bundle" / "manifest.json").is_file()
    img = T.parse_config(repo / f"{name}_image" / "config.pbtxt")
    assert img["platform"] == "onnxruntime_onnx" and img["max_batch_size"] == 0
    assert img["gpu_accelerators"][0]["name"] == "tensorrt"
    assert img["gpu_accelerators"][0]["parameters"]["precision_mode"] == "FP16"
    txt = T.parse_config(repo / f"{name}_text" / "config.pbtxt")
    assert [t["dims"] for t in txt["input"]] == [[-1, 16], [-1, 16]] and txt["output"][0]["dims"] == [-1, 128]
    # the small fallback parser reads our configs as Triton's protobuf does
    for cfg in repo.glob("*/config.pbtxt"):
        assert C.normalise_fallback(C.parse_pbtxt(cfg.read_text())) == T.parse_config(cfg)
    assert T.validate_repository(repo, bundle) == []


def test_validation_catches_mismatches(repo: Path, bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "repo"
    shutil.copytree(repo, bad, copy_function=os.link)
    for cfg in bad.glob("*/config.pbtxt"):  # configs get rewritten: break the hard links
        text = cfg.read_text()
        cfg.unlink()
        cfg.write_text(text)
    img = bad / "tsmnet-tiny_image" / "config.pbtxt"
    img.write_text(img.read_text().replace("dims: [ -1, 3, 64, 64 ]", "dims: [ -1, 3, 32, 32 ]")
                   .replace('name: "sar" data_type: TYPE_FP32', 'name: "sar" data_type: TYPE_FP16'))
    py = bad / "tsmnet-tiny" / "config.pbtxt"
    py.write_text(py.read_text().replace("max_batch_size: 8", "max_batch_size: 64")
                  .replace("dynamic_batching { max_queue_delay_microseconds: 2000 }\n", ""))
    problems = "\n".join(T.validate_repository(bad, bundle))
    assert "input 'optical' dim 2 is 32 in config.pbtxt, 64 in the graph" in problems
    assert "input 'sar' is TYPE_FP16 in config.pbtxt but TYPE_FP32 in the graph" in problems
    assert "max_batch_size 64 exceeds the bundle's max_batch 8" in problems
    assert "dynamic_batching is not configured" in problems
    (bad / "tsmnet-tiny_text" / "config.pbtxt").write_text("name: \"tsmnet-tiny_text\" bogus_field: 1\n")
    assert any("tsmnet-tiny_text: config.pbtxt does not parse" in p for p in T.validate_repository(bad, bundle))


def test_tensorrt_model_follows_the_engine(bundle: Path, tmp_path: Path) -> None:
    eb = _engine_bundle(bundle, tmp_path / "bundle")
    with pytest.raises(ValueError, match="outside 1..6"):
        T.write_triton_repository(eb, tmp_path / "r0", max_batch=8)  # the profile allows B <= 6
    repo = T.write_triton_repository(eb, tmp_path / "repo")
    assert repo.max_batch == 6
    trt = T.parse_config(tmp_path / "repo" / "tsmnet-tiny_image_trt" / "config.pbtxt")
    assert trt["platform"] == "tensorrt_plan" and trt["backend"] == "tensorrt"
    assert trt["cc_model_filenames"] == {"9.0": "model_sm90.plan"}
    assert (tmp_path / "repo" / "tsmnet-tiny_image_trt" / "1" / "model_sm90.plan").is_file()
    assert T.validate_repository(tmp_path / "repo", eb) == []
    cfg = tmp_path / "repo" / "tsmnet-tiny_image_trt" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('key: "9.0"', 'key: "8.6"').replace(
        "dims: [ -1, 128 ]", "dims: [ 512, 128 ]"))
    problems = "\n".join(T.validate_repository(tmp_path / "repo", eb))
    assert "not the engine's compute capability 9.0" in problems
    assert "input 'text_emb' dim 0 = 512 is outside the profile [1, 256]" in problems


def test_model_py_is_the_package_module(repo: Path) -> None:
    written = (repo / "tsmnet-tiny" / "1" / "model.py").read_bytes()
    assert written == Path(triton_model.__file__).read_bytes()
    assert (repo / "tsmnet-tiny" / "1" / "rsvl_runtime" / "segmenter.py").is_file()  # vendored


def test_options_and_overrides(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="link must be one of"):
        T.write_triton_repository(bundle, tmp_path / "r0", link="move")
    repo = T.write_triton_repository(bundle, tmp_path / "r1", 4, T.RepositoryOptions(name="seg", instances=2),
                                     link="copy", vendor_runtime=False, threads=1)
    assert sorted(repo.models) == ["seg", "seg_image", "seg_text"] and repo.max_batch == 4
    cfg = C.parse_config(tmp_path / "r1" / "seg" / "config.pbtxt")
    assert cfg["max_batch_size"] == 4 and cfg["parameters"]["threads"] == "1"
    assert "count: 2" in (tmp_path / "r1" / "seg" / "config.pbtxt").read_text()
    assert not (tmp_path / "r1" / "seg" / "1" / "rsvl_runtime").exists()
    assert (tmp_path / "r1" / "seg_image" / "1" / "model.onnx").stat().st_nlink == 1  # copied, not linked


# ------------------------------------------------------------------ the Python model without a server
class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Response:
    def __init__(self, output_tensors: list[_Tensor] | None = None, error: object = None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors or []}
        self.error = error


class _Error:
    def __init__(self, msg: str) -> None:
        self.msg = msg


#: the parts of triton_python_backend_utils that model.py uses.
FAKE_PB_UTILS = SimpleNamespace(Tensor=_Tensor, InferenceResponse=_Response, TritonError=_Error,
                                get_input_tensor_by_name=lambda request, name: request.get(name))


def _request(optical: np.ndarray | None, sar: np.ndarray | None, vocab: str | list[str] | None) -> dict:
    req = {n: _Tensor(n, x) for n, x in (("optical", optical), ("sar", sar)) if x is not None}
    if vocab is not None:
        b = (optical if optical is not None else sar).shape[0]
        rows = vocab if isinstance(vocab, list) else [vocab] * b
        req["vocabulary"] = _Tensor("vocabulary", np.array([[v.encode()] for v in rows], dtype=object))
    return req


@pytest.fixture(scope="module")
def python_model(repo: Path):
    mp = pytest.MonkeyPatch()
    mp.setattr(triton_model, "pb_utils", FAKE_PB_UTILS)
    model = triton_model.TritonPythonModel()
    cfg = {"parameters": {k: {"string_value": v} for k, v in
                          C.parse_config(repo / "tsmnet-tiny" / "config.pbtxt")["parameters"].items()}}
    model.initialize({"model_config": json.dumps(cfg), "model_repository": str(repo / "tsmnet-tiny"),
                      "model_version": "1"})
    yield model
    model.finalize()
    mp.undo()


def test_python_model_labels_equal_segmenter(python_model, bundle: Path) -> None:
    from rsvl_runtime import Segmenter

    rng = np.random.default_rng(1)
    opt = rng.integers(0, 256, (5, 3, 64, 64), dtype=np.uint8)
    sar = rng.normal(-12.0, 5.0, (5, 1, 64, 64)).astype(np.float32)
    jobs = [(slice(0, 2), VOCAB), (slice(2, 5), VOCAB), (slice(0, 3), "water,vegetation"), (slice(3, 5), None)]
    # one execute() call: what Triton's dynamic batcher hands over; grouped by vocabulary
    requests = [_request(opt[s], sar[s], v) for s, v in jobs] + [_request(opt[:2], None, VOCAB)]
    responses = python_model.execute(requests)
    assert [r.error for r in responses] == [None] * len(requests)
    seg = Segmenter.load(bundle, threads=1)
    for (s, v), r in zip(jobs, responses):
        seg.set_vocabulary(v if v is not None else seg.bundle.manifest["default_vocabulary"])
        ref = np.stack([seg.predict(opt[i], sar[i])[0] for i in range(s.start, s.stop)])
        assert r.outputs["labels"].dtype == np.uint8
        np.testing.assert_array_equal(r.outputs["labels"], ref)
    seg.set_vocabulary(VOCAB)
    np.testing.assert_array_equal(responses[-1].outputs["labels"],
                                  np.stack([seg.predict(opt[i], None)[0] for i in range(2)]))


def test_python_model_rejects_bad_requests_alone(python_model) -> None:
    rng = np.random.default_rng(2)
    opt = rng.integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    sar = rng.normal(-12.0, 5.0, (2, 1, 64, 64)).astype(np.float32)
    bad = [_request(opt[:, :, :32, :32].copy(), None, VOCAB), _request(None, None, None),
           _request(opt, sar[:1], VOCAB), _request(opt, None, [VOCAB, "water"])]
    responses = python_model.execute([*bad, _request(opt, sar, VOCAB)])
    errors = [r.error.msg for r in responses[:-1]]
    assert "optical must be [B, 3, 64, 64], got [2, 3, 32, 32]" in errors[0]
    assert "send at least one of the inputs optical, sar" in errors[1]
    assert "optical and sar batch sizes differ (2 vs 1)" in errors[2]
    assert "one vocabulary per request" in errors[3]
    assert responses[-1].error is None and responses[-1].outputs["labels"].shape == (2, 64, 64)


# ------------------------------------------------------------------ a real tritonserver
@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory):
    try:
        install = find_tritonserver()
    except TritonUnavailable as e:
        pytest.skip(f"tritonserver cannot run here: {e}")
    try:
        srv = start_server(repo, ["tsmnet-tiny"], workdir=tmp_path_factory.mktemp("tritonserver"), install=install)
    except TritonUnavailable as e:
        pytest.skip(f"tritonserver cannot run here: {e}")
    yield srv
    srv.stop()
    assert srv.process.poll() is not None


def _inputs(client_mod, optical: np.ndarray | None, sar: np.ndarray | None, vocab: str | None):
    ins = []
    for name, x, dt in (("optical", optical, "UINT8"), ("sar", sar, "FP32")):
        if x is not None:
            ins.append(client_mod.InferInput(name, list(x.shape), dt))
            ins[-1].set_data_from_numpy(x)
    if vocab is not None:
        b = (optical if optical is not None else sar).shape[0]
        ins.append(client_mod.InferInput("vocabulary", [b, 1], "BYTES"))
        ins[-1].set_data_from_numpy(np.array([[vocab.encode()]] * b, dtype=object))
    return ins


def test_server_labels_equal_segmenter(server: TritonServer, bundle: Path) -> None:
    http = pytest.importorskip("tritonclient.http")
    from rsvl_runtime import Segmenter

    rng = np.random.default_rng(0)
    opt = rng.integers(0, 256, (5, 3, 64, 64), dtype=np.uint8)
    sar = rng.normal(-12.0, 5.0, (5, 1, 64, 64)).astype(np.float32)
    client = http.InferenceServerClient(server.url, concurrency=4, network_timeout=60.0)
    try:
        # concurrent requests (dynamic batching may merge them), two vocabularies and the default one
        jobs = [(slice(0, 2), VOCAB), (slice(2, 5), VOCAB), (slice(0, 3), "water,vegetation"), (slice(3, 5), None)]
        pending = [client.async_infer("tsmnet-tiny", _inputs(http, opt[s], sar[s], v)) for s, v in jobs]
        got = [p.get_result(timeout=60).as_numpy("labels") for p in pending]
        only_opt = client.infer("tsmnet-tiny", _inputs(http, opt[:2], None, VOCAB)).as_numpy("labels")
        with pytest.raises(Exception, match="shape|must be"):
            client.infer("tsmnet-tiny", _inputs(http, opt[:1, :, :32, :32].copy(), None, VOCAB))
    finally:
        client.close()
    seg = Segmenter.load(bundle, threads=1)
    for (s, v), labels in zip(jobs, got):
        seg.set_vocabulary(v if v is not None else seg.bundle.manifest["default_vocabulary"])
        ref = np.stack([seg.predict(opt[i], sar[i])[0] for i in range(s.start, s.stop)])
        assert labels.dtype == np.uint8 and labels.shape == ref.shape
        np.testing.assert_array_equal(labels, ref)
    seg.set_vocabulary(VOCAB)
    np.testing.assert_array_equal(only_opt, np.stack([seg.predict(opt[i], None)[0] for i in range(2)]))
