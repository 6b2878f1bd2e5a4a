"""The Triton Python-backend model (:mod:`rsvl_export.triton_model.model`) that
:func:`rsvl_export.triton.write_triton_repository` copies to ``REPO/NAME/1/model.py``."""

from __future__ import annotations

from importlib.resources import files

MODEL_FILE = "model.py"


def model_source() -> bytes:
    """The bytes of ``model.py`` as shipped in this package (read as package data)."""
    return files(__name__).joinpath(MODEL_FILE).read_bytes()
