"""TensorRT build (rsvl_export.tensorrt_build) and runtime backend (rsvl_runtime.backends.tensorrt_backend).

Three layers:

* tests marked ``tensorrt`` build and run a real engine; they skip with the reason
  "tensorrt is not importable (no TensorRT on this machine)" (or "no CUDA GPU") where that is so;
* tests that run everywhere check the messages and checks that do not need TensorRT:
  ``TensorRTUnavailable`` when tensorrt is missing, ``trtexec_command``, ``EngineMismatchError``
  from a manifest whose TensorRT version / compute capability differs from the installed one,
  profile checks;
* a fake ``tensorrt`` module (mimicking the documented Python API: Builder, OnnxParser,
  optimisation profile, timing cache, Runtime, execution context with set_input_shape /
  set_tensor_address / execute_async_v3) that "executes" the ONNX graph with ONNX Runtime,
  so the build flow and the session's shape/buffer plumbing run on CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

import rsvl_export.tensorrt_build as tb
import rsvl_runtime.backends.tensorrt_backend as tbk
from rsvl_export.parity import ParityReport, ort_session
from rsvl_export.tensorrt_build import EngineInfo, build_engine, tensorrt_available, trtexec_command
from rsvl_runtime.backends.tensorrt_backend import (
    TENSORRT_MISSING,
    EngineMismatchError,
    TensorRTSession,
    TensorRTUnavailable,
    check_engine_compatible,
    check_shape_in_profile,
    versions_match,
)
from rsvl_runtime.bundle import BundleError
from tests.export_toy import TILE, example_inputs, exported_toy_fp16

PROFILES = {"optical": ([1, 3, TILE, TILE], [2, 3, TILE, TILE], [4, 3, TILE, TILE]),
            "text_emb": ([1, 8], [8, 8], [32, 8])}
META = {"graph": "image", "file": "image.fp16.engine", "onnx": "image.fp16.onnx", "precision": "fp16",
        "tensorrt_version": "10.13.0.35", "compute_capability": "9.0", "gpu": "NVIDIA H100 80GB HBM3",
        "profiles": {n: {"min": p[0], "opt": p[1], "max": p[2]} for n, p in PROFILES.items()}}

#: (False, "tensorrt is not importable (no TensorRT on this machine)") here; real-engine tests skip with it.
TRT_OK, TRT_REASON = tensorrt_available()


# =========================================================================== everywhere
def test_trtexec_command_has_the_exact_shapes() -> None:
    cmd = trtexec_command("bundle/image.fp16.onnx", PROFILES, fp16=True)
    assert cmd == ("trtexec --onnx=bundle/image.fp16.onnx --stronglyTyped "
                   "--minShapes=optical:1x3x32x32,text_emb:1x8 "
                   "--optShapes=optical:2x3x32x32,text_emb:8x8 "
                   "--maxShapes=optical:4x3x32x32,text_emb:32x8 "
                   "--saveEngine=bundle/image.fp16.engine")
    cmd = trtexec_command("my dir/image.onnx", META["profiles"], fp16=False, engine_path="out/e.engine",
                          timing_cache="tc.cache", workspace_gb=2)
    assert "--onnx='my dir/image.onnx'" in cmd and "--saveEngine=out/e.engine" in cmd
    assert "--memPoolSize=workspace:2048M" in cmd and "--timingCacheFile=tc.cache" in cmd


def test_trtexec_command_refuses_bad_profiles() -> None:
    with pytest.raises(ValueError, match="min <= opt <= max"):
        trtexec_command("x.onnx", {"text_emb": ([8, 8], [1, 8], [32, 8])}, True)


def test_missing_tensorrt_gives_a_message_with_the_way_to_build_on_the_target(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)          # `import tensorrt` -> ImportError
    ok, reason = tensorrt_available()
    assert not ok and reason == TENSORRT_MISSING
    with pytest.raises(TensorRTUnavailable) as ei:
        build_engine(tmp_path / "image.fp16.onnx", tmp_path / "image.fp16.engine", PROFILES, fp16=True)
    msg = str(ei.value)
    assert "tensorrt is not importable" in msg
    assert "pip install tensorrt" in msg and "--engine tensorrt" in msg and "rebuild-engine" in msg
    assert trtexec_command(tmp_path / "image.fp16.onnx", PROFILES, True,
                           engine_path=tmp_path / "image.fp16.engine") in msg
    assert "--minShapes=optical:1x3x32x32,text_emb:1x8" in msg and "--stronglyTyped" in msg
    # the runtime says the same kind of thing
    with pytest.raises(TensorRTUnavailable, match="pip install tensorrt.*--backend onnxruntime"):
        tbk.import_tensorrt()


def _fake_machine(monkeypatch, version: str, cc: str, gpu: str = "NVIDIA GeForce RTX 3090") -> None:
    monkeypatch.setattr(tbk, "installed_tensorrt_version", lambda: version)
    monkeypatch.setattr(tbk, "gpu_info", lambda device=0: {"name": gpu, "compute_capability": cc})


@pytest.mark.parametrize("version, cc, names", [
    ("10.9.0.34", "9.0", ["TensorRT 10.13.0.35", "installed here: 10.9.0.34"]),
    ("10.13.0.35", "8.6", ["compute capability 9.0 (NVIDIA H100 80GB HBM3)", "this GPU: 8.6, NVIDIA GeForce RTX 3090"]),
    ("10.9.0.34", "8.6", ["TensorRT 10.13.0.35", "compute capability 9.0", "8.6"]),
])
def test_engine_mismatch_is_refused_before_deserialising(monkeypatch, tmp_path: Path, version: str, cc: str,
                                                         names: list[str]) -> None:
    engine = tmp_path / "image.fp16.engine"
    engine.write_bytes(b"serialized engine")
    _fake_machine(monkeypatch, version, cc)

    def no_tensorrt_please():
        raise AssertionError("the engine must not be deserialised before the version/GPU check")

    monkeypatch.setattr(tbk, "import_tensorrt", no_tensorrt_please)
    with pytest.raises(EngineMismatchError) as ei:
        TensorRTSession(engine, META)
    msg = str(ei.value)
    for n in names:
        assert n in msg, (n, msg)
    assert f"rsvl-export rebuild-engine {tmp_path}" in msg
    assert "trtexec --onnx=" in msg and "--maxShapes=optical:4x3x32x32,text_emb:32x8" in msg
    assert isinstance(ei.value, BundleError)                 # the CLI's bundle error handling catches it


def test_matching_versions_pass_the_check(monkeypatch, tmp_path: Path) -> None:
    _fake_machine(monkeypatch, "10.13.0.35", "9.0")
    assert check_engine_compatible(tmp_path / "e.engine", META) == ("10.13.0.35", "9.0")
    assert versions_match("10.13.0", "10.13.0.35") and not versions_match("10.13.0", "10.13.2")


def test_manifest_without_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EngineMismatchError, match="lacks tensorrt_version/compute_capability"):
        check_engine_compatible(tmp_path / "e.engine", {"graph": "image", "precision": "fp16"})


def test_no_gpu_is_reported(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tbk, "installed_tensorrt_version", lambda: "10.13.0.35")
    monkeypatch.setattr(tbk, "gpu_info", lambda device=0: None)
    with pytest.raises(TensorRTUnavailable, match="no CUDA GPU found"):
        check_engine_compatible(tmp_path / "e.engine", META)


def test_shape_outside_profile_names_both_shapes() -> None:
    check_shape_in_profile("text_emb", (20, 8), PROFILES["text_emb"])
    with pytest.raises(ValueError, match=r"'text_emb' has shape \[40, 8\].*min \[1, 8\] \.\. max \[32, 8\]"):
        check_shape_in_profile("text_emb", (40, 8), PROFILES["text_emb"])
    with pytest.raises(ValueError, match=r"shape \[2, 3, 64, 64\]"):
        check_shape_in_profile("optical", (2, 3, 64, 64), META["profiles"]["optical"])


def test_runtime_backend_imports_without_torch_or_tensorrt() -> None:
    code = ("import sys; import rsvl_runtime.backends.tensorrt_backend as m; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'tensorrt' not in sys.modules, 'tensorrt imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True)


# =========================================================================== fake TensorRT
class FakeMemory:
    """Device memory as host bytearrays keyed by fake pointers."""

    def __init__(self) -> None:
        self.blocks: dict[int, bytearray] = {}
        self._next = 1 << 20
        self.freed = 0

    def malloc(self, nbytes: int) -> int:
        ptr, self._next = self._next, self._next + nbytes + 256
        self.blocks[ptr] = bytearray(nbytes)
        return ptr

    def free(self, ptr: int) -> None:
        del self.blocks[ptr]
        self.freed += 1

    def stream(self) -> int:
        return 7

    def destroy_stream(self, stream: int) -> None:
        pass

    def h2d(self, dst: int, src: np.ndarray, stream: int) -> None:
        self.blocks[dst][:src.nbytes] = src.tobytes()

    def d2h(self, dst: np.ndarray, src: int, stream: int) -> None:
        dst[...] = np.frombuffer(bytes(self.blocks[src][:dst.nbytes]), dtype=dst.dtype).reshape(dst.shape)

    def sync(self, stream: int) -> None:
        pass

    def read(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return np.frombuffer(bytes(self.blocks[ptr][:n]), dtype=dtype).reshape(shape)


def make_fake_tensorrt(version: str, memory: FakeMemory) -> types.ModuleType:
    """A stand-in for the `tensorrt` module with the documented API surface we call."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    built: dict[str, Any] = {}
    trt.built = built  # type: ignore[attr-defined]

    class ILogger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, *args: Any) -> None:
            pass

    class Logger(ILogger):
        pass

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1
        EXPLICIT_BATCH = 0

    class BuilderFlag:
        FP16 = "FP16"

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class _Tensor:
        def __init__(self, name: str, shape: list[int]) -> None:
            self.name, self.shape = name, shape

    class _Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.inputs, self.outputs, self.onnx = flags, [], [], None

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, i: int) -> _Tensor:
            return self.inputs[i]

        def get_output(self, i: int) -> _Tensor:
            return self.outputs[i]

    class OnnxParser:
        def __init__(self, network: _Network, logger: ILogger) -> None:
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path: str) -> bool:
            m = onnx.load(path)
            dims = lambda vi: [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
            self.network.inputs = [_Tensor(vi.name, dims(vi)) for vi in m.graph.input]
            self.network.outputs = [_Tensor(vi.name, dims(vi)) for vi in m.graph.output]
            self.network.onnx = path
            return True

        def get_error(self, i: int) -> str:  # pragma: no cover
            return ""

    class _Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, list[list[int]]] = {}

        def set_shape(self, name: str, mn: list[int], opt: list[int], mx: list[int]) -> None:
            self.shapes[name] = [list(mn), list(opt), list(mx)]

    class _Cache:
        def __init__(self, blob: bytes) -> None:
            self.blob = blob

        def serialize(self) -> bytes:
            return b"timing-cache:" + bytes(len(self.blob) + 1)

    class _Config:
        def __init__(self) -> None:
            self.flags: set[str] = set()
            self.pools: dict[str, int] = {}
            self.profiles: list[_Profile] = []
            self.cache: _Cache | None = None

        def set_flag(self, flag: str) -> None:
            self.flags.add(flag)

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            self.pools[pool] = size

        def add_optimization_profile(self, p: _Profile) -> int:
            self.profiles.append(p)
            return len(self.profiles) - 1

        def create_timing_cache(self, blob: bytes) -> _Cache:
            return _Cache(bytes(blob))

        def set_timing_cache(self, cache: _Cache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> _Cache | None:
            return self.cache

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger: ILogger) -> None:
            pass

        def create_network(self, flags: int = 0) -> _Network:
            return _Network(flags)

        def create_builder_config(self) -> _Config:
            return _Config()

        def create_optimization_profile(self) -> _Profile:
            return _Profile()

        def build_serialized_network(self, network: _Network, config: _Config) -> bytes:
            built.update(flags=network.flags, config_flags=sorted(config.flags), pools=config.pools,
                         cache_blob=config.cache.blob if config.cache else None)
            payload = {"onnx": network.onnx, "profiles": config.profiles[0].shapes,
                       "inputs": [t.name for t in network.inputs], "outputs": [t.name for t in network.outputs]}
            return json.dumps(payload).encode()

    class _Context:
        def __init__(self, engine: "_Engine") -> None:
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            self.shapes[name] = tuple(shape)
            return True

        def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return self.engine.sess.run(self.engine.outputs, feeds)

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            zeros = {n: np.zeros(s, np.float32) for n, s in self.shapes.items()}
            return tuple(self._run(zeros)[self.engine.outputs.index(name)].shape)

        def set_tensor_address(self, name: str, ptr: int) -> None:
            self.addresses[name] = ptr

        def execute_async_v3(self, stream: int) -> bool:
            feeds = {n: memory.read(self.addresses[n], self.shapes[n], np.float32) for n in self.engine.inputs}
            for name, out in zip(self.engine.outputs, self._run(feeds)):
                memory.blocks[self.addresses[name]][:out.nbytes] = np.ascontiguousarray(out, np.float32).tobytes()
            return True

    class _Engine:
        def __init__(self, payload: dict[str, Any]) -> None:
            self.inputs, self.outputs, self.profiles = payload["inputs"], payload["outputs"], payload["profiles"]
            self.sess = ort_session(payload["onnx"])

        num_io_tensors = property(lambda self: len(self.inputs) + len(self.outputs))

        def get_tensor_name(self, i: int) -> str:
            return (self.inputs + self.outputs)[i]

        def get_tensor_mode(self, name: str) -> str:
            return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> str:
            return "float32"

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[list[int]]:
            return self.profiles[name]

        def create_execution_context(self) -> _Context:
            return _Context(self)

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> _Engine:
            built["deserialised"] = built.get("deserialised", 0) + 1
            return _Engine(json.loads(data))

    for obj in (ILogger, Logger, NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType, TensorIOMode,
                OnnxParser, Builder, Runtime):
        setattr(trt, obj.__name__, obj)
    trt.nptype = lambda dt: np.dtype(dt)  # type: ignore[attr-defined]
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    """Install a fake tensorrt 10.13 on a fake 'GPU' (compute capability 9.0)."""
    memory = FakeMemory()

    def install(version: str = "10.13.0.35"):
        trt = make_fake_tensorrt(version, memory)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        gpu = lambda device=0: {"name": "Fake H100", "compute_capability": "9.0"}  # noqa: E731
        monkeypatch.setattr(tbk, "gpu_info", gpu)
        monkeypatch.setattr(tb, "gpu_info", gpu)
        monkeypatch.setattr(tbk, "device_memory", lambda: memory)
        monkeypatch.setattr(tbk, "_cudart", lambda: None)
        return trt, memory

    return install


