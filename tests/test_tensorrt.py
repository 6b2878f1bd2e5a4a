"""The TensorRT backend (``rsvl_runtime.backends.tensorrt``), both flavours.

Three layers:

* **real TensorRT-RTX** (installed by the dev extras, builds on the CPU): engines of the toy graph
  and of the session test bundle's image and text graphs are built for real; their manifest
  entries, ``rsvl-export inspect`` (validity via ``get_engine_validity``, a tampered engine), the
  runtime's one-line refusal without a GPU and ``--engine auto`` are checked on them;
* checks that need no TensorRT at all: profiles, commands, version parsing, flavour choice;
* a fake module for what the real library cannot show without a GPU: running a session (shape
  and buffer plumbing, the RTX runtime cache and CUDA-graph setting), enterprise TensorRT's
  build flags and timing cache, refusal of an engine from another version/GPU before
  deserialising, and an out-of-memory build.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

import rsvl_runtime.backends.tensorrt.probe as probe
import rsvl_runtime.backends.tensorrt.session as session_mod
from rsvl_export.parity import ParityReport, ort_session
from rsvl_runtime.backends.tensorrt import (
    EngineMismatchError,
    GpuInfo,
    TensorRTUnavailable,
    check_engine,
    check_shape_in_profile,
    choose_flavour,
    graph_profiles,
    import_flavour,
    require_engine,
    trtexec_command,
    version_tuple,
    versions_match,
)
from rsvl_runtime.backends.tensorrt.build import RTX_DEFAULT_TARGETS, EngineBuildError, EngineInfo, build_engine
from rsvl_runtime.backends.tensorrt.flavours import can_build
from rsvl_runtime.backends.tensorrt.session import TensorRTSession
from rsvl_runtime.bundle import BundleError
from tests.export_toy import TILE, example_inputs, exported_toy_fp16

PROFILES = {"optical": ([1, 3, TILE, TILE], [2, 3, TILE, TILE], [4, 3, TILE, TILE]),
            "text_emb": ([1, 8], [8, 8], [32, 8])}

RTX_OK, RTX_REASON = can_build("tensorrt-rtx")
needs_rtx = pytest.mark.skipif(not RTX_OK, reason=RTX_REASON)
NO_GPU = probe.gpu_info() is None


@pytest.fixture(scope="module")
def fp16_graph():
    return exported_toy_fp16()


# =========================================================================== no TensorRT needed
def test_trtexec_command_has_the_exact_shapes() -> None:
    cmd = trtexec_command("bundle/image.fp16.onnx", PROFILES, fp16=True)
    assert cmd == ("trtexec --onnx=bundle/image.fp16.onnx --stronglyTyped "
                   "--minShapes=optical:1x3x32x32,text_emb:1x8 "
                   "--optShapes=optical:2x3x32x32,text_emb:8x8 "
                   "--maxShapes=optical:4x3x32x32,text_emb:32x8 "
                   "--saveEngine=bundle/image.fp16.engine")
    cmd = trtexec_command("my dir/image.onnx", PROFILES, fp16=False, engine_path="out/e.engine",
                          timing_cache="tc.cache", workspace_gb=2)
    assert "--onnx='my dir/image.onnx'" in cmd and "--saveEngine=out/e.engine" in cmd
    assert "--memPoolSize=workspace:2048M" in cmd and "--timingCacheFile=tc.cache" in cmd
    with pytest.raises(ValueError, match="min <= opt <= max"):
        trtexec_command("x.onnx", {"text_emb": ([8, 8], [1, 8], [32, 8])}, True)


def test_profiles_come_from_the_manifest_axes() -> None:
    inputs = {"optical": {"dtype": "float32", "shape": ["B", 3, 64, 64]},
              "text_emb": {"dtype": "float32", "shape": ["K", 128]}}
    prof = graph_profiles(inputs, {"B": (1, 8, 32), "K": (1, 16, 256)})
    assert prof == {"optical": {"min": [1, 3, 64, 64], "opt": [8, 3, 64, 64], "max": [32, 3, 64, 64]},
                    "text_emb": {"min": [1, 128], "opt": [16, 128], "max": [256, 128]}}
    with pytest.raises(ValueError, match="dynamic axis 'K' without a size range"):
        graph_profiles(inputs, {"B": (1, 8, 32)})


def test_versions_parse_and_match() -> None:
    assert version_tuple("1.7.1.116") == (1, 7, 1, 116) and version_tuple("10.13.0rc1.x") == (10, 13, 0)
    assert versions_match("10.13.0", "10.13.0.35") and not versions_match("10.13.0", "10.13.2")
    assert not versions_match("", "1.7")


def test_shape_outside_profile_names_both_shapes() -> None:
    check_shape_in_profile("text_emb", (20, 8), PROFILES["text_emb"])
    with pytest.raises(ValueError, match=r"'text_emb' has shape \[40, 8\].*min \[1, 8\] \.\. max \[32, 8\]"):
        check_shape_in_profile("text_emb", (40, 8), PROFILES["text_emb"])


def test_enterprise_tensorrt_missing_or_a_stub_is_named_with_the_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)                 # `import tensorrt` -> ImportError
    with pytest.raises(TensorRTUnavailable, match=r"tensorrt is not importable.*pip install tensorrt"):
        import_flavour("tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))   # the index's stub
    with pytest.raises(TensorRTUnavailable, match="stub without the TensorRT libraries"):
        import_flavour("tensorrt")
    with pytest.raises(TensorRTUnavailable, match=r"--engine tensorrt: tensorrt is not importable"):
        choose_flavour("tensorrt")
    assert choose_flavour("none") == (None, "--engine none")


def test_auto_picks_tensorrt_rtx_without_a_gpu(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(probe, "gpu_info", lambda device=0: None)
    name, why = choose_flavour("auto")
    if RTX_OK:
        assert name == "tensorrt-rtx", why
        assert "ahead-of-time on the CPU" in why and "tensorrt is not importable" in why
    else:
        assert name is None and "pip install 'rsvl[tensorrt-rtx]'" in why
    # with a GPU and enterprise TensorRT importable, auto prefers enterprise TensorRT
    fake = types.ModuleType("tensorrt")
    fake.__version__, fake.Builder = "10.13.0.35", object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(probe, "gpu_info", lambda device=0: GpuInfo("Fake L4", "8.9"))
    assert choose_flavour("auto")[0] == "tensorrt"


def test_backend_imports_without_torch_or_tensorrt() -> None:
    code = ("import sys; import rsvl_runtime.backends.tensorrt as m; import rsvl_runtime.backends.tensorrt.session; "
            "import rsvl_runtime.backends.tensorrt.validity, rsvl_runtime.backends.tensorrt.build; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'tensorrt' not in sys.modules and 'tensorrt_rtx' not in sys.modules, 'tensorrt imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True)


# =========================================================================== real TensorRT-RTX
@pytest.mark.tensorrt
@needs_rtx
def test_rtx_builds_the_fp16_toy_engine_on_this_machine(fp16_graph, tmp_path: Path) -> None:
    import tensorrt_rtx

    result, _, _ = fp16_graph
    engine = tmp_path / "image.fp16.engine"
    info = build_engine(result.path, engine, PROFILES, flavour_name="tensorrt-rtx", precision="fp16")
    assert isinstance(info, EngineInfo)
    assert (info.flavour, info.version, info.precision, info.graph) == ("tensorrt-rtx", tensorrt_rtx.__version__,
                                                                        "fp16", "image")
    assert info.strongly_typed and info.targets == list(RTX_DEFAULT_TARGETS)
    assert info.bytes == engine.stat().st_size > 100_000
    assert info.sha256 == hashlib.sha256(engine.read_bytes()).hexdigest()
    assert info.profiles["text_emb"] == {"min": [1, 8], "opt": [8, 8], "max": [32, 8]}
    assert info.inputs == ["optical", "text_emb"] and info.outputs == ["logits"] and info.build_seconds > 0
    assert not list(tmp_path.glob(".*.tmp"))                       # written atomically, nothing left over
    json.dumps(info.to_dict())
    # explicit targets are recorded; an unknown one is refused with the known ones
    info86 = build_engine(result.path, tmp_path / "e86.engine", PROFILES, precision="fp16", targets=["8.6"])
    assert info86.targets == ["8.6"]
    with pytest.raises(ValueError, match=r"compute capability 9\.0 is not a TensorRT-RTX target \(known: .*SM86"):
        build_engine(result.path, tmp_path / "e90.engine", PROFILES, precision="fp16", targets=["9.0"])
    assert not (tmp_path / "e90.engine").exists()


@pytest.mark.tensorrt
@needs_rtx
def test_rtx_build_refuses_a_wrong_precision_or_profile(fp16_graph, tmp_path: Path) -> None:
    result, res32, _ = fp16_graph
    with pytest.raises(ValueError, match="has no FP16 tensors.*image.fp16.onnx"):
        build_engine(res32.path, tmp_path / "e.engine", PROFILES, precision="fp16")
    with pytest.raises(ValueError, match="contains FP16 tensors but precision is fp32"):
        build_engine(result.path, tmp_path / "e.engine", PROFILES, precision="fp32")
    with pytest.raises(ValueError, match=r"'text_emb'.*dynamic shape \[-1, 8\] but no optimisation profile"):
        build_engine(result.path, tmp_path / "e.engine", {"optical": PROFILES["optical"]}, precision="fp16")
    with pytest.raises(ValueError, match=r"min shape \[1, 3, 64, 64\] .* graph's shape \[-1, 3, 32, 32\]"):
        build_engine(result.path, tmp_path / "e.engine", {**PROFILES, "optical": ([1, 3, 64, 64],) * 3},
                     precision="fp16")
    assert not (tmp_path / "e.engine").exists()


@pytest.fixture(scope="module")
def rtx_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the session test bundle with real TensorRT-RTX engines for its image and text graphs,
    built through ``rsvl-export rebuild-engine --engine auto`` (which picks RTX on a machine without
    enterprise TensorRT)."""
    if not RTX_OK:
        pytest.skip(RTX_REASON)
    from rsvl_export.cli import main

    dst = tmp_path_factory.mktemp("rtx") / "tsmnet-tiny-64"
    shutil.copytree(tiny_bundle, dst, ignore=shutil.ignore_patterns("weights.safetensors"))
    m = json.loads((dst / "manifest.json").read_text())
    m["files"].pop("weights.safetensors", None)
    m["weights"]["file"] = None
    from rsvl_runtime.bundle import write_manifest

    write_manifest(dst, m)
    # `auto` must pick TensorRT-RTX where enterprise TensorRT cannot build (CI); name it where it can
    engine = "tensorrt-rtx" if can_build("tensorrt")[0] else "auto"
    assert main(["rebuild-engine", str(dst), "--engine", engine]) == 0
    yield dst
    shutil.rmtree(dst.parent, ignore_errors=True)  # 270 MB of engines: not kept for the rest of the session


