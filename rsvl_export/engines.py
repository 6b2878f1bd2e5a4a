"""The TensorRT engines of a bundle: which flavour builds them, their optimisation profiles
(from the graphs' dynamic axes and ``--max-batch`` / ``--max-vocab``), and the build step shared
by ``rsvl-export`` and ``rsvl-export rebuild-engine``. The build itself lives in the runtime's
TensorRT backend (``rsvl_runtime.backends.tensorrt.build``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rsvl_runtime.backends.tensorrt import (
    TensorRTUnavailable,
    choose_flavour,
    graph_profiles,
)
from rsvl_runtime.backends.tensorrt.build import EngineBuildError, build_engine
from rsvl_runtime.backends.tensorrt.profiles import final_bundle_paths
from rsvl_runtime.files import cache_root
from rsvl_runtime.manifest import GraphEntry
from rsvl_runtime.segmenter import TEXT_CHUNK

log = logging.getLogger("rsvl.export")

#: Graphs that get an engine, in build order.
ENGINE_GRAPHS = ("image", "text")


def axis_sizes(graph: str, max_batch: int, max_vocab: int) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) per symbolic axis. Image graph: B tiles, K classes. Text graph: K prompts
    (the runtime encodes at most ``TEXT_CHUNK`` per call), B referring expressions."""
    batch = (1, max(1, min(8, max_batch)), max_batch)
    if graph == "text":
        return {"K": (1, min(16, TEXT_CHUNK), TEXT_CHUNK), "B": (1, 1, max_batch)}
    return {"B": batch, "K": (1, max(1, min(16, max_vocab)), max_vocab)}


def engine_profiles(graph: str, inputs: Mapping[str, Any], max_batch: int, max_vocab: int
                    ) -> dict[str, dict[str, list[int]]]:
    """Optimisation profile of one graph's inputs (static axes fixed, symbolic ones ranged)."""
    return graph_profiles(inputs, axis_sizes(graph, max_batch, max_vocab))


def _graph(graphs: Mapping[str, GraphEntry | Mapping[str, Any]], graph: str) -> GraphEntry:
    """``graphs[graph]`` as a :class:`GraphEntry` (the export passes the ``graphs`` dict it is
    building, ``rebuild-engine`` the bundle's typed ``meta.graphs``)."""
    g = graphs[graph]
    return g if isinstance(g, GraphEntry) else GraphEntry.from_dict(dict(g), f"graphs.{graph}")


def engine_source(graphs: Mapping[str, GraphEntry | Mapping[str, Any]], graph: str, precision: str
                  ) -> tuple[str, str]:
    """(ONNX file, precision) an engine is built from: the FP16 ONNX when the bundle has one for
    that graph (strongly typed builds take precision from it), else the FP32 ONNX."""
    g = _graph(graphs, graph)
    if precision == "fp16" and g.fp16:
        return g.fp16, "fp16"
    return g.fp32, "fp32"


def build_bundle_engines(work: Path, graphs: Mapping[str, GraphEntry | Mapping[str, Any]], precision: str,
                         engine: str, max_batch: int, max_vocab: int, targets: Sequence[str] | None = None,
                         timing_cache: str | None = None, workspace_gb: float | None = None) -> list[dict[str, Any]]:
    """Build the image and text engines of the bundle in ``work`` with the flavour ``engine``
    resolves to (``auto`` | ``tensorrt`` | ``tensorrt-rtx`` | ``none``) and return their manifest
    entries. ``auto`` without any TensorRT logs why and returns []; a named flavour that cannot
    build raises ``TensorRTUnavailable``."""
    name, why = choose_flavour(engine)
    log.info("  %s", why)
    if name is None:
        return []
    cache = Path(timing_cache) if timing_cache else cache_root() / "trt_timing.cache"
    entries = []
    for graph in ENGINE_GRAPHS:
        if graph not in graphs:
            continue
        src, prec = engine_source(graphs, graph, precision)
        inputs = {n: t.to_dict() for n, t in _graph(graphs, graph).inputs.items()}
        profiles = engine_profiles(graph, inputs, max_batch, max_vocab)
        try:
            info = build_engine(work / src, work / f"{graph}.{prec}.engine", profiles, flavour_name=name,
                                precision=prec, graph=graph, targets=targets, timing_cache_path=cache,
                                workspace_gb=workspace_gb)
        except (TensorRTUnavailable, EngineBuildError) as e:  # name the bundle's files, not the build folder's
            raise type(e)(final_bundle_paths(str(e))) from e
        entries.append(info.to_dict())
    return entries


__all__ = ["ENGINE_GRAPHS", "axis_sizes", "build_bundle_engines", "engine_profiles", "engine_source"]
