"""Logging set-up shared by the command-line tools, and the one-line text of a library error.

- :func:`setup_logging`: our loggers at INFO (DEBUG with ``-v``, WARNING with ``-q``), libraries
  at WARNING; the ``-v/--verbose`` and ``-q/--quiet`` flags every CLI takes come from
  :func:`add_verbosity_arguments`.
- :func:`warnings_to_log`: Python warnings raised while a CLI runs become log records — third-party
  ones (torch/onnx/onnxscript ``UserWarning``, ``DeprecationWarning``, ``TracerWarning`` ...) at
  DEBUG (shown with ``-v``), ours at WARNING.
- :func:`error_text`: a library exception as one readable line (rasterio's "Read failed. See
  previous exception for details." replaced by the GDAL errors it chains, ONNX Runtime's
  ``[ONNXRuntimeError] : 7 : INVALID_PROTOBUF :`` prefix dropped, no trailing period).
"""

from __future__ import annotations

import argparse
import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

OUR_LOGGERS = ("rsvl", "rsvl_train", "rsvl_export", "rsvl_runtime", "benchmarks")
#: Libraries whose warnings are internal chatter for our users (constant-folding attempts).
QUIET_LOGGERS = ("onnxscript", "onnx_ir")
#: The logger third-party Python warnings go to (at DEBUG) while :func:`warnings_to_log` is active.
WARNINGS_LOGGER = "rsvl.warnings"

#: Our package folders: a warning raised from a file inside them is ours (logged at WARNING).
_OUR_DIRS = tuple(str(Path(__file__).resolve().parent.parent / name) for name in OUR_LOGGERS[1:])


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Our loggers at INFO (``verbose``: DEBUG, libraries included; ``quiet``: WARNING)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING)
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)


def add_verbosity_arguments(parser: argparse.ArgumentParser, quiet_help: str | None = None) -> None:
    """``-v/--verbose`` and ``-q/--quiet`` (mutually exclusive; ``args.verbose``, ``args.quiet``)."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, third-party warnings included")
    g.add_argument("-q", "--quiet", action="store_true",
                   help=quiet_help or "only warnings and errors")


def setup_cli_logging(args: argparse.Namespace) -> None:
    """:func:`setup_logging` from the parsed ``-v``/``-q`` flags."""
    setup_logging(verbose=bool(getattr(args, "verbose", False)), quiet=bool(getattr(args, "quiet", False)))


# ----------------------------------------------------------------------------- warnings
def _is_ours(filename: str) -> bool:
    try:
        path = str(Path(filename).resolve())
    except (OSError, ValueError):
        return False
    return path.startswith(_OUR_DIRS)


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    text = f"{category.__name__}: {message} ({Path(filename).name}:{lineno})"
    if _is_ours(filename):
        logging.getLogger("rsvl").warning("warning: %s", message)
    else:
        logging.getLogger(WARNINGS_LOGGER).debug("%s", text)


@contextmanager
def warnings_to_log() -> Iterator[None]:
    """Within the block, Python warnings are log records instead of stderr text: third-party
    ones at DEBUG on :data:`WARNINGS_LOGGER` (seen with ``-v``), ours at WARNING. Each warning is
    recorded once per place it comes from (Python's ``default`` action)."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _log_warning
        yield


# ----------------------------------------------------------------------------- error texts
#: rasterio's placeholder for "the real error is the chained GDAL one".
_PLACEHOLDER = re.compile(r"\s*(?:(?:Read|Write) failed\.\s*)?See previous exception for details\.?")
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*[A-Z_]+\s*:\s*")


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _one_line(text: str) -> str:
    return " ".join(str(text).split()).rstrip(". ")


def error_text(e: BaseException) -> str:
    """``e`` as one line without library boilerplate and without a trailing period.

    rasterio's ``Read failed. See previous exception for details.`` becomes the GDAL errors it
    chains (first and innermost: ``band 1: IReadBlock failed ... (ZIPDecode:Decoding error at
    scanline 192)``); an exception with no text is named by its type.
    """
    text = _one_line(_ORT_PREFIX.sub("", str(e)))
    if _PLACEHOLDER.search(text):
        causes = [_one_line(str(c)) for c in _chain(e)[1:] if str(c).strip() and not _PLACEHOLDER.search(str(c))]
        detail = causes[0] if causes else "the GDAL driver reported an error"
        if len(causes) > 1 and causes[-1] not in detail:
            detail += f" ({causes[-1]})"
        text = _one_line(_PLACEHOLDER.sub(" " + detail, text).strip())
    return text or type(e).__name__


def clean_message(e: BaseException) -> str:
    """The one-line message of an error of ours that may embed a library's text: each place it
    quotes rasterio's "See previous exception for details." gets the chained GDAL errors instead,
    and doubled periods (``"...details.. The file"``) are collapsed."""
    text = " ".join(str(e).split())
    if _PLACEHOLDER.search(text):
        inner = next((c for c in _chain(e)[1:] if _PLACEHOLDER.search(str(c))), None)
        replacement = error_text(inner) if inner is not None else "the GDAL driver reported an error"
        text = _PLACEHOLDER.sub(lambda _m: " " + replacement, text, count=1)
        text = _PLACEHOLDER.sub("", text)
    text = re.sub(r"\.\.(?=\s|$)", ".", text)
    return text.strip() or type(e).__name__


__all__ = ["OUR_LOGGERS", "QUIET_LOGGERS", "WARNINGS_LOGGER", "add_verbosity_arguments", "clean_message",
           "error_text", "setup_cli_logging", "setup_logging", "warnings_to_log"]