@pytest.mark.tensorrt
def test_rtx_engines_of_the_test_bundle_are_in_the_manifest(rtx_bundle: Path) -> None:
    import tensorrt_rtx

    from rsvl_runtime.bundle import Bundle, sha256_file

    b = Bundle.load(rtx_bundle)                                   # every hash verified, engines included
    engines = {e["graph"]: e for e in b.manifest["engines"]}
    assert set(engines) == {"image", "text"}
    img, txt = engines["image"], engines["text"]
    assert img["file"] == "image.fp16.engine" and img["onnx"] == "image.fp16.onnx" and img["precision"] == "fp16"
    assert txt["file"] == "text.fp32.engine" and txt["onnx"] == "text.onnx" and txt["precision"] == "fp32"
    for e in (img, txt):
        assert e["flavour"] == "tensorrt-rtx" and e["version"] == tensorrt_rtx.__version__
        assert e["targets"] == list(RTX_DEFAULT_TARGETS) and e["strongly_typed"] is True
        assert e["bytes"] == (rtx_bundle / e["file"]).stat().st_size
        assert e["sha256"] == sha256_file(rtx_bundle / e["file"]) == b.manifest["files"][e["file"]]["sha256"]
        assert e["build_seconds"] > 0
    limits = b.manifest["limits"]                                 # max_batch 8, max_vocab 64 in the fixture
    assert img["profiles"]["optical"] == {"min": [1, 3, 64, 64], "opt": [8, 3, 64, 64],
                                          "max": [limits["max_batch"], 3, 64, 64]}
    assert img["profiles"]["text_emb"]["max"] == [limits["max_vocab"], b.manifest["embedding_dim"]]
    L = b.manifest["text"]["max_length"]
    assert txt["profiles"]["input_ids"] == {"min": [1, L], "opt": [16, L], "max": [256, L]}


