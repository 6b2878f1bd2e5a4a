"""Triton Inference Server model repositories from a bundle, their validation, and a local server.

:func:`write_triton_repository` writes, for a bundle of model ``NAME``::

    REPO/NAME_image/      onnxruntime backend (onnxruntime_onnx), image graph; TensorRT FP16
                          execution accelerator on GPU instances
    REPO/NAME_image_trt/  tensorrt backend (tensorrt_plan), only when the bundle has an engine;
                          cc_model_filenames keyed by the engine's compute capability
    REPO/NAME_text/       onnxruntime backend, text graph
    REPO/NAME/            Python backend: raw tiles (optical uint8 [B,3,t,t], sar float32
                          [B,1,t,t]) + vocabulary (BYTES, "water|lake,building,road") -> labels
                          uint8 [B,t,t]; runs rsvl_runtime's Segmenter (bundle normalisation,
                          cached vocabulary, ONNX Runtime / TensorRT), so its answers equal
                          ``Segmenter.predict`` on each tile; dynamic batching across requests.

The graph models keep ``max_batch_size: 0`` (full shapes with ``-1`` for B and K): their
``text_emb [K, D]`` input has no batch axis, so Triton's batcher cannot stack requests for
them; batching across requests happens in the Python model, whose ``max_batch_size`` stays
within the bundle's batch limit and the engine profile.

:func:`validate_repository` parses every ``config.pbtxt`` (Triton's own ``ModelConfig``
protobuf from ``tritonclient`` when installed, else a small text-format parser) and checks
names, dtypes, dims and batch limits against the ONNX graphs (read with ``onnx``), the engine
profiles and the bundle manifest. :func:`find_tritonserver` / :func:`start_server` run the
``tritonserver`` binary that ``nvidia-pytriton`` ships (CPU + Python backend) or an NGC install.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from rsvl_runtime.backends.tensorrt import bundle_engine

log = logging.getLogger("rsvl.triton")

PathLike = str | os.PathLike[str]

#: numpy/manifest dtype -> Triton data type.
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float64": "TYPE_FP64",
                 "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8",
                 "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32", "uint64": "TYPE_UINT64",
                 "bool": "TYPE_BOOL", "string": "TYPE_STRING", "bytes": "TYPE_STRING"}
#: ONNX TensorProto element type -> Triton data type.
ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
                  6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
                  11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16"}
DEFAULT_QUEUE_DELAY_US = 2000
LINK_MODES = ("hardlink", "copy", "symlink")


class TritonUnavailable(RuntimeError):
    """No runnable ``tritonserver`` (or no numpy<2 Python for its Python backend) here."""


# ============================================================================ pbtxt writing
def _q(s: str) -> str:
    return json.dumps(str(s))


def _dims(shape: Sequence[Any]) -> list[int]:
    """Manifest shape (ints and axis names) -> Triton dims (-1 for named/dynamic axes)."""
    return [int(d) if isinstance(d, int) or (isinstance(d, str) and d.isdigit()) else -1 for d in shape]


def _tensor(name: str, dtype: str, dims: Sequence[int], optional: bool = False) -> str:
    opt = " optional: true" if optional else ""
    return f"  {{ name: {_q(name)} data_type: {dtype} dims: [ {', '.join(str(d) for d in dims)} ]{opt} }}"


def _io(kind: str, tensors: Sequence[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]\n"


def _params(params: Mapping[str, str]) -> str:
    return "".join(f"parameters {{ key: {_q(k)} value {{ string_value: {_q(v)} }} }}\n" for k, v in params.items())


TRT_ACCELERATOR = """optimization { execution_accelerators {
  gpu_execution_accelerator : [ {
    name : "tensorrt"
    parameters { key: "precision_mode" value: "FP16" }
    parameters { key: "max_workspace_size_bytes" value: "2147483648" }
  } ]
} }
"""


def _graph_config(name: str, platform: str, backend: str, graph: Mapping[str, Any],
                  extra: str = "", params: Mapping[str, str] | None = None) -> str:
    ins = [_tensor(k, TRITON_DTYPES[v["dtype"]], _dims(v["shape"])) for k, v in graph["inputs"].items()]
    outs = [_tensor(k, TRITON_DTYPES[v["dtype"]], _dims(v["shape"])) for k, v in graph["outputs"].items()]
    return (f"name: {_q(name)}\nplatform: {_q(platform)}\nbackend: {_q(backend)}\nmax_batch_size: 0\n"
            + _io("input", ins) + _io("output", outs) + extra + _params(params or {}))


# ============================================================================ files
def _place(src: Path, dst: Path, link: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if link == "symlink":
        dst.symlink_to(src.resolve())
        return
    if link == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another filesystem: copy
    shutil.copy2(src, dst)


def _external_data(onnx_path: Path) -> list[str]:
    """Relative locations of the graph's external-data files (none for single-file graphs)."""
    try:
        import onnx
    except ImportError:  # pragma: no cover - rsvl_export depends on onnx
        return []
    model = onnx.load(str(onnx_path), load_external_data=False)
    locs = set()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for e in t.external_data:
                if e.key == "location":
                    locs.add(e.value)
    return sorted(locs)


