"""Logging set-up shared by the command-line tools: our loggers at INFO, libraries at WARNING."""

from __future__ import annotations

import logging

OUR_LOGGERS = ("rsvl", "rsvl_train", "rsvl_export", "rsvl_runtime", "benchmarks")
#: Libraries whose warnings are internal chatter for our users (constant-folding attempts).
QUIET_LOGGERS = ("onnxscript", "onnx_ir")


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(level)
    if not verbose:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