@pytest.fixture(scope="module")
def fp16_graph():
    return exported_toy_fp16()


def test_fake_build_is_strongly_typed_from_the_fp16_onnx(fake_trt, fp16_graph, tmp_path: Path) -> None:
    trt, _ = fake_trt("10.13.0.35")
    result, _, _ = fp16_graph
    cache = tmp_path / "trt.cache"
    info = build_engine(result.path, tmp_path / "image.fp16.engine", PROFILES, fp16=True, timing_cache_path=cache,
                        workspace_gb=1)
    assert isinstance(info, EngineInfo) and info.strongly_typed and info.precision == "fp16"
    assert trt.built["flags"] == 1 << 1 and trt.built["config_flags"] == []     # no BuilderFlag.FP16
    assert trt.built["pools"] == {"WORKSPACE": 1 << 30}
    assert info.tensorrt_version == "10.13.0.35" and info.compute_capability == "9.0" and info.gpu == "Fake H100"
    assert info.profiles["text_emb"] == {"min": [1, 8], "opt": [8, 8], "max": [32, 8]}
    assert cache.read_bytes().startswith(b"timing-cache:") and not info.timing_cache_loaded
    d = info.to_dict()
    assert d["file"] == "image.fp16.engine" and d["onnx"] == "image.fp16.onnx" and "engine_path" not in d
    json.dumps(d)
    # a second build loads the timing cache written by the first
    info2 = build_engine(result.path, tmp_path / "image.fp16.engine", PROFILES, fp16=True, timing_cache_path=cache)
    assert info2.timing_cache_loaded and trt.built["cache_blob"].startswith(b"timing-cache:")


