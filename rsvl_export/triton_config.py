"""``config.pbtxt`` of the rsvl Triton models: written from the bundle manifest, parsed, validated.

Writing: :func:`image_config` (onnxruntime backend + TensorRT FP16 accelerator),
:func:`engine_config` (tensorrt backend, ``cc_model_filenames`` keyed by the engine's compute
capability), :func:`text_config` and :func:`python_config` (Python backend, dynamic batching).
The graph models keep ``max_batch_size: 0`` (full shapes with ``-1`` for B and K): their
``text_emb [K, D]`` input has no batch axis, so Triton's batcher cannot stack requests for them.

Parsing: :func:`parse_config` reads a ``config.pbtxt`` with Triton's own ``ModelConfig``
protobuf (from ``tritonclient``) when installed, else with the small text-format parser
:func:`parse_pbtxt`; both give the same plain dict.

Validation: :func:`validate_repository` checks a repository written by
:func:`rsvl_export.triton.write_triton_repository` against the ONNX graphs (read with ``onnx``),
the engine profiles and the bundle manifest.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

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

TRT_ACCELERATOR = """optimization { execution_accelerators {
  gpu_execution_accelerator : [ {
    name : "tensorrt"
    parameters { key: "precision_mode" value: "FP16" }
    parameters { key: "max_workspace_size_bytes" value: "2147483648" }
  } ]
} }
"""


# ============================================================================ bundle -> Triton names
def safe_name(name: str) -> str:
    """A bundle's model name as a Triton model name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def triton_engine(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The image engine Triton's ``tensorrt`` backend can serve: an enterprise TensorRT engine
    (Triton links enterprise TensorRT; TensorRT-RTX engines are served through the Python model)."""
    eng = bundle_engine(manifest, "image")
    return eng if eng is not None and eng.get("flavour", "tensorrt") == "tensorrt" else None


def engine_cc_key(cc: Any) -> str:
    """An engine target (``"sm_90"``, ``"90"``, ``"9.0"``) as a ``cc_model_filenames`` key (``"9.0"``)."""
    s = str(cc).strip().lower().removeprefix("sm_").removeprefix("sm")
    if re.fullmatch(r"\d{2,3}", s):  # "90" -> "9.0"
        s = f"{s[:-1]}.{s[-1]}"
    return s


def engine_plan_name(engine: Mapping[str, Any]) -> tuple[str, str]:
    """(compute capability key, plan file name) of the engine's first target."""
    cc = engine_cc_key((engine.get("targets") or [""])[0])
    return cc, f"model_sm{cc.replace('.', '')}.plan"


def profile_batch_max(engine: Mapping[str, Any]) -> int | None:
    """The largest batch B that every image input's optimisation profile allows."""
    prof = engine.get("profiles") or {}
    maxes = [int(p["max"][0]) for n, p in prof.items() if n in ("optical", "sar") and p.get("max")]
    return min(maxes) if maxes else None


def dims(shape: Sequence[Any]) -> list[int]:
    """Manifest shape (ints and axis names) -> Triton dims (-1 for named/dynamic axes)."""
    return [int(d) if isinstance(d, int) or (isinstance(d, str) and d.isdigit()) else -1 for d in shape]


def python_inputs(bundle: Any) -> dict[str, tuple[str, list[int], bool]]:
    """The Python model's inputs for a bundle: name -> (Triton dtype, dims without B, optional)."""
    t = bundle.tile_size
    modes = set(bundle.modes)
    mods = bundle.meta.modalities
    out = {}
    if "optical" in mods:
        out["optical"] = (TRITON_DTYPES[mods["optical"].optical_dtype], [3, t, t],
                          bool(modes - {"optical+sar", "optical"}))
    if "sar" in mods:
        out["sar"] = (TRITON_DTYPES[mods["sar"].dtype or "float32"], [1, t, t], "optical" in modes)
    out["vocabulary"] = ("TYPE_STRING", [1], True)
    return out


# ============================================================================ pbtxt writing
def _q(s: str) -> str:
    return json.dumps(str(s))


