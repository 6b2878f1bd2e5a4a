"""Is an engine usable on this machine? Checked before anything is deserialised.

An engine only runs with the TensorRT flavour and version that built it and on the GPU
architectures it targets; TensorRT's own error for a mismatch is obscure (or a crash). The
manifest entry (flavour, version, targets) is compared with this machine first; then, where the
library offers it (TensorRT-RTX), ``Runtime.get_engine_validity`` reads the engine's header and
answers VALID / SUBOPTIMAL / INVALID with diagnostics: this works without a GPU, so
``rsvl-export inspect`` can say on any machine whether and why an engine would not run here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...bundle import BundleError
from . import probe
from .flavours import TensorRTUnavailable, error_logger, flavour, import_flavour
from .profiles import rebuild_hint

log = logging.getLogger("rsvl.tensorrt")

#: Bytes of an engine file handed to get_engine_validity (the header is 64 bytes in TensorRT-RTX 1.x).
HEADER_BYTES = 1 << 16

_DIAGNOSTICS = {
    "VERSION_MISMATCH": "built by another TensorRT version",
    "UNSUPPORTED_CC": "not built for this GPU's compute capability",
    "OLD_CUDA_DRIVER": "the CUDA driver is too old",
    "OLD_CUDA_RUNTIME": "the CUDA runtime is too old",
    "INSUFFICIENT_GPU_MEMORY": "not enough GPU memory",
    "MALFORMED_ENGINE": "the file is not a valid engine (corrupt or truncated)",
    "CUDA_ERROR": "a CUDA error occurred while checking",
}


class EngineMismatchError(BundleError):
    """An engine was built for another flavour, version or GPU than this machine's, or is corrupt."""


@dataclass
class EngineCheck:
    """The verdict on one engine for this machine; ``reason`` is one line when not ``ok``."""

    file: str
    flavour: str
    version: str
    targets: list[str]
    ok: bool
    reason: str = ""
    mismatch: bool = False        #: True: the engine (not the machine's setup) is the problem
    diagnostics: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """``image.fp16.engine (tensorrt-rtx 1.7.1.116, for compute capability 8.0/8.6/...)``"""
        return (f"{self.file} ({self.flavour} {self.version}, for compute capability "
                f"{'/'.join(self.targets) or 'unknown'})")


def _cuda_message(messages: list[str]) -> str:
    """The informative part of TensorRT's CUDA error ("cudaError 35: CUDA driver version is ...")."""
    for m in messages:
        i = m.find("cudaError")
        if i >= 0:
            return m[i:].split(")")[0]
    return messages[0] if messages else ""


def library_validity(trt: Any, engine_path: Path) -> tuple[str, list[str], str]:
    """(``"VALID"|"SUBOPTIMAL"|"INVALID"|"UNKNOWN"``, diagnostics, CUDA message) from the library's
    ``Runtime.get_engine_validity`` on the engine's header; ``UNKNOWN`` where the library has none."""
    if not hasattr(trt.Runtime, "get_engine_validity"):
        return "UNKNOWN", [], ""
    logger = error_logger(trt)
    with open(engine_path, "rb") as fh:
        header = fh.read(HEADER_BYTES)
    validity, bits = trt.Runtime(logger).get_engine_validity(header)
    diags = [text for name, text in _DIAGNOSTICS.items()
             if int(bits) & int(getattr(trt.EngineInvalidityDiagnostics, name, 0))]
    return str(getattr(validity, "name", validity)), diags, _cuda_message(logger.errors)


def check_engine(engine_path: str | os.PathLike[str], meta: Mapping[str, Any], device: int = 0) -> EngineCheck:
    """Check one engine against this machine without deserialising it (never raises for a bad engine)."""
    engine_path = Path(engine_path)
    name = str(meta.get("flavour") or "tensorrt")
    version = str(meta.get("version") or meta.get("tensorrt_version") or "")
    targets = [str(t) for t in (meta.get("targets") or ([meta["compute_capability"]]
                                                          if meta.get("compute_capability") else []))]
    check = EngineCheck(engine_path.name, name, version or "unknown version", targets, ok=False)
    try:
        f = flavour(name)
    except ValueError as e:
        check.reason, check.mismatch = str(e), True
        return check
    if not version or not targets:
        check.reason, check.mismatch = "its manifest entry lacks the version/targets needed to check it", True
        return check
    if not engine_path.is_file():
        check.reason, check.mismatch = "the engine file is missing", True
        return check
    try:
        trt = import_flavour(f.name)
    except TensorRTUnavailable as e:
        check.reason = str(e)
        return check
    installed = str(trt.__version__)
    if not probe.versions_match(version, installed):
        check.reason, check.mismatch = f"it was built by {f.name} {version}, this machine has {f.name} {installed}", True
        return check
    status, diags, cuda = library_validity(trt, engine_path)
    check.diagnostics = diags
    gpu = probe.gpu_info(device)
    if status == "INVALID" and diags:
        check.reason, check.mismatch = "; ".join(diags), not (set(diags) <= {_DIAGNOSTICS["CUDA_ERROR"]})
        return check
    if gpu is None:
        check.reason = "this machine has no NVIDIA GPU" + (f" ({cuda})" if cuda else "")
        return check
    if status == "INVALID":
        check.reason = f"{f.name} {installed} says the engine is invalid on {gpu}" + (f" ({cuda})" if cuda else "")
        check.mismatch = True
        return check
    if status == "UNKNOWN" and gpu.compute_capability not in targets:
        check.reason, check.mismatch = f"it targets compute capability {'/'.join(targets)}, this GPU is {gpu}", True
        return check
    if status == "SUBOPTIMAL":
        log.warning("%s: %s reports the engine as SUBOPTIMAL on %s (it runs, maybe slower); rebuild with %s",
                    engine_path.name, f.name, gpu, rebuild_hint(engine_path, meta))
    check.ok = True
    return check


def require_engine(engine_path: str | os.PathLike[str], meta: Mapping[str, Any], device: int = 0) -> EngineCheck:
    """:func:`check_engine`, raising one line when the engine cannot run here: what the engine is,
    what is wrong, what this machine has, and the fix. :class:`EngineMismatchError` when the engine
    is the problem (rebuild it), :class:`TensorRTUnavailable` when the machine lacks the library/GPU."""
    check = check_engine(engine_path, meta, device)
    if check.ok:
        return check
    gpu = probe.gpu_info(device)
    machine = f"This machine: {gpu}, {_installed(check.flavour)}" if gpu else f"Installed here: {_installed(check.flavour)}"
    msg = (f"{check.describe()} cannot run here: {check.reason}. {machine}. Fix: run with `--backend onnxruntime`, "
           f"or rebuild the engine for this machine with {rebuild_hint(engine_path, meta)}")
    raise (EngineMismatchError if check.mismatch else TensorRTUnavailable)(msg)


def _installed(name: str) -> str:
    try:
        return f"{name} {import_flavour(name).__version__}"
    except (TensorRTUnavailable, ValueError):
        return f"{name} not installed"


__all__ = ["EngineCheck", "EngineMismatchError", "check_engine", "library_validity", "require_engine"]