def test_fake_build_before_10_12_uses_the_fp16_flag(fake_trt, fp16_graph, tmp_path: Path) -> None:
    trt, _ = fake_trt("10.8.0.43")
    result, _, _ = fp16_graph
    info = build_engine(result.path, tmp_path / "e.engine", PROFILES, fp16=True)
    assert not info.strongly_typed and trt.built["flags"] == 0 and trt.built["config_flags"] == ["FP16"]


def test_fake_build_refuses_fp32_onnx_for_a_strongly_typed_fp16_engine(fake_trt, fp16_graph, tmp_path) -> None:
    fake_trt("10.13.0.35")
    _, res32, _ = fp16_graph
    with pytest.raises(ValueError, match="has no FP16 tensors.*image.fp16.onnx"):
        build_engine(res32.path, tmp_path / "e.engine", PROFILES, fp16=True)


@pytest.mark.parametrize("profiles, match", [
    ({"optical": PROFILES["optical"]}, r"'text_emb'.*dynamic shape \[-1, 8\] but no optimisation profile"),
    ({**PROFILES, "sar": ([1, 1, 32, 32],) * 3}, r"\['sar'\], which are not inputs"),
    ({**PROFILES, "optical": ([1, 3, 64, 64],) * 3}, r"min shape \[1, 3, 64, 64\] .* graph's shape \[-1, 3, 32, 32\]"),
])
def test_fake_build_checks_profiles_against_the_graph(fake_trt, fp16_graph, tmp_path, profiles, match) -> None:
    fake_trt("10.13.0.35")
    result, _, _ = fp16_graph
    with pytest.raises(ValueError, match=match):
        build_engine(result.path, tmp_path / "e.engine", profiles, fp16=True)


