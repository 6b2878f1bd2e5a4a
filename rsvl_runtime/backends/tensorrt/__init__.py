"""The TensorRT backend, both flavours (enterprise ``tensorrt`` and ``tensorrt-rtx``), in one folder:

==============  ==========================================================================
module          job
==============  ==========================================================================
``probe``       this machine's GPU and compute capability; version parsing
``flavours``    the two flavours, their import, ``--engine auto`` resolution
``profiles``    optimisation profiles, shape checks, rebuild commands
``build``       ONNX -> serialized engine (used by ``rsvl-export``)
``validity``    is an engine usable here? (manifest + ``get_engine_validity``), one-line refusals
``session``     run an engine with numpy in/out (cuda-python device memory)
==============  ==========================================================================

Importing this package needs neither torch nor TensorRT nor a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...manifest import Manifest
from .flavours import (
    ENGINE_CHOICES,
    FLAVOURS,
    TensorRTUnavailable,
    choose_flavour,
    import_flavour,
)
from .probe import GpuInfo, cuda_device_count, gpu_info, version_tuple, versions_match
from .profiles import (
    check_shape_in_profile,
    graph_profiles,
    normalize_profiles,
    rebuild_hint,
    trtexec_command,
)
from .validity import EngineCheck, EngineMismatchError, check_engine, require_engine


def bundle_engine(manifest: Manifest | Mapping[str, Any], graph: str) -> dict[str, Any] | None:
    """The manifest's engine entry for ``graph`` ("image" | "text") as the mapping
    :func:`check_engine` and ``TensorRTSession`` take, or None. ``manifest``: a bundle's typed
    ``meta`` (``rsvl_runtime/manifest.py``; defaults applied, older entries upgraded) or its
    serialised ``manifest`` dictionary (entries as written)."""
    if isinstance(manifest, Manifest):
        entry = manifest.engine(graph)
        return entry.to_dict() if entry is not None else None
    return next((dict(e) for e in manifest.get("engines") or [] if e.get("graph", "image") == graph), None)


def __getattr__(name: str) -> Any:  # the session pulls numpy buffers etc.: load it on first use
    if name in ("TensorRTSession", "device_memory", "runtime_cache_path"):
        from . import session

        return getattr(session, name)
    raise AttributeError(name)


__all__ = [
    "ENGINE_CHOICES",
    "FLAVOURS",
    "EngineCheck",
    "EngineMismatchError",
    "GpuInfo",
    "TensorRTSession",
    "TensorRTUnavailable",
    "bundle_engine",
    "check_engine",
    "check_shape_in_profile",
    "choose_flavour",
    "cuda_device_count",
    "gpu_info",
    "graph_profiles",
    "import_flavour",
    "normalize_profiles",
    "rebuild_hint",
    "require_engine",
    "trtexec_command",
    "version_tuple",
    "versions_match",
]