def _place_graph(bundle_root: Path, rel: str, version_dir: Path, link: str) -> None:
    src = bundle_root / rel
    _place(src, version_dir / "model.onnx", link)
    for loc in _external_data(src):
        _place(src.parent / loc, version_dir / loc, link)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def triton_engine(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The image engine Triton's ``tensorrt`` backend can serve: an enterprise TensorRT engine
    (Triton links enterprise TensorRT; TensorRT-RTX engines are served through the Python model)."""
    eng = bundle_engine(manifest, "image")
    return eng if eng is not None and eng.get("flavour", "tensorrt") == "tensorrt" else None


def _engine_cc_key(cc: Any) -> str:
    s = str(cc).strip().lower().removeprefix("sm_").removeprefix("sm")
    if re.fullmatch(r"\d{2,3}", s):  # "90" -> "9.0"
        s = f"{s[:-1]}.{s[-1]}"
    return s


def _profile_batch_max(engine: Mapping[str, Any]) -> int | None:
    prof = engine.get("profiles") or {}
    maxes = [int(p["max"][0]) for n, p in prof.items() if n in ("optical", "sar") and p.get("max")]
    return min(maxes) if maxes else None


# ============================================================================ the Python model
MODEL_PY = '''"""Triton Python-backend model written by rsvl-export triton: raw tiles + vocabulary -> labels.

Runs rsvl_runtime's Segmenter on the bundle in ./bundle: the bundle's normalisation, the cached
vocabulary encoding and the same engine as rsvl_runtime, so each tile's labels equal
``Segmenter.predict(optical_tile, sar_tile)``. Requests batched by Triton's dynamic batcher are
grouped by vocabulary and run as one engine batch.
"""

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).resolve().parent
if (HERE / "rsvl_runtime").is_dir() and str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the vendored copy of rsvl_runtime

from rsvl_runtime.normalization import normalize_optical, normalize_sar  # noqa: E402
from rsvl_runtime.segmenter import Segmenter, softmax  # noqa: E402
from rsvl_runtime.tiling import TileGrid, blend_tiles  # noqa: E402


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        bundle = Path(params.get("bundle") or "bundle")
        bundle = bundle if bundle.is_absolute() else version_dir / bundle
        threads = int(params["threads"]) if params.get("threads") else None
        self.seg = Segmenter.load(bundle, backend=params.get("backend") or "auto", threads=threads)
        self.default_vocab = list(self.seg.bundle.manifest.get("default_vocabulary") or [])
        self.modes = set(self.seg.bundle.modes)
        self.vocab_key = None
        self.t = self.seg.tile
        self.grid = TileGrid(self.t, self.t, self.t, self.seg.overlap)
        self.tile0 = next(iter(self.grid.tiles()))

    def _set_vocab(self, key):
        if key != self.vocab_key:
            self.seg.set_vocabulary(key if key else self.default_vocab)
            self.vocab_key = key

    def _labels(self, optical, sar):
        """The steps of Segmenter.predict for whole tiles, with one engine batch for all tiles."""
        mods = self.seg.modalities
        opt = normalize_optical(optical, mods["optical"]) if optical is not None else None
        sr = normalize_sar(sar, mods["sar"]) if sar is not None else None
        logits = self.seg.predict_logits(opt, sr)
        k = logits.shape[1]
        out = np.empty((logits.shape[0], self.t, self.t), np.uint8)
        for i in range(logits.shape[0]):
            blended = blend_tiles(self.grid, k, [(self.tile0, logits[i])])
            out[i] = softmax(blended, axis=0).argmax(0).astype(np.uint8)
        return out

    def _parse(self, request):
        def get(name):
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        optical, sar, vocab = get("optical"), get("sar"), get("vocabulary")
        if optical is None and sar is None:
            raise ValueError("send at least one of the inputs optical, sar")
        mode = "optical+sar" if optical is not None and sar is not None else ("optical" if optical is not None else "sar")
        if mode not in self.modes:
            raise ValueError(f"this bundle supports {sorted(self.modes)}, not {mode!r} input")
        for name, x, c in (("optical", optical, 3), ("sar", sar, 1)):
            if x is not None and tuple(x.shape[1:]) != (c, self.t, self.t):
                raise ValueError(f"{name} must be [B, {c}, {self.t}, {self.t}], got {list(x.shape)}")
        if optical is not None and sar is not None and optical.shape[0] != sar.shape[0]:
            raise ValueError(f"optical and sar batch sizes differ ({optical.shape[0]} vs {sar.shape[0]})")
        keys = {_text(v).strip() for v in vocab.reshape(-1)} if vocab is not None else {""}
        if len(keys) > 1:
            raise ValueError("one vocabulary per request: every row of 'vocabulary' must be the same")
        return keys.pop(), mode, optical, sar

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        for i, request in enumerate(requests):
            try:
                key, mode, optical, sar = self._parse(request)
            except Exception as e:  # noqa: BLE001 - one bad request must not fail the others
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))
                continue
            groups.setdefault((key, mode), []).append((i, optical, sar))
        for (key, mode), items in groups.items():
            try:
                self._set_vocab(key)
                optical = np.concatenate([o for _, o, _ in items]) if "optical" in mode.split("+") else None
                sar = np.concatenate([s for _, _, s in items]) if "sar" in mode.split("+") else None
                labels = self._labels(optical, sar)
            except Exception as e:  # noqa: BLE001
                for i, _, _ in items:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(e).__name__}: {e}"))
                continue
            start = 0
            for i, o, s in items:
                n = (o if o is not None else s).shape[0]
                responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor("labels", labels[start:start + n])])
                start += n
        return responses

    def finalize(self):
        self.seg = None
'''


@dataclass
class TritonRepository:
    """What :func:`write_triton_repository` wrote."""

    root: Path
    name: str
    models: dict[str, Path] = field(default_factory=dict)
    max_batch: int = 0


def _vendor_runtime(dst: Path) -> None:
    import rsvl_runtime

    src = Path(rsvl_runtime.__file__).resolve().parent
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def write_triton_repository(bundle_dir: PathLike, repo_dir: PathLike, max_batch: int | None = None, *,
                            name: str | None = None, max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
                            instances: int = 1, backend: str = "auto", threads: int | None = None,
                            link: str = "hardlink", vendor_runtime: bool = True) -> TritonRepository:
    """Write a Triton model repository for a (semantic) bundle; see the module docstring.

    ``max_batch``: the Python model's ``max_batch_size`` (tiles per batch); default and upper
    bound: the bundle's ``limits.max_batch`` and the engine profile's largest B. ``link``: how
    graph and bundle files get into the repository (``hardlink`` falls back to ``copy`` across
    filesystems; ``symlink`` keeps the bundle's absolute paths). ``vendor_runtime`` copies the
    ``rsvl_runtime`` package next to ``model.py`` so the Python model needs only numpy,
    onnxruntime and tokenizers in Triton's Python environment. ``backend``/``threads``: the
    Segmenter's backend and ONNX Runtime threads inside the Python model.
    """
    from rsvl_runtime.bundle import Bundle

    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {LINK_MODES}, got {link!r}")
    bundle = Bundle.load(bundle_dir)
    m = bundle.manifest
    if bundle.task != "semantic":
        raise ValueError(f"{bundle.root} is a {bundle.task} bundle; the Triton repository supports semantic "
                         "(TSMNet) bundles")
    name = _safe_name(name or bundle.model)
    repo = Path(repo_dir)
    repo.mkdir(parents=True, exist_ok=True)
    t = bundle.tile_size
    limit = int(m.get("limits", {}).get("max_batch") or 8)
    engine = triton_engine(m)
    prof_max = _profile_batch_max(engine) if engine else None
    cap = min(x for x in (limit, prof_max) if x)
    mb = cap if max_batch is None else int(max_batch)
    if not 1 <= mb <= cap:
        raise ValueError(f"max_batch {mb} is outside 1..{cap} (the bundle's batch limit"
                         + (f" / the engine profile's max B {prof_max}" if prof_max else "")
                         + "); re-export with --max-batch to go higher")
    out = TritonRepository(repo, name, max_batch=mb)

    # ---- image graph, onnxruntime backend (+ TensorRT accelerator on GPU instances)
    image = m["graphs"]["image"]
    img_rel = image.get("fp32") or image.get("fp16")
    d = repo / f"{name}_image"
    _place_graph(bundle.root, img_rel, d / "1", link)
    (d / "config.pbtxt").write_text(_graph_config(f"{name}_image", "onnxruntime_onnx", "onnxruntime", image,
                                                  extra=TRT_ACCELERATOR), encoding="utf-8")
    out.models[f"{name}_image"] = d

    # ---- TensorRT engine, tensorrt backend
    if engine:
        cc = _engine_cc_key((engine.get("targets") or [""])[0])
        fname = f"model_sm{cc.replace('.', '')}.plan"
        d = repo / f"{name}_image_trt"
        _place(bundle.root / engine["file"], d / "1" / fname, link)
        extra = (f"default_model_filename: {_q(fname)}\n"
                 f"cc_model_filenames [ {{ key: {_q(cc)} value: {_q(fname)} }} ]\n")
        params = {"tensorrt_version": str(engine.get("version", "")),
                  "precision": str(engine.get("precision", "")), "max_batch": str(prof_max or "")}
        (d / "config.pbtxt").write_text(_graph_config(f"{name}_image_trt", "tensorrt_plan", "tensorrt", image,
                                                      extra=extra, params=params), encoding="utf-8")
        out.models[f"{name}_image_trt"] = d

    # ---- text graph
    text = m["graphs"]["text"]
    d = repo / f"{name}_text"
    _place_graph(bundle.root, text.get("fp32") or text.get("fp16"), d / "1", link)
    (d / "config.pbtxt").write_text(_graph_config(f"{name}_text", "onnxruntime_onnx", "onnxruntime", text),
                                    encoding="utf-8")
    out.models[f"{name}_text"] = d

    # ---- the Python model: raw tiles + vocabulary -> labels
    d = repo / name
    v = d / "1"
    bdir = v / "bundle"
    if bdir.exists() or bdir.is_symlink():
        shutil.rmtree(bdir) if bdir.is_dir() and not bdir.is_symlink() else bdir.unlink()
    for rel in [*m["files"], "manifest.json"]:
        _place(bundle.root / rel, bdir / rel, link)
    if vendor_runtime:
        _vendor_runtime(v / "rsvl_runtime")
    (v / "model.py").write_text(MODEL_PY, encoding="utf-8")
    modes = set(bundle.modes)
    mods = m["modalities"]
    ins = []
    if "optical" in mods:
        ins.append(_tensor("optical", TRITON_DTYPES[mods["optical"].get("dtype", "uint8")], [3, t, t],
                           optional=bool(modes - {"optical+sar", "optical"})))
    if "sar" in mods:
        ins.append(_tensor("sar", TRITON_DTYPES[mods["sar"].get("dtype", "float32")], [1, t, t],
                           optional="optical" in modes))
    ins.append(_tensor("vocabulary", "TYPE_STRING", [1], optional=True))
    params = {"bundle": "bundle", "backend": backend, "tile": str(t)}
    if threads:
        params["threads"] = str(threads)
    cfg = (f"name: {_q(name)}\nbackend: \"python\"\nmax_batch_size: {mb}\n"
           + _io("input", ins) + _io("output", [_tensor("labels", "TYPE_UINT8", [t, t])])
           + f"dynamic_batching {{ max_queue_delay_microseconds: {int(max_queue_delay_us)} }}\n"
           + f"instance_group [ {{ count: {int(instances)} }} ]\n" + _params(params))
    (d / "config.pbtxt").write_text(cfg, encoding="utf-8")
    out.models[name] = d
    log.info("Triton repository %s: %s (Python model max_batch_size %d)", repo, ", ".join(out.models), mb)
    return out


# ============================================================================ pbtxt parsing
def _load_model_config_pb2() -> Any | None:
    """Triton's ``model_config_pb2`` from tritonclient (loaded by path: tritonclient.grpc needs grpcio)."""
    import importlib.util

    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        return None
    name = "_rsvl_triton_model_config_pb2"
    if name in sys.modules:
        return sys.modules[name]
    try:
        s = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(s)  # type: ignore[arg-type]
        s.loader.exec_module(mod)  # type: ignore[union-attr]
    except Exception as e:  # noqa: BLE001 - protobuf runtime/gencode mismatch: use the fallback parser
        log.debug("model_config_pb2 unusable (%s); using the built-in pbtxt parser", e)
        return None
    sys.modules[name] = mod
    return mod


_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')|([{}\[\]:,<>])|([^\s{}\[\]:,<>"\']+))')


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip():
                raise ValueError(f"cannot parse pbtxt near {text[pos:pos + 30]!r}")
            break
        pos = m.end()
        if m.group(1):
            continue
        out.append(m.group(2) or m.group(3) or m.group(4))
    return out


def _scalar(tok: str) -> Any:
    if tok[0] in "\"'":
        return json.loads('"' + tok[1:-1].replace('"', '\\"').replace("\\'", "'") + '"') if tok[0] == "'" \
            else json.loads(tok)
    if re.fullmatch(r"[-+]?\d+", tok):
        return int(tok)
    if re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", tok):
        return float(tok)
    if tok in ("true", "True"):
        return True
    if tok in ("false", "False"):
        return False
    return tok  # an enum name


def parse_pbtxt(text: str) -> dict[str, Any]:
    """A small protobuf text-format parser (for when Triton's protobuf is not installed):
    messages -> dicts, every field -> a list of values (repeated or not)."""
    toks = _tokens(text)
    pos = 0

    def value() -> Any:
        nonlocal pos
        tok = toks[pos]
        if tok in ("{", "<"):
            pos += 1
            return message("}" if tok == "{" else ">")
        pos += 1
        return _scalar(tok)

    def message(end: str | None) -> dict[str, list[Any]]:
        nonlocal pos
        msg: dict[str, list[Any]] = {}
        while pos < len(toks) and toks[pos] != end:
            key = toks[pos]
            pos += 1
            if toks[pos] == ":":
                pos += 1
            if toks[pos] == "[":
                pos += 1
                vals = []
                while toks[pos] != "]":
                    vals.append(value())
                    if toks[pos] == ",":
                        pos += 1
                pos += 1
                msg.setdefault(key, []).extend(vals)
            else:
                msg.setdefault(key, []).append(value())
            if pos < len(toks) and toks[pos] in (",", ";"):
                pos += 1
        if end is not None:
            pos += 1
        return msg

    return message(None)


def _first(msg: Mapping[str, list[Any]], key: str, default: Any = None) -> Any:
    v = msg.get(key)
    return v[0] if v else default


def _normalise_fallback(msg: Mapping[str, list[Any]]) -> dict[str, Any]:
    def tensors(key: str) -> list[dict[str, Any]]:
        return [{"name": _first(t, "name", ""), "data_type": _first(t, "data_type", "TYPE_INVALID"),
                 "dims": [int(d) for d in t.get("dims", [])], "optional": bool(_first(t, "optional", False))}
                for t in msg.get(key, [])]

    params = {}
    for p in msg.get("parameters", []):
        val = _first(p, "value", {})
        params[_first(p, "key")] = _first(val, "string_value", "") if isinstance(val, dict) else val
    cc = {_first(e, "key"): _first(e, "value") for e in msg.get("cc_model_filenames", [])}
    accel = []
    for opt in msg.get("optimization", []):
        for ea in opt.get("execution_accelerators", []):
            for g in ea.get("gpu_execution_accelerator", []):
                accel.append({"name": _first(g, "name"),
                              "parameters": {_first(p, "key"): _first(p, "value") for p in g.get("parameters", [])}})
    db = _first(msg, "dynamic_batching")
    return {"name": _first(msg, "name", ""), "platform": _first(msg, "platform", ""),
            "backend": _first(msg, "backend", ""), "max_batch_size": int(_first(msg, "max_batch_size", 0)),
            "input": tensors("input"), "output": tensors("output"), "parameters": params,
            "cc_model_filenames": cc, "default_model_filename": _first(msg, "default_model_filename", ""),
            "dynamic_batching": None if db is None else
            {"max_queue_delay_microseconds": int(_first(db, "max_queue_delay_microseconds", 0))},
            "gpu_accelerators": accel}


def _normalise_pb(cfg: Any, pb2: Any) -> dict[str, Any]:
    dtype = pb2.DataType.Name

    def tensors(items: Iterable[Any]) -> list[dict[str, Any]]:
        return [{"name": x.name, "data_type": dtype(x.data_type), "dims": [int(d) for d in x.dims],
                 "optional": bool(getattr(x, "optional", False))} for x in items]

    accel = [{"name": g.name, "parameters": dict(g.parameters)}
             for g in cfg.optimization.execution_accelerators.gpu_execution_accelerator]
    return {"name": cfg.name, "platform": cfg.platform, "backend": cfg.backend,
            "max_batch_size": int(cfg.max_batch_size), "input": tensors(cfg.input), "output": tensors(cfg.output),
            "parameters": {k: v.string_value for k, v in cfg.parameters.items()},
            "cc_model_filenames": dict(cfg.cc_model_filenames), "default_model_filename": cfg.default_model_filename,
            "dynamic_batching": ({"max_queue_delay_microseconds": int(cfg.dynamic_batching.max_queue_delay_microseconds)}
                                 if cfg.HasField("dynamic_batching") else None),
            "gpu_accelerators": accel}


def parse_config(path: PathLike) -> dict[str, Any]:
    """Parse a ``config.pbtxt`` into a plain dict (``name, platform, backend, max_batch_size,
    input/output [{name, data_type, dims, optional}], parameters, cc_model_filenames,
    default_model_filename, dynamic_batching, gpu_accelerators``). Uses Triton's ``ModelConfig``
    protobuf (strict: unknown fields are errors) when tritonclient is installed."""
    text = Path(path).read_text(encoding="utf-8")
    pb2 = _load_model_config_pb2()
    if pb2 is not None:
        from google.protobuf import text_format

        cfg = pb2.ModelConfig()
        text_format.Parse(text, cfg)
        return _normalise_pb(cfg, pb2)
    return _normalise_fallback(parse_pbtxt(text))


# ============================================================================ validation
def _onnx_io(path: Path) -> tuple[dict[str, tuple[str, list[Any]]], dict[str, tuple[str, list[Any]]]]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init = {t.name for t in model.graph.initializer}

    def io(values: Iterable[Any]) -> dict[str, tuple[str, list[Any]]]:
        out = {}
        for v in values:
            if v.name in init:
                continue
            tt = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
            out[v.name] = (ONNX_TO_TRITON.get(tt.elem_type, f"onnx:{tt.elem_type}"), dims)
        return out

    return io(model.graph.input), io(model.graph.output)


def _check_tensors(model: str, kind: str, cfg_tensors: Sequence[Mapping[str, Any]],
                   graph: Mapping[str, tuple[str, list[Any]]], max_batch: int) -> list[str]:
    problems = []
    names = {t["name"] for t in cfg_tensors}
    for missing in sorted(set(graph) - names):
        problems.append(f"{model}: graph {kind} {missing!r} is not in config.pbtxt")
    for t in cfg_tensors:
        if t["name"] not in graph:
            problems.append(f"{model}: config {kind} {t['name']!r} is not a graph {kind} (has {sorted(graph)})")
            continue
        dtype, gdims = graph[t["name"]]
        if t["data_type"] != dtype:
            problems.append(f"{model}: {kind} {t['name']!r} is {t['data_type']} in config.pbtxt but {dtype} in the graph")
        dims = ([-1] if max_batch > 0 else []) + list(t["dims"])
        if max_batch > 0 and gdims and isinstance(gdims[0], int) and gdims[0] > 0:
            problems.append(f"{model}: max_batch_size {max_batch} but {kind} {t['name']!r} has a fixed first "
                            f"dim {gdims[0]} in the graph (set max_batch_size: 0)")
        if len(dims) != len(gdims):
            problems.append(f"{model}: {kind} {t['name']!r} has rank {len(dims)} in config.pbtxt "
                            f"(dims {t['dims']}, max_batch_size {max_batch}) but {len(gdims)} in the graph {gdims}")
            continue
        for i, (c, g) in enumerate(zip(dims, gdims)):
            if isinstance(g, int) and g > 0 and c != g:
                problems.append(f"{model}: {kind} {t['name']!r} dim {i} is {c} in config.pbtxt, {g} in the graph")
            if not (isinstance(g, int) and g > 0) and c != -1:
                problems.append(f"{model}: {kind} {t['name']!r} dim {i} is dynamic ({g}) in the graph but fixed "
                                f"to {c} in config.pbtxt")
    return problems


def _check_profile(model: str, cfg: Mapping[str, Any], engine: Mapping[str, Any]) -> list[str]:
    problems = []
    profiles = engine.get("profiles") or {}
    mb = cfg["max_batch_size"]
    for t in cfg["input"]:
        p = profiles.get(t["name"])
        if p is None:
            problems.append(f"{model}: input {t['name']!r} has no optimisation profile in the bundle's engine")
            continue
        dims = ([-1] if mb > 0 else []) + list(t["dims"])
        lo, hi = list(p.get("min", [])), list(p.get("max", []))
        if len(lo) != len(dims) or len(hi) != len(dims):
            problems.append(f"{model}: input {t['name']!r} dims {dims} do not match the profile rank "
                            f"(min {lo}, max {hi})")
            continue
        for i, (c, a, b) in enumerate(zip(dims, lo, hi)):
            if c == -1 and a == b:
                problems.append(f"{model}: input {t['name']!r} dim {i} is -1 but the profile fixes it to {a}")
            if c != -1 and not a <= c <= b:
                problems.append(f"{model}: input {t['name']!r} dim {i} = {c} is outside the profile [{a}, {b}]")
        if mb > 0 and hi and mb > hi[0]:
            problems.append(f"{model}: max_batch_size {mb} exceeds the engine profile's max {hi[0]} "
                            f"for {t['name']!r}")
    return problems


def validate_repository(repo_dir: PathLike, bundle_dir: PathLike) -> list[str]:
    """Problems of a repository written for ``bundle_dir`` (empty when it is consistent): every
    ``config.pbtxt`` parses and names its folder; model files exist; ONNX models' inputs/outputs
    (names, dtypes, dims, batch axis) agree with the graphs; the TensorRT model's compute
    capability, dims and batch limit agree with the engine and its profiles; the Python model's
    tensors agree with the bundle (tile size, bands, dtypes), its ``max_batch_size`` is within
    the bundle's limit and the engine profile, and dynamic batching is configured."""
    from rsvl_runtime.bundle import Bundle, BundleError

    repo = Path(repo_dir)
    problems: list[str] = []
    try:
        bundle = Bundle.load(bundle_dir)
    except BundleError as e:
        return [f"bundle: {e}"]
    m = bundle.manifest
    name = _safe_name(bundle.model)
    t = bundle.tile_size
    engine = triton_engine(m)
    expected = {name, f"{name}_image", f"{name}_text"} | ({f"{name}_image_trt"} if engine else set())
    found = {p.parent.name for p in repo.glob("*/config.pbtxt")}
    for missing in sorted(expected - found):
        problems.append(f"{missing}: no {repo / missing / 'config.pbtxt'}")
    configs: dict[str, dict[str, Any]] = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        model = path.parent.name
        try:
            cfg = parse_config(path)
        except Exception as e:  # noqa: BLE001 - any parse failure is a problem to report
            problems.append(f"{model}: config.pbtxt does not parse: {e}")
            continue
        configs[model] = cfg
        if cfg["name"] and cfg["name"] != model:
            problems.append(f"{model}: config name {cfg['name']!r} differs from its folder name")
        if not (path.parent / "1").is_dir():
            problems.append(f"{model}: no version folder 1/")

    for graph, model in (("image", f"{name}_image"), ("text", f"{name}_text")):
        cfg = configs.get(model)
        if cfg is None:
            continue
        if cfg["backend"] != "onnxruntime" or cfg["platform"] not in ("", "onnxruntime_onnx"):
            problems.append(f"{model}: expected the onnxruntime backend, got backend {cfg['backend']!r} "
                            f"platform {cfg['platform']!r}")
        onnx_path = repo / model / "1" / (cfg["default_model_filename"] or "model.onnx")
        if not onnx_path.is_file():
            problems.append(f"{model}: {onnx_path} is missing")
            continue
        gin, gout = _onnx_io(onnx_path)
        problems += _check_tensors(model, "input", cfg["input"], gin, cfg["max_batch_size"])
        problems += _check_tensors(model, "output", cfg["output"], gout, cfg["max_batch_size"])
        man = m["graphs"][graph]
        for kind, tensors in (("input", man["inputs"]), ("output", man["outputs"])):
            g = gin if kind == "input" else gout
            for tn, spec in tensors.items():
                if tn in g and [d if isinstance(d, int) else -1 for d in _dims(spec["shape"])] != \
                        [d if isinstance(d, int) and d > 0 else -1 for d in g[tn][1]]:
                    problems.append(f"{model}: {kind} {tn!r} shape {g[tn][1]} in the graph differs from the "
                                    f"manifest {spec['shape']}")
        if graph == "image":
            accel = [a for a in cfg["gpu_accelerators"] if a["name"] == "tensorrt"]
            if not accel or accel[0]["parameters"].get("precision_mode") != "FP16":
                problems.append(f"{model}: no TensorRT FP16 gpu_execution_accelerator")

    if engine:
        model = f"{name}_image_trt"
        cfg = configs.get(model)
        if cfg is not None:
            if cfg["backend"] != "tensorrt" or cfg["platform"] not in ("", "tensorrt_plan"):
                problems.append(f"{model}: expected the tensorrt backend, got {cfg['backend']!r}/{cfg['platform']!r}")
            cc = _engine_cc_key((engine.get("targets") or [""])[0])
            files = cfg["cc_model_filenames"]
            if cc not in files:
                problems.append(f"{model}: cc_model_filenames has {sorted(files)}, not the engine's compute "
                                f"capability {cc}")
            for f in {*files.values(), cfg["default_model_filename"]} - {""}:
                if not (repo / model / "1" / f).is_file():
                    problems.append(f"{model}: {repo / model / '1' / f} is missing")
            image = m["graphs"]["image"]
            ref = {k: (TRITON_DTYPES[v["dtype"]], _dims(v["shape"])) for k, v in image["inputs"].items()}
            refo = {k: (TRITON_DTYPES[v["dtype"]], _dims(v["shape"])) for k, v in image["outputs"].items()}
            problems += _check_tensors(model, "input", cfg["input"], ref, cfg["max_batch_size"])
            problems += _check_tensors(model, "output", cfg["output"], refo, cfg["max_batch_size"])
            problems += _check_profile(model, cfg, engine)

    cfg = configs.get(name)
    if cfg is not None:
        v = repo / name / "1"
        if cfg["backend"] != "python":
            problems.append(f"{name}: expected the python backend, got {cfg['backend']!r}")
        if not (v / "model.py").is_file():
            problems.append(f"{name}: {v / 'model.py'} is missing")
        bpath = Path(cfg["parameters"].get("bundle") or "bundle")
        bpath = bpath if bpath.is_absolute() else v / bpath
        try:
            inner = Bundle.load(bpath)
            if inner.digest != bundle.digest:
                problems.append(f"{name}: the bundle in {bpath} is not {bundle.root} (manifests differ)")
        except BundleError as e:
            problems.append(f"{name}: {e}")
        mods = m["modalities"]
        want = {"vocabulary": ("TYPE_STRING", [1])}
        if "optical" in mods:
            want["optical"] = (TRITON_DTYPES[mods["optical"].get("dtype", "uint8")], [3, t, t])
        if "sar" in mods:
            want["sar"] = (TRITON_DTYPES[mods["sar"].get("dtype", "float32")], [1, t, t])
        problems += _check_tensors(name, "input", cfg["input"], {k: (d, [-1, *s]) for k, (d, s) in want.items()},
                                   cfg["max_batch_size"])
        problems += _check_tensors(name, "output", cfg["output"], {"labels": ("TYPE_UINT8", [-1, t, t])},
                                   cfg["max_batch_size"])
        image_dims = {k: _dims(v["shape"]) for k, v in m["graphs"]["image"]["inputs"].items()}
        for k in ("optical", "sar"):
            if k in image_dims and k in want and image_dims[k][1:] != want[k][1]:
                problems.append(f"{name}: {k} tiles {want[k][1]} differ from the image graph's {image_dims[k][1:]}")
        mb = cfg["max_batch_size"]
        limit = int(m.get("limits", {}).get("max_batch") or 0)
        if mb < 1:
            problems.append(f"{name}: max_batch_size must be >= 1 for dynamic batching, got {mb}")
        if limit and mb > limit:
            problems.append(f"{name}: max_batch_size {mb} exceeds the bundle's max_batch {limit}")
        pmax = _profile_batch_max(engine) if engine else None
        if pmax and mb > pmax:
            problems.append(f"{name}: max_batch_size {mb} exceeds the engine profile's max B {pmax}")
        db = cfg["dynamic_batching"]
        if db is None:
            problems.append(f"{name}: dynamic_batching is not configured")
        optional = {x["name"] for x in cfg["input"] if x["optional"]}
        need = {"optical+sar"} if set(bundle.modes) == {"optical+sar"} else set()
        if need and optional & {"optical", "sar"}:
            problems.append(f"{name}: optical and sar are required by this bundle but marked optional")
    return problems


# ============================================================================ running tritonserver
@dataclass
class TritonInstall:
    """A runnable ``tritonserver``: binary, backends, the Python stub and its environment."""

    binary: Path
    backends: Path
    stub: Path | None = None
    libs: Path | None = None
    python_env: Path | None = None


def _numpy_major(python: Path) -> int | None:
    try:
        out = subprocess.run([str(python), "-c", "import numpy; print(numpy.__version__)"], capture_output=True,
                             text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return int(out.stdout.strip().split(".")[0])


def _pytriton_dirs(env: Path | None) -> list[Path]:
    import importlib.util

    dirs = []
    if env is not None:
        dirs += sorted(env.glob("lib/python*/site-packages/pytriton/tritonserver"))
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(next(iter(spec.submodule_search_locations))) / "tritonserver")
    return [d for d in dirs if (d / "bin" / "tritonserver").is_file()]


def find_tritonserver(python_env: PathLike | None = None) -> TritonInstall:
    """Locate ``tritonserver`` and a Python environment for its Python backend.

    Binary: ``$RSVL_TRITONSERVER``, else the one ``nvidia-pytriton`` ships (in ``python_env`` or
    this interpreter's packages), else ``tritonserver`` on PATH / ``/opt/tritonserver`` (NGC).
    Python environment (its ``bin/`` goes first on the server's PATH; the stub embeds that
    Python and needs numpy < 2): ``python_env``, ``$RSVL_TRITON_PYTHON_ENV``,
    ``<sys.prefix>/triton-env``, or this environment when its numpy is < 2.
    Raises :class:`TritonUnavailable` with the fix when something is missing.
    """
    env = python_env or os.environ.get("RSVL_TRITON_PYTHON_ENV")
    env_path = Path(env) if env else None
    if env_path is None and (Path(sys.prefix) / "triton-env" / "bin").is_dir():
        env_path = Path(sys.prefix) / "triton-env"
    if env_path is None:
        env_path = Path(sys.prefix)
    python = env_path / "bin" / "python3"
    major = _numpy_major(python) if python.exists() else None
    if major is None or major >= 2:
        raise TritonUnavailable(
            f"the Triton Python backend stub needs numpy < 2 in the Python that runs model.py; {python} has "
            f"{'no numpy' if major is None else f'numpy {major}.x'}. Create an environment with "
            "`pip install nvidia-pytriton 'numpy<2' onnxruntime tokenizers` (plus rsvl) and pass it as "
            "python_env / RSVL_TRITON_PYTHON_ENV")
    v = f"{sys.version_info[0]}.{sys.version_info[1]}"
    explicit = os.environ.get("RSVL_TRITONSERVER")
    if explicit:
        b = Path(explicit)
        return TritonInstall(b, b.parent.parent / "backends", python_env=env_path)
    for d in _pytriton_dirs(env_path):
        stub = d / "python_backend_stubs" / v / "triton_python_backend_stub"
        if not stub.is_file():
            raise TritonUnavailable(f"nvidia-pytriton in {d} has no Python backend stub for Python {v}")
        libs = d.parent.parent / "nvidia_pytriton.libs"
        return TritonInstall(d / "bin" / "tritonserver", d / "backends", stub,
                             libs if libs.is_dir() else None, env_path)
    which = shutil.which("tritonserver") or ("/opt/tritonserver/bin/tritonserver"
                                             if Path("/opt/tritonserver/bin/tritonserver").is_file() else None)
    if which:
        b = Path(which).resolve()
        return TritonInstall(b, b.parent.parent / "backends", python_env=env_path)
    raise TritonUnavailable("no tritonserver binary: `pip install nvidia-pytriton` (CPU + Python backend), use an "
                            "NGC tritonserver container, or set RSVL_TRITONSERVER=/path/to/tritonserver")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class TritonServer:
    """A running ``tritonserver`` started by :func:`start_server`; :meth:`stop` ends it."""

    process: subprocess.Popen
    http_port: int
    host: str
    log_path: Path
    workdir: Path

    @property
    def url(self) -> str:
        return f"{self.host}:{self.http_port}"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server (it stops its Python stubs), then SIGKILL its process group if needed."""
        p = self.process
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # the server's process group: our own session, so only what this server started
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if p.poll() is None:
            p.wait(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _server_backends(install: TritonInstall, workdir: Path) -> Path:
    """A backends folder whose python/ has the stub for this Python (pytriton keeps stubs apart)."""
    if install.stub is None:
        return install.backends
    b = workdir / "backends" / "python"
    b.mkdir(parents=True, exist_ok=True)
    for f in (install.backends / "python").iterdir():
        (b / f.name).unlink(missing_ok=True)
        (b / f.name).symlink_to(f)
    (b / "triton_python_backend_stub").unlink(missing_ok=True)
    (b / "triton_python_backend_stub").symlink_to(install.stub)
    return b.parent


def start_server(repo_dir: PathLike, models: Sequence[str] | None = None, *, workdir: PathLike,
                 install: TritonInstall | None = None, host: str = "127.0.0.1", http_port: int | None = None,
                 ready_timeout: float = 120.0, extra_args: Sequence[str] = ()) -> TritonServer:
    """Start ``tritonserver`` on ``host`` (HTTP only, free port by default) serving ``models``
    (explicit model control; None: every model of the repository) and wait until ready.

    Raises :class:`TritonUnavailable` when the binary cannot run here, and RuntimeError (with the
    server log) when it runs but a model does not load or readiness times out."""
    import urllib.error
    import urllib.request

    install = install or find_tritonserver()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    port = http_port or free_port(host)
    cmd = [str(install.binary), f"--model-repository={Path(repo_dir).resolve()}",
           f"--backend-directory={_server_backends(install, work)}", f"--http-address={host}",
           f"--http-port={port}", "--allow-grpc=false", "--allow-metrics=false", "--exit-on-error=true",
           "--exit-timeout-secs=5", "--log-verbose=0", *extra_args]
    if models is not None:
        cmd += ["--model-control-mode=explicit", *[f"--load-model={m}" for m in models]]
    env = dict(os.environ)
    if install.libs is not None:
        env["LD_LIBRARY_PATH"] = ":".join(x for x in (str(install.libs), env.get("LD_LIBRARY_PATH")) if x)
    if install.python_env is not None:
        env["PATH"] = f"{install.python_env / 'bin'}:{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    log_path = work / "tritonserver.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=work,
                                start_new_session=True)
    server = TritonServer(proc, port, host, log_path, work)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            tail = server.log_tail()
            server.stop()
            if rc in (126, 127) or "error while loading shared libraries" in tail or "GLIBC" in tail:
                raise TritonUnavailable(f"tritonserver cannot run here (exit {rc}):\n{tail}")
            raise RuntimeError(f"tritonserver exited with {rc}:\n{tail}")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    tail = server.log_tail()
    server.stop()
    raise RuntimeError(f"tritonserver not ready after {ready_timeout:.0f} s:\n{tail}")