def test_fake_session_runs_at_two_batches_and_two_vocabularies(fake_trt, fp16_graph, tmp_path: Path) -> None:
    trt, memory = fake_trt("10.13.0.35")
    result, _, model = fp16_graph
    engine = tmp_path / "image.fp16.engine"
    info = build_engine(result.path, engine, PROFILES, fp16=True)
    meta = {**info.to_dict(), "graph": "image"}
    sess = TensorRTSession(engine, meta)
    assert sess.input_names == ["optical", "text_emb"] and sess.output_names == ["logits"]
    assert sess.profiles["optical"]["max"] == [4, 3, TILE, TILE]
    ref_sess = ort_session(result.path)
    report = ParityReport()
    for b, k in ((1, 3), (3, 20)):
        x = {n: t.numpy() for n, t in example_inputs(b=b, k=k, seed=70 + b + k).items()}
        out = sess.run(x)["logits"]
        assert out.shape == (b, k, TILE, TILE) and out.dtype == np.float32
        np.testing.assert_array_equal(out, ref_sess.run(None, x)[0])   # bytes went through the buffers intact
        with torch.no_grad():
            ref = model(**{n: torch.from_numpy(v) for n, v in x.items()}).numpy()
        report.check("image", "fp16", "logits", ref, out, kind="logits", batch=b, vocab=k, backend="tensorrt")
    assert report.passed, report.summary()
    with pytest.raises(ValueError, match=r"'text_emb' has shape \[40, 8\].*max \[32, 8\]"):
        sess.run({n: t.numpy() for n, t in example_inputs(b=1, k=40).items()})
    with pytest.raises(ValueError, match=r"missing \['text_emb'\], unexpected \['vocab'\]"):
        sess.run({"optical": np.zeros((1, 3, TILE, TILE), np.float32), "vocab": np.zeros((3, 8), np.float32)})
    assert memory.freed == 3                                  # K=3 -> K=20 grew the 3 buffers once
    sess.close()
    assert memory.blocks == {} and trt.built["deserialised"] == 1


