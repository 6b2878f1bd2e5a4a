"""Triton Inference Server model repositories from a bundle.

:func:`write_triton_repository` writes, for a bundle of model ``NAME``::

    REPO/NAME_image/      onnxruntime backend (onnxruntime_onnx), image graph; TensorRT FP16
                          execution accelerator on GPU instances
    REPO/NAME_image_trt/  tensorrt backend (tensorrt_plan), only when the bundle has an
                          enterprise TensorRT engine (:func:`triton_engine`); cc_model_filenames
                          keyed by the engine's compute capability
    REPO/NAME_text/       onnxruntime backend, text graph
    REPO/NAME/            Python backend: raw tiles (optical uint8 [B,3,t,t], sar float32
                          [B,1,t,t]) + vocabulary (BYTES, "water|lake,building,road") -> labels
                          uint8 [B,t,t]; ``1/model.py`` is a copy of rsvl_export/triton_model/model.py,
                          which runs rsvl_runtime's Segmenter on ``1/bundle``, so its answers equal
                          ``Segmenter.predict`` on each tile; dynamic batching across requests.

Batching across requests happens in the Python model, whose ``max_batch_size`` stays within the
bundle's batch limit and the engine profile. The configs are written, parsed and validated by
rsvl_export/triton_config.py (:func:`validate_repository` is re-exported here).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# re-exported: the public names of the Triton export live on in rsvl_export.triton
from .triton_config import (
    ONNX_TO_TRITON,
    TRITON_DTYPES,
    engine_config,
    engine_plan_name,
    image_config,
    parse_config,
    parse_pbtxt,
    profile_batch_max,
    python_config,
    safe_name,
    text_config,
    triton_engine,
    validate_repository,
)
from .triton_model import model_source

log = logging.getLogger("rsvl.triton")

PathLike = str | os.PathLike[str]

DEFAULT_QUEUE_DELAY_US = 2000
LINK_MODES = ("hardlink", "copy", "symlink")

__all__ = ["DEFAULT_QUEUE_DELAY_US", "LINK_MODES", "ONNX_TO_TRITON", "TRITON_DTYPES", "RepositoryOptions",
           "TritonRepository", "parse_config", "parse_pbtxt", "triton_engine", "validate_repository",
           "write_triton_repository"]


@dataclass(frozen=True)
class RepositoryOptions:
    """How :func:`write_triton_repository` writes a repository.

    ``name``: the model name (default: the bundle's model name, made Triton-safe).
    ``max_queue_delay_us``: the Python model's dynamic-batching delay. ``instances``: its
    instance count. ``backend``/``threads``: the Segmenter's backend and ONNX Runtime threads
    inside it. ``link``: how graph and bundle files get into the repository (``hardlink`` falls
    back to ``copy`` across filesystems; ``symlink`` keeps the bundle's absolute paths).
    ``vendor_runtime`` copies the ``rsvl_runtime`` package next to ``model.py`` so the Python
    model needs only numpy, onnxruntime and tokenizers in Triton's Python environment.
    """

    name: str | None = None
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = 1
    backend: str = "auto"
    threads: int | None = None
    link: str = "hardlink"
    vendor_runtime: bool = True

    def __post_init__(self) -> None:
        if self.link not in LINK_MODES:
            raise ValueError(f"link must be one of {LINK_MODES}, got {self.link!r}")


@dataclass
class TritonRepository:
    """What :func:`write_triton_repository` wrote."""

    root: Path
    name: str
    models: dict[str, Path] = field(default_factory=dict)
    max_batch: int = 0


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


def _vendor_runtime(dst: Path) -> None:
    import rsvl_runtime

    src = Path(rsvl_runtime.__file__).resolve().parent
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _max_batch(limit: int, engine: dict[str, Any] | None, max_batch: int | None) -> int:
    """The Python model's ``max_batch_size``: ``max_batch`` (default: the cap) within 1..cap, the cap
    being the bundle's ``limits.max_batch`` (``limit``) and the engine profile's largest B."""
    prof_max = profile_batch_max(engine) if engine else None
    cap = min(x for x in (limit, prof_max) if x)
    mb = cap if max_batch is None else int(max_batch)
    if not 1 <= mb <= cap:
        raise ValueError(f"max_batch {mb} is outside 1..{cap} (the bundle's batch limit"
                         + (f" / the engine profile's max B {prof_max}" if prof_max else "")
                         + "); re-export with --max-batch to go higher")
    return mb


def _write_python_model(bundle: Any, d: Path, mb: int, opts: RepositoryOptions) -> None:
    """REPO/NAME: the bundle, (vendored rsvl_runtime,) model.py and config.pbtxt."""
    v = d / "1"
    bdir = v / "bundle"
    if bdir.exists() or bdir.is_symlink():
        shutil.rmtree(bdir) if bdir.is_dir() and not bdir.is_symlink() else bdir.unlink()
    for rel in [*bundle.meta.files, "manifest.json"]:
        _place(bundle.root / rel, bdir / rel, opts.link)
    if opts.vendor_runtime:
        _vendor_runtime(v / "rsvl_runtime")
    (v / "model.py").write_bytes(model_source())
    params = {"bundle": "bundle", "backend": opts.backend, "tile": str(bundle.tile_size)}
    if opts.threads:
        params["threads"] = str(opts.threads)
    cfg = python_config(d.name, bundle, mb, max_queue_delay_us=opts.max_queue_delay_us,
                        instances=opts.instances, params=params)
    (d / "config.pbtxt").write_text(cfg, encoding="utf-8")


def write_triton_repository(bundle_dir: PathLike, repo_dir: PathLike, max_batch: int | None = None,
                            options: RepositoryOptions | None = None, **overrides: Any) -> TritonRepository:
    """Write a Triton model repository for a (semantic) bundle; see the module docstring.

    ``max_batch``: the Python model's ``max_batch_size`` (tiles per batch); default and upper
    bound: the bundle's ``limits.max_batch`` and the engine profile's largest B. ``options``
    (:class:`RepositoryOptions`), with any of its fields overridden by keyword
    (``name=``, ``link=``, ``vendor_runtime=``, ...).
    """
    from rsvl_runtime.bundle import Bundle

    opts = dataclasses.replace(options or RepositoryOptions(), **overrides)
    bundle = Bundle.load(bundle_dir)
    m = bundle.manifest  # graph and engine entries in their serialised form: the pbtxt writers read those
    if bundle.task != "semantic":
        raise ValueError(f"{bundle.root} is a {bundle.task} bundle; the Triton repository supports semantic "
                         "(TSMNet) bundles")
    name = safe_name(opts.name or bundle.model)
    repo = Path(repo_dir)
    repo.mkdir(parents=True, exist_ok=True)
    engine = triton_engine(m)
    mb = _max_batch(bundle.meta.limits.max_batch, engine, max_batch)
    out = TritonRepository(repo, name, max_batch=mb)

    image, text = m["graphs"]["image"], m["graphs"]["text"]
    d = out.models[f"{name}_image"] = repo / f"{name}_image"
    _place_graph(bundle.root, image.get("fp32") or image.get("fp16"), d / "1", opts.link)
    (d / "config.pbtxt").write_text(image_config(d.name, image), encoding="utf-8")

    if engine:
        d = out.models[f"{name}_image_trt"] = repo / f"{name}_image_trt"
        _place(bundle.root / engine["file"], d / "1" / engine_plan_name(engine)[1], opts.link)
        (d / "config.pbtxt").write_text(engine_config(d.name, image, engine), encoding="utf-8")

    d = out.models[f"{name}_text"] = repo / f"{name}_text"
    _place_graph(bundle.root, text.get("fp32") or text.get("fp16"), d / "1", opts.link)
    (d / "config.pbtxt").write_text(text_config(d.name, text), encoding="utf-8")

    d = out.models[name] = repo / name
    _write_python_model(bundle, d, mb, opts)
    log.info("Triton repository %s: %s (Python model max_batch_size %d)", repo, ", ".join(out.models), mb)
    return out
