"""The two TensorRT flavours rsvl builds and runs engines with, behind one API.

=============  ==============  =====================  =========================================
flavour        module          pip                    builds without a GPU / engines run on
=============  ==============  =====================  =========================================
tensorrt       ``tensorrt``    ``tensorrt``           no: builds for the GPU it runs on only
tensorrt-rtx   ``tensorrt_rtx`` ``tensorrt-rtx``      yes (ahead-of-time on the CPU); engines run
                                                      on compute capability 8.0/8.6/8.9/12.x
=============  ==============  =====================  =========================================

Both share the builder/runtime Python API (``Builder``, ``OnnxParser``, ``Runtime``,
``deserialize_cuda_engine``, ``execute_async_v3``); TensorRT-RTX adds target compute
capabilities, ``Runtime.get_engine_validity`` (answers without a GPU), a runtime (JIT) cache and
CUDA-graph capture. Modules are imported lazily; nothing here needs a GPU.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

from ..base import BackendError
from . import probe

log = logging.getLogger("rsvl.tensorrt")


class TensorRTUnavailable(BackendError):
    """A TensorRT flavour (or the GPU it needs) is not available; the message says what to do."""


@dataclass(frozen=True)
class Flavour:
    """One TensorRT distribution."""

    name: str           #: "tensorrt" | "tensorrt-rtx" (what the manifest and the CLI say)
    module: str         #: the Python module
    pip: str            #: what to install
    builds_without_gpu: bool

    def missing(self, error: BaseException | str = "") -> str:
        """Why this flavour cannot be used, with the install hint."""
        why = f" ({error})" if str(error) else ""
        where = "" if self.builds_without_gpu else " on a machine with an NVIDIA GPU"
        return f"{self.name} is not importable{why}: install it{where} with `pip install {self.pip}`"


TENSORRT = Flavour("tensorrt", "tensorrt", "tensorrt", builds_without_gpu=False)
TENSORRT_RTX = Flavour("tensorrt-rtx", "tensorrt_rtx", "tensorrt-rtx", builds_without_gpu=True)
FLAVOURS: dict[str, Flavour] = {f.name: f for f in (TENSORRT, TENSORRT_RTX)}
#: ``rsvl-export --engine`` choices.
ENGINE_CHOICES = ("auto", *FLAVOURS, "none")


def flavour(name: str) -> Flavour:
    """The :class:`Flavour` called ``name`` (ValueError naming the choices otherwise)."""
    try:
        return FLAVOURS[name]
    except KeyError:
        raise ValueError(f"unknown TensorRT flavour {name!r}; choose one of {', '.join(FLAVOURS)}") from None


def import_flavour(name: str) -> Any:
    """Import the flavour's module or raise :class:`TensorRTUnavailable` with the install hint.

    The package index's enterprise ``tensorrt`` is a download stub on machines it has no binary
    for: it fails at import or imports without ``Builder``; both count as missing."""
    f = flavour(name)
    try:
        trt = importlib.import_module(f.module)
    except Exception as e:
        raise TensorRTUnavailable(f.missing(e)) from e
    if not hasattr(trt, "Builder") and not hasattr(trt, "Runtime"):
        raise TensorRTUnavailable(f.missing("the installed package is a stub without the TensorRT libraries"))
    return trt


def installed_version(name: str) -> str | None:
    """The importable flavour's ``__version__``, or None."""
    try:
        return str(import_flavour(name).__version__)
    except TensorRTUnavailable:
        return None


def can_build(name: str, device: int = 0) -> tuple[bool, str]:
    """(True, "tensorrt-rtx 1.7.1.116, ahead-of-time on the CPU") when the flavour can build engines
    here, else (False, why). Enterprise TensorRT also needs a GPU."""
    f = flavour(name)
    try:
        trt = import_flavour(name)
    except TensorRTUnavailable as e:
        return False, str(e)
    version = str(trt.__version__)
    gpu = probe.gpu_info(device)
    if f.builds_without_gpu:
        where = f"on {gpu}" if gpu else "ahead-of-time on the CPU (no GPU needed)"
        return True, f"{f.name} {version}, {where}"
    if gpu is None:
        return False, f"{f.name} {version} is installed but needs an NVIDIA GPU to build ({probe.describe_machine(device)})"
    return True, f"{f.name} {version} on {gpu}"


def error_logger(trt: Any, forward: bool = False) -> Any:
    """A ``trt.ILogger`` that keeps the errors (``.errors``) for one-line messages; with ``forward``
    it also passes every message to logging (errors as errors, the rest at debug level)."""

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            error = severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR)
            if error:
                self.errors.append(msg)
            if forward:
                log.log(logging.ERROR if error else logging.DEBUG, "%s: %s", trt.__name__, msg)

    return _Logger()


def choose_flavour(requested: str, device: int = 0) -> tuple[str | None, str]:
    """Resolve ``--engine`` to a flavour name (or None for no engine) and the reason, which is logged.

    ``auto``: enterprise TensorRT when it imports and a GPU is present, else TensorRT-RTX when it
    imports (no GPU needed), else none. A named flavour that cannot build raises
    :class:`TensorRTUnavailable`; ``none`` gives (None, ...)."""
    if requested == "none":
        return None, "--engine none"
    if requested != "auto":
        ok, why = can_build(requested, device)
        if not ok:
            raise TensorRTUnavailable(f"--engine {requested}: {why}")
        return requested, why
    reasons = []
    for name in (TENSORRT.name, TENSORRT_RTX.name):
        ok, why = can_build(name, device)
        if ok:
            return name, f"--engine auto -> {name}: {why}" + (f" ({reasons[0]})" if reasons else "")
        reasons.append(why)
    return None, "--engine auto -> no engine: " + "; ".join(reasons) + (
        ". `pip install 'rsvl[tensorrt-rtx]'` builds engines on any machine")


__all__ = [
    "ENGINE_CHOICES",
    "FLAVOURS",
    "TENSORRT",
    "TENSORRT_RTX",
    "Flavour",
    "TensorRTUnavailable",
    "can_build",
    "choose_flavour",
    "error_logger",
    "flavour",
    "import_flavour",
    "installed_version",
]
