"""Data: synthetic scene generator, datasets (optical+SAR+text, referring) and their layouts.

The synthetic generator (:mod:`rsvl_train.data.synthetic`) is torch-free (numpy, rasterio,
Pillow, scipy for the text helpers); the datasets need torch and are imported on first use, so
importing this package or the generator does not import torch.
"""

from __future__ import annotations

from typing import Any

from .synthetic import (
    CLASS_NAMES,
    DEFAULT_PREPROCESS,
    IGNORE_INDEX,
    ReferringExpression,
    SceneFiles,
    SyntheticScene,
    describe_labels,
    make_referring_dataset,
    make_tile_dataset,
    referring_expressions,
    synthetic_tiles,
    write_misregistered_pair,
    write_scene,
    write_scene_job,
)

_DATASET_NAMES = (
    "DatasetError",
    "DatasetNotFoundError",
    "OptSarSegDataset",
    "SWJTUVisionLanguageDataset",
    "RRSISDataset",
    "read_image",
    "random_dihedral",
)

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_PREPROCESS",
    "IGNORE_INDEX",
    "DatasetError",
    "DatasetNotFoundError",
    "OptSarSegDataset",
    "RRSISDataset",
    "ReferringExpression",
    "SWJTUVisionLanguageDataset",
    "SceneFiles",
    "SyntheticScene",
    "describe_labels",
    "make_referring_dataset",
    "make_tile_dataset",
    "random_dihedral",
    "read_image",
    "referring_expressions",
    "synthetic_tiles",
    "write_misregistered_pair",
    "write_scene",
    "write_scene_job",
]


def __getattr__(name: str) -> Any:
    if name in _DATASET_NAMES:
        from . import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
