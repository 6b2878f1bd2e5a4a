"""Shared fixtures: small synthetic scenes, dataset folders and one exported tiny bundle,
written once per session."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rsvl_train.data.synthetic import (
    DEFAULT_PREPROCESS,
    SceneFiles,
    make_referring_dataset,
    make_tile_dataset,
    write_scene,
)


@pytest.fixture(scope="session")
def synthetic_scene(tmp_path_factory: pytest.TempPathFactory) -> SceneFiles:
    """A 256x256 optical/SAR/label GeoTIFF scene (seed 0, EPSG:32633, 10 m, no nodata)."""
    return write_scene(tmp_path_factory.mktemp("scene"), 256, 256, seed=0)


@pytest.fixture(scope="session")
def synthetic_scene_nodata(tmp_path_factory: pytest.TempPathFactory) -> SceneFiles:
    """A 300x200 scene (seed 1) with a nodata corner (10 %), uint16 optical, linear SAR."""
    return write_scene(
        tmp_path_factory.mktemp("scene_nodata"), 300, 200, seed=1, nodata_fraction=0.1,
        optical_dtype="uint16", sar_units="linear", block=128,
    )


@pytest.fixture(scope="session")
def tile_dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """YESeg-OPT-SAR-like folder: train (8 tiles), val (4), test (4) of 64x64."""
    root = tmp_path_factory.mktemp("tiles")
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        make_tile_dataset(root, n, tile=64, seed=0, split=split)
    return root


@pytest.fixture(scope="session")
def referring_dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RRSIS-D-like folder with 10 images of 96x96 (train/val/test = 8/1/1 images)."""
    return make_referring_dataset(tmp_path_factory.mktemp("rrsis"), 10, size=96, seed=0)


@pytest.fixture()
def preprocess() -> dict[str, Any]:
    """A fresh copy of the synthetic data's modality specs (``{"optical": ..., "sar": ...}``)."""
    return copy.deepcopy(DEFAULT_PREPROCESS)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tsmnet-tiny (shipped weights when present) exported at 64 px tiles, FP32 + FP16 graphs, no
    engine: the bundle the runtime, batch, Ray and Triton tests run on (exported once)."""
    from rsvl_export.pipeline import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tsmnet-tiny-64"
    return export_bundle(ExportOptions(model="tsmnet-tiny", tile=64, precision="fp16", engine="none",
                                       max_batch=8, max_vocab=64, parity_batches=(1, 2), parity_vocabs=(3, 20),
                                       out=str(out)))