@pytest.mark.tensorrt
def test_inspect_says_whether_each_engine_is_valid_here(rtx_bundle: Path, tmp_path: Path, capsys) -> None:
    from rsvl_export.cli import main
    from rsvl_runtime.bundle import write_manifest

    assert main(["inspect", str(rtx_bundle)]) == 0
    out = capsys.readouterr().out
    assert "TensorRT engine image.fp16.engine" in out and "TensorRT engine text.fp32.engine" in out
    assert "tensorrt-rtx" in out and "8.0/8.6/8.9/12.0/12.1" in out
    if NO_GPU:
        assert "no: this machine has no NVIDIA GPU" in out
    # a tampered engine is named (its sha256 no longer matches the manifest)
    bad = tmp_path / "bad"
    shutil.copytree(rtx_bundle, bad)
    with open(bad / "image.fp16.engine", "r+b") as f:
        f.write(b"\x00" * 16)
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "image.fp16.engine" in err and "does not match the manifest" in err
    # the same corruption with a re-hashed manifest: TensorRT-RTX's own check names it malformed
    m = json.loads((bad / "manifest.json").read_text())
    from rsvl_runtime.bundle import sha256_file

    m["files"]["image.fp16.engine"]["sha256"] = sha256_file(bad / "image.fp16.engine")
    write_manifest(bad, m)
    check = check_engine(bad / "image.fp16.engine", m["engines"][0])
    assert not check.ok and check.mismatch and "not a valid engine (corrupt or truncated)" in check.reason