def test_fake_session_refuses_an_engine_from_another_tensorrt(fake_trt, fp16_graph, tmp_path: Path) -> None:
    trt, _ = fake_trt("10.13.0.35")
    result, _, _ = fp16_graph
    engine = tmp_path / "image.fp16.engine"
    meta = build_engine(result.path, engine, PROFILES, fp16=True).to_dict()
    fake_trt("10.14.1.48")                                      # TensorRT upgraded on this machine
    with pytest.raises(EngineMismatchError, match=r"TensorRT 10.13.0.35 \(installed here: 10.14.1.48\)"):
        TensorRTSession(engine, meta)
    assert "deserialised" not in sys.modules["tensorrt"].built


# =========================================================================== real TensorRT
@pytest.mark.tensorrt
@pytest.mark.skipif(not TRT_OK, reason=TRT_REASON)
def test_real_engine_builds_and_matches_eager(fp16_graph, tmp_path: Path) -> None:
    result, _, model = fp16_graph
    engine = tmp_path / "image.fp16.engine"
    info = build_engine(result.path, engine, PROFILES, fp16=True, timing_cache_path=tmp_path / "tc.cache")
    assert info.bytes > 0 and info.compute_capability.count(".") == 1
    sess = TensorRTSession(engine, info.to_dict())
    report = ParityReport()
    for b, k in ((1, 3), (3, 20)):
        x = {n: t.numpy() for n, t in example_inputs(b=b, k=k, seed=90 + b + k).items()}
        with torch.no_grad():
            ref = model(**{n: torch.from_numpy(v) for n, v in x.items()}).numpy()
        report.check("image", "fp16", "logits", ref, sess.run(x)["logits"], kind="logits", batch=b, vocab=k,
                     backend="tensorrt")
    report.raise_on_failure()
    with pytest.raises(ValueError, match="outside the engine's optimisation profile"):
        sess.run({n: t.numpy() for n, t in example_inputs(b=5, k=3).items()})
    wrong = {**info.to_dict(), "compute_capability": "1.0"}
    with pytest.raises(EngineMismatchError, match="compute capability 1.0"):
        TensorRTSession(engine, wrong)