def _tensor(name: str, dtype: str, shape: Sequence[int], optional: bool = False) -> str:
    opt = " optional: true" if optional else ""
    return f"  {{ name: {_q(name)} data_type: {dtype} dims: [ {', '.join(str(d) for d in shape)} ]{opt} }}"


def _io(kind: str, tensors: Sequence[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]\n"


def _params(params: Mapping[str, str]) -> str:
    return "".join(f"parameters {{ key: {_q(k)} value {{ string_value: {_q(v)} }} }}\n" for k, v in params.items())


def graph_config(name: str, platform: str, backend: str, graph: Mapping[str, Any],
                 extra: str = "", params: Mapping[str, str] | None = None) -> str:
    """A graph model's config (``max_batch_size: 0``, tensors from the manifest ``graph`` entry)."""
    ins = [_tensor(k, TRITON_DTYPES[v["dtype"]], dims(v["shape"])) for k, v in graph["inputs"].items()]
    outs = [_tensor(k, TRITON_DTYPES[v["dtype"]], dims(v["shape"])) for k, v in graph["outputs"].items()]
    return (f"name: {_q(name)}\nplatform: {_q(platform)}\nbackend: {_q(backend)}\nmax_batch_size: 0\n"
            + _io("input", ins) + _io("output", outs) + extra + _params(params or {}))


def image_config(name: str, image: Mapping[str, Any]) -> str:
    """The image graph on the onnxruntime backend, TensorRT FP16 accelerator on GPU instances."""
    return graph_config(name, "onnxruntime_onnx", "onnxruntime", image, extra=TRT_ACCELERATOR)


def text_config(name: str, text: Mapping[str, Any]) -> str:
    """The text graph on the onnxruntime backend."""
    return graph_config(name, "onnxruntime_onnx", "onnxruntime", text)


def engine_config(name: str, image: Mapping[str, Any], engine: Mapping[str, Any]) -> str:
    """The image engine on the tensorrt backend (plan file named by :func:`engine_plan_name`)."""
    cc, fname = engine_plan_name(engine)
    extra = (f"default_model_filename: {_q(fname)}\n"
             f"cc_model_filenames [ {{ key: {_q(cc)} value: {_q(fname)} }} ]\n")
    params = {"tensorrt_version": str(engine.get("version", "")), "precision": str(engine.get("precision", "")),
              "max_batch": str(profile_batch_max(engine) or "")}
    return graph_config(name, "tensorrt_plan", "tensorrt", image, extra=extra, params=params)


def python_config(name: str, bundle: Any, max_batch: int, *, max_queue_delay_us: int, instances: int,
                  params: Mapping[str, str]) -> str:
    """The Python model: raw tiles + vocabulary -> labels ``uint8 [B, t, t]``, dynamic batching."""
    t = bundle.tile_size
    ins = [_tensor(k, dtype, shape, optional=opt) for k, (dtype, shape, opt) in python_inputs(bundle).items()]
    return (f"name: {_q(name)}\nbackend: \"python\"\nmax_batch_size: {int(max_batch)}\n"
            + _io("input", ins) + _io("output", [_tensor("labels", "TYPE_UINT8", [t, t])])
            + f"dynamic_batching {{ max_queue_delay_microseconds: {int(max_queue_delay_us)} }}\n"
            + f"instance_group [ {{ count: {int(instances)} }} ]\n" + _params(params))


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


def normalise_fallback(msg: Mapping[str, list[Any]]) -> dict[str, Any]:
    """:func:`parse_pbtxt`'s output as the plain dict :func:`parse_config` returns."""
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
    return normalise_fallback(parse_pbtxt(text))


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
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
            out[v.name] = (ONNX_TO_TRITON.get(tt.elem_type, f"onnx:{tt.elem_type}"), shape)
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
        cdims = ([-1] if max_batch > 0 else []) + list(t["dims"])
        if max_batch > 0 and gdims and isinstance(gdims[0], int) and gdims[0] > 0:
            problems.append(f"{model}: max_batch_size {max_batch} but {kind} {t['name']!r} has a fixed first "
                            f"dim {gdims[0]} in the graph (set max_batch_size: 0)")
        if len(cdims) != len(gdims):
            problems.append(f"{model}: {kind} {t['name']!r} has rank {len(cdims)} in config.pbtxt "
                            f"(dims {t['dims']}, max_batch_size {max_batch}) but {len(gdims)} in the graph {gdims}")
            continue
        for i, (c, g) in enumerate(zip(cdims, gdims)):
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
        cdims = ([-1] if mb > 0 else []) + list(t["dims"])
        lo, hi = list(p.get("min", [])), list(p.get("max", []))
        if len(lo) != len(cdims) or len(hi) != len(cdims):
            problems.append(f"{model}: input {t['name']!r} dims {cdims} do not match the profile rank "
                            f"(min {lo}, max {hi})")
            continue
        for i, (c, a, b) in enumerate(zip(cdims, lo, hi)):
            if c == -1 and a == b:
                problems.append(f"{model}: input {t['name']!r} dim {i} is -1 but the profile fixes it to {a}")
            if c != -1 and not a <= c <= b:
                problems.append(f"{model}: input {t['name']!r} dim {i} = {c} is outside the profile [{a}, {b}]")
        if mb > 0 and hi and mb > hi[0]:
            problems.append(f"{model}: max_batch_size {mb} exceeds the engine profile's max {hi[0]} "
                            f"for {t['name']!r}")
    return problems


def _read_configs(repo: Path, expected: set[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Every ``config.pbtxt`` of the repository, parsed, and the problems of parsing and naming."""
    problems = []
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
    return configs, problems


def _check_graph_model(repo: Path, model: str, cfg: Mapping[str, Any], graph: str,
                       manifest: Mapping[str, Any]) -> list[str]:
    """An onnxruntime model against its ONNX graph and the manifest's ``graphs[graph]`` entry."""
    problems = []
    if cfg["backend"] != "onnxruntime" or cfg["platform"] not in ("", "onnxruntime_onnx"):
        problems.append(f"{model}: expected the onnxruntime backend, got backend {cfg['backend']!r} "
                        f"platform {cfg['platform']!r}")
    onnx_path = repo / model / "1" / (cfg["default_model_filename"] or "model.onnx")
    if not onnx_path.is_file():
        return [*problems, f"{model}: {onnx_path} is missing"]
    gin, gout = _onnx_io(onnx_path)
    problems += _check_tensors(model, "input", cfg["input"], gin, cfg["max_batch_size"])
    problems += _check_tensors(model, "output", cfg["output"], gout, cfg["max_batch_size"])
    man = manifest["graphs"][graph]
    for kind, tensors in (("input", man["inputs"]), ("output", man["outputs"])):
        g = gin if kind == "input" else gout
        for tn, spec in tensors.items():
            if tn in g and [d if isinstance(d, int) else -1 for d in dims(spec["shape"])] != \
                    [d if isinstance(d, int) and d > 0 else -1 for d in g[tn][1]]:
                problems.append(f"{model}: {kind} {tn!r} shape {g[tn][1]} in the graph differs from the "
                                f"manifest {spec['shape']}")
    if graph == "image":
        accel = [a for a in cfg["gpu_accelerators"] if a["name"] == "tensorrt"]
        if not accel or accel[0]["parameters"].get("precision_mode") != "FP16":
            problems.append(f"{model}: no TensorRT FP16 gpu_execution_accelerator")
    return problems


def _check_engine_model(repo: Path, model: str, cfg: Mapping[str, Any], engine: Mapping[str, Any],
                        manifest: Mapping[str, Any]) -> list[str]:
    """The tensorrt model against the engine (compute capability, plan files, profiles) and the image graph."""
    problems = []
    if cfg["backend"] != "tensorrt" or cfg["platform"] not in ("", "tensorrt_plan"):
        problems.append(f"{model}: expected the tensorrt backend, got {cfg['backend']!r}/{cfg['platform']!r}")
    cc = engine_cc_key((engine.get("targets") or [""])[0])
    files = cfg["cc_model_filenames"]
    if cc not in files:
        problems.append(f"{model}: cc_model_filenames has {sorted(files)}, not the engine's compute "
                        f"capability {cc}")
    for f in {*files.values(), cfg["default_model_filename"]} - {""}:
        if not (repo / model / "1" / f).is_file():
            problems.append(f"{model}: {repo / model / '1' / f} is missing")
    image = manifest["graphs"]["image"]
    ref = {k: (TRITON_DTYPES[v["dtype"]], dims(v["shape"])) for k, v in image["inputs"].items()}
    refo = {k: (TRITON_DTYPES[v["dtype"]], dims(v["shape"])) for k, v in image["outputs"].items()}
    problems += _check_tensors(model, "input", cfg["input"], ref, cfg["max_batch_size"])
    problems += _check_tensors(model, "output", cfg["output"], refo, cfg["max_batch_size"])
    return problems + _check_profile(model, cfg, engine)


def _check_python_model(repo: Path, name: str, cfg: Mapping[str, Any], bundle: Any,
                        engine: Mapping[str, Any] | None) -> list[str]:
    """The Python model against the bundle: its copy of the bundle, tensors, batch limits, batching."""
    from rsvl_runtime.bundle import Bundle, BundleError

    problems = []
    m = bundle.manifest
    t = bundle.tile_size
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
    want = {k: (dtype, shape) for k, (dtype, shape, _) in python_inputs(bundle).items()}
    problems += _check_tensors(name, "input", cfg["input"], {k: (d, [-1, *s]) for k, (d, s) in want.items()},
                               cfg["max_batch_size"])
    problems += _check_tensors(name, "output", cfg["output"], {"labels": ("TYPE_UINT8", [-1, t, t])},
                               cfg["max_batch_size"])
    image_dims = {k: dims(v["shape"]) for k, v in m["graphs"]["image"]["inputs"].items()}
    for k in ("optical", "sar"):
        if k in image_dims and k in want and image_dims[k][1:] != want[k][1]:
            problems.append(f"{name}: {k} tiles {want[k][1]} differ from the image graph's {image_dims[k][1:]}")
    mb = cfg["max_batch_size"]
    limit = bundle.meta.limits.max_batch
    if mb < 1:
        problems.append(f"{name}: max_batch_size must be >= 1 for dynamic batching, got {mb}")
    if limit and mb > limit:
        problems.append(f"{name}: max_batch_size {mb} exceeds the bundle's max_batch {limit}")
    pmax = profile_batch_max(engine) if engine else None
    if pmax and mb > pmax:
        problems.append(f"{name}: max_batch_size {mb} exceeds the engine profile's max B {pmax}")
    if cfg["dynamic_batching"] is None:
        problems.append(f"{name}: dynamic_batching is not configured")
    optional = {x["name"] for x in cfg["input"] if x["optional"]}
    need = {"optical+sar"} if set(bundle.modes) == {"optical+sar"} else set()
    if need and optional & {"optical", "sar"}:
        problems.append(f"{name}: optical and sar are required by this bundle but marked optional")
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
    try:
        bundle = Bundle.load(bundle_dir)
    except BundleError as e:
        return [f"bundle: {e}"]
    m = bundle.manifest
    name = safe_name(bundle.model)
    engine = triton_engine(m)
    expected = {name, f"{name}_image", f"{name}_text"} | ({f"{name}_image_trt"} if engine else set())
    configs, problems = _read_configs(repo, expected)
    for graph, model in (("image", f"{name}_image"), ("text", f"{name}_text")):
        if model in configs:
            problems += _check_graph_model(repo, model, configs[model], graph, m)
    if engine and f"{name}_image_trt" in configs:
        problems += _check_engine_model(repo, f"{name}_image_trt", configs[f"{name}_image_trt"], engine, m)
    if name in configs:
        problems += _check_python_model(repo, name, configs[name], bundle, engine)
    return problems