@pytest.mark.tensorrt
@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU: the no-GPU refusal does not apply")
def test_runtime_refuses_rtx_engines_without_a_gpu_in_one_line(rtx_bundle: Path, tmp_path: Path, caplog,
                                                               capsys) -> None:
    import logging

    import tensorrt_rtx

    from rsvl_runtime.backends import load_sessions
    from rsvl_runtime.bundle import Bundle
    from rsvl_runtime.cli import main as infer

    b = Bundle.load(rtx_bundle)
    with pytest.raises(TensorRTUnavailable) as ei:
        load_sessions(b, "tensorrt")
    msg = str(ei.value)
    v = tensorrt_rtx.__version__
    assert msg.startswith(f"image.fp16.engine (tensorrt-rtx {v}, for compute capability 8.0/8.6/8.9/12.0/12.1) "
                          "cannot run here: this machine has no NVIDIA GPU")
    assert f"Installed here: tensorrt-rtx {v}." in msg
    assert "Fix: run with `--backend onnxruntime`" in msg
    assert f"`rsvl-export rebuild-engine {rtx_bundle} --engine tensorrt-rtx`" in msg and "\n" not in msg
    # auto falls back to ONNX Runtime and says why
    with caplog.at_level(logging.INFO, logger="rsvl.runtime"):
        s = load_sessions(b, "auto")
    assert s.backend.startswith("onnxruntime")
    assert "image.fp16.engine (tensorrt-rtx) needs an NVIDIA GPU and this machine has none" in caplog.text
    # the CLI: one line, exit 2
    from rsvl_train.data.synthetic import write_scene

    scene = write_scene(tmp_path / "scene", 64, 64, seed=2)
    rc = infer(["--bundle", str(rtx_bundle), "--optical", str(scene.optical), "--sar", str(scene.sar),
                "--out", str(tmp_path / "out"), "--backend", "tensorrt"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("rsvl-infer: error: image.fp16.engine (tensorrt-rtx")
    assert not (tmp_path / "out" / "done.json").exists()


# =========================================================================== fake TensorRT (GPU-only paths)
class FakeMemory:
    """Device memory as host bytearrays keyed by fake pointers."""

    def __init__(self) -> None:
        self.blocks: dict[int, bytearray] = {}
        self._next = 1 << 20
        self.freed = 0

    def set_device(self, device: int) -> None:
        pass

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


def make_fake_tensorrt(module: str, version: str, memory: FakeMemory, validity: tuple[str, int] = ("VALID", 0)
                       ) -> types.ModuleType:
    """A stand-in for ``tensorrt`` / ``tensorrt_rtx`` with the documented API surface we call; the
    'engine' executes the ONNX with ONNX Runtime."""
    trt = types.ModuleType(module)
    trt.__version__ = version
    built: dict[str, Any] = {}
    trt.built = built  # type: ignore[attr-defined]
    rtx = module == "tensorrt_rtx"

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

    class EngineInvalidityDiagnostics:
        VERSION_MISMATCH, UNSUPPORTED_CC, MALFORMED_ENGINE, CUDA_ERROR = 1, 2, 32, 64

    class CudaGraphStrategy:
        DISABLED, WHOLE_GRAPH_CAPTURE = "DISABLED", "WHOLE_GRAPH_CAPTURE"

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
        def __init__(self, logger: ILogger) -> None:
            pass

        def create_network(self, flags: int = 0) -> _Network:
            return _Network(flags)

        def create_builder_config(self) -> _Config:
            return _Config()

        def create_optimization_profile(self) -> _Profile:
            return _Profile()

        def build_serialized_network(self, network: _Network, config: _Config) -> bytes:
            if built.get("oom"):
                raise MemoryError("std::bad_alloc")
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

    class _RuntimeCache:
        def __init__(self) -> None:
            self.blob = b""

        def deserialize(self, blob: bytes) -> bool:
            self.blob = bytes(blob)
            built["runtime_cache_loaded"] = self.blob
            return True

        def serialize(self) -> bytes:
            return b"rtx-runtime-cache:" + self.blob[-4:] + b"+1"

    class _RuntimeConfig:
        def __init__(self) -> None:
            self.cuda_graph_strategy = CudaGraphStrategy.DISABLED
            self.cache: _RuntimeCache | None = None

        def create_runtime_cache(self) -> _RuntimeCache:
            return _RuntimeCache()

        def set_runtime_cache(self, cache: _RuntimeCache) -> None:
            self.cache = cache

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

        def create_execution_context(self, config: _RuntimeConfig | None = None) -> _Context:
            built["context_config"] = config
            return _Context(self)

        if rtx:
            def create_runtime_config(self) -> _RuntimeConfig:
                return _RuntimeConfig()

    class _Validity:
        def __init__(self, name: str) -> None:
            self.name = name

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> _Engine:
            built["deserialised"] = built.get("deserialised", 0) + 1
            return _Engine(json.loads(data))

        if rtx:
            def get_engine_validity(self, data: bytes) -> tuple[_Validity, int]:
                built["validity_checked"] = built.get("validity_checked", 0) + 1
                return _Validity(validity[0]), validity[1]

    for obj in (ILogger, Logger, NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType, TensorIOMode,
                OnnxParser, Builder, Runtime, EngineInvalidityDiagnostics, CudaGraphStrategy):
        setattr(trt, obj.__name__, obj)
    trt.nptype = lambda dt: np.dtype(dt)  # type: ignore[attr-defined]
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    """Install a fake flavour module on a fake 'GPU' (default: enterprise TensorRT 10.13 on compute
    capability 9.0)."""
    memory = FakeMemory()

    def install(version: str = "10.13.0.35", module: str = "tensorrt", cc: str = "9.0",
                validity: tuple[str, int] = ("VALID", 0)):
        trt = make_fake_tensorrt(module, version, memory, validity)
        monkeypatch.setitem(sys.modules, module, trt)
        monkeypatch.setattr(probe, "gpu_info", lambda device=0: GpuInfo(f"Fake GPU sm{cc}", cc))
        monkeypatch.setattr(session_mod, "device_memory", lambda: memory)
        return trt, memory

    return install


def test_fake_enterprise_build_is_strongly_typed_with_a_timing_cache(fake_trt, fp16_graph, tmp_path: Path) -> None:
    trt, _ = fake_trt("10.13.0.35")
    result, _, _ = fp16_graph
    cache = tmp_path / "trt.cache"
    info = build_engine(result.path, tmp_path / "image.fp16.engine", PROFILES, flavour_name="tensorrt",
                        precision="fp16", timing_cache_path=cache, workspace_gb=1)
    assert info.strongly_typed and info.flavour == "tensorrt" and info.targets == ["9.0"]
    assert info.built_on == "Fake GPU sm9.0 (compute capability 9.0)"
    assert trt.built["flags"] == 1 << 1 and trt.built["config_flags"] == []     # no BuilderFlag.FP16
    assert trt.built["pools"] == {"WORKSPACE": 1 << 30} and info.workspace_gb == 1.0
    assert cache.read_bytes().startswith(b"timing-cache:") and not info.timing_cache_loaded
    info2 = build_engine(result.path, tmp_path / "image.fp16.engine", PROFILES, flavour_name="tensorrt",
                         timing_cache_path=cache)
    assert info2.timing_cache_loaded and trt.built["cache_blob"].startswith(b"timing-cache:")
    fake_trt("10.8.0.43")                                        # before 10.12: weak typing + the FP16 flag
    info3 = build_engine(result.path, tmp_path / "e.engine", PROFILES, flavour_name="tensorrt")
    assert not info3.strongly_typed and sys.modules["tensorrt"].built["config_flags"] == ["FP16"]


def test_fake_out_of_memory_build_leaves_no_engine(fake_trt, fp16_graph, tmp_path: Path) -> None:
    trt, _ = fake_trt("1.7.1.116", module="tensorrt_rtx")
    trt.built["oom"] = True
    result, _, _ = fp16_graph
    with pytest.raises(EngineBuildError, match=r"ran out of memory building image.fp16.engine from "
                                               r"image.fp16.onnx \(workspace limit 2 GB\): lower --max-batch/"
                                               r"--max-vocab, raise --workspace-gb"):
        build_engine(result.path, tmp_path / "image.fp16.engine", PROFILES, workspace_gb=2)
    assert list(tmp_path.iterdir()) == []


def test_fake_session_runs_at_two_batches_and_two_vocabularies(fake_trt, fp16_graph, tmp_path: Path) -> None:
    trt, memory = fake_trt("10.13.0.35")
    result, _, model = fp16_graph
    engine = tmp_path / "image.fp16.engine"
    info = build_engine(result.path, engine, PROFILES, flavour_name="tensorrt")
    sess = TensorRTSession(engine, info.to_dict())
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


def test_fake_rtx_session_keeps_its_runtime_cache_and_uses_cuda_graphs(fake_trt, fp16_graph, tmp_path: Path,
                                                                       monkeypatch) -> None:
    trt, _ = fake_trt("1.7.1.116", module="tensorrt_rtx", cc="8.9")
    monkeypatch.setenv("RSVL_CACHE_DIR", str(tmp_path / "cache"))
    result, _, _ = fp16_graph
    engine = tmp_path / "image.fp16.engine"
    meta = build_engine(result.path, engine, PROFILES).to_dict()
    sess = TensorRTSession(engine, meta)
    assert trt.built["validity_checked"] == 1                  # checked before deserialising
    assert trt.built["context_config"].cuda_graph_strategy == "WHOLE_GRAPH_CAPTURE"
    sess.run({n: t.numpy() for n, t in example_inputs(b=2, k=3).items()})
    sess.close()
    cache_file = tmp_path / "cache" / "tensorrt-rtx" / f"{meta['sha256'][:32]}.cache"
    assert cache_file.read_bytes() == b"rtx-runtime-cache:+1"
    TensorRTSession(engine, meta).close()                       # a second launch loads it
    assert trt.built["runtime_cache_loaded"] == b"rtx-runtime-cache:+1"


@pytest.mark.parametrize("validity, reason", [
    (("INVALID", 2), "not built for this GPU's compute capability"),
    (("INVALID", 1), "built by another TensorRT version"),
])
def test_fake_rtx_engine_the_gpu_refuses_is_named_before_deserialising(fake_trt, fp16_graph, tmp_path: Path,
                                                                       validity, reason) -> None:
    """What an H200 (sm 9.0, outside the RTX support matrix) may answer: one line, nothing deserialised."""
    result, _, _ = fp16_graph
    trt, _ = fake_trt("1.7.1.116", module="tensorrt_rtx", cc="9.0", validity=validity)
    engine = tmp_path / "image.fp16.engine"
    meta = build_engine(result.path, engine, PROFILES).to_dict()
    with pytest.raises(EngineMismatchError) as ei:
        TensorRTSession(engine, meta)
    msg = str(ei.value)
    assert msg.startswith("image.fp16.engine (tensorrt-rtx 1.7.1.116, for compute capability 8.0/8.6/8.9/12.0/12.1) "
                          f"cannot run here: {reason}. This machine: Fake GPU sm9.0 (compute capability 9.0), "
                          "tensorrt-rtx 1.7.1.116.")
    assert "--backend onnxruntime" in msg and f"rsvl-export rebuild-engine {tmp_path} --engine tensorrt-rtx" in msg
    assert "deserialised" not in trt.built and isinstance(ei.value, BundleError)


@pytest.mark.parametrize("installed, cc, fragment", [
    ("10.14.1.48", "9.0", "it was built by tensorrt 10.13.0.35, this machine has tensorrt 10.14.1.48"),
    ("10.13.0.35", "8.6", "it targets compute capability 9.0, this GPU is Fake GPU sm8.6 (compute capability 8.6)"),
])
def test_fake_enterprise_engine_from_another_version_or_gpu_is_refused(fake_trt, fp16_graph, tmp_path: Path,
                                                                       installed, cc, fragment) -> None:
    result, _, _ = fp16_graph
    fake_trt("10.13.0.35")
    engine = tmp_path / "image.fp16.engine"
    meta = build_engine(result.path, engine, PROFILES, flavour_name="tensorrt").to_dict()
    trt, _ = fake_trt(installed, cc=cc)
    with pytest.raises(EngineMismatchError) as ei:
        TensorRTSession(engine, meta)
    msg = str(ei.value)
    assert fragment in msg and "trtexec --onnx=" in msg and "--maxShapes=optical:4x3x32x32,text_emb:32x8" in msg
    assert "deserialised" not in trt.built


def test_engine_entry_without_version_or_flavour_module_is_refused(fake_trt, tmp_path: Path, monkeypatch) -> None:
    engine = tmp_path / "image.fp16.engine"
    engine.write_bytes(b"serialized engine")
    with pytest.raises(EngineMismatchError, match="lacks the version/targets"):
        require_engine(engine, {"graph": "image", "file": engine.name, "flavour": "tensorrt-rtx"})
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    monkeypatch.setattr(probe, "gpu_info", lambda device=0: GpuInfo("Fake L4", "8.9"))
    with pytest.raises(TensorRTUnavailable, match=r"tensorrt-rtx is not importable.*pip install tensorrt-rtx"):
        require_engine(engine, {"file": engine.name, "flavour": "tensorrt-rtx", "version": "1.7.1.116",
                                "targets": ["8.9"]})
