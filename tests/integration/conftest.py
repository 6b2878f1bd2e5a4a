"""Session fixtures for the end-to-end tests: real exported bundles of the tiny models.

The bundles are exported once per session at small tiles (64 px) so the whole path —
registry model -> ONNX (+FP16) -> parity -> bundle -> runtime — runs in CI in about a minute.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def referring_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cadformer-tiny (random decoder weights), 64 px tiles, FP32 graphs only."""
    from rsvl_export.pipeline import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "cadformer-tiny-64"
    return export_bundle(ExportOptions(model="cadformer-tiny", tile=64, precision="fp32", engine="none",
                                       max_batch=4, parity_batches=(1, 2), parity_vocabs=(2, 3),
                                       include_weights=False, out=str(out)))


@pytest.fixture(scope="session")
def scene(tmp_path_factory: pytest.TempPathFactory):
    """A 200x170 co-registered scene with a nodata corner (not a multiple of the tile)."""
    from rsvl_train.data.synthetic import write_scene

    return write_scene(tmp_path_factory.mktemp("iscene"), 200, 170, seed=5, nodata_fraction=0.1)
