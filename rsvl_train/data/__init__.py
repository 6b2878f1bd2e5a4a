"""Data: synthetic scene generator, datasets (optical+SAR+text, referring) and their layouts.

Modules: :mod:`.datasets` (readers of the rsvl layouts, shared item loading),
:mod:`.yeseg` (YESeg-OPT-SAR, official MGFNet layout), :mod:`.swjtu` (SWJTU-Vision-Language,
TSMNet layout), :mod:`.refer` (RRSIS-D / RRSIS-HR, RefCOCO format), :mod:`.coco_masks`
(polygon / RLE decoding, torch-free), :mod:`.layouts` (``--data`` parsing and layout detection).

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

#: Lazily imported names (they need torch) -> the module that defines them.
_LAZY: dict[str, str] = {
    **{n: "datasets" for n in ("DatasetError", "DatasetNotFoundError", "OptSarSegDataset",
                               "SWJTUVisionLanguageDataset", "RRSISDataset", "read_image", "random_dihedral")},
    "YESegDataset": "yeseg",
    "YESEG_CLASSES": "yeseg",
    "TSMNetSWJTUDataset": "swjtu",
    "SWJTU_CLASSES": "swjtu",
    "ReferDataset": "refer",
    "max_expression_tokens": "refer",
    "detect_layout": "layouts",
    "open_datasets": "layouts",
    "parse_data_spec": "layouts",
}

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_PREPROCESS",
    "IGNORE_INDEX",
    "SWJTU_CLASSES",
    "YESEG_CLASSES",
    "DatasetError",
    "DatasetNotFoundError",
    "OptSarSegDataset",
    "RRSISDataset",
    "ReferDataset",
    "ReferringExpression",
    "SWJTUVisionLanguageDataset",
    "SceneFiles",
    "SyntheticScene",
    "TSMNetSWJTUDataset",
    "YESegDataset",
    "describe_labels",
    "detect_layout",
    "make_referring_dataset",
    "make_tile_dataset",
    "max_expression_tokens",
    "open_datasets",
    "parse_data_spec",
    "random_dihedral",
    "read_image",
    "referring_expressions",
    "synthetic_tiles",
    "write_misregistered_pair",
    "write_scene",
    "write_scene_job",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module == "datasets":
        from . import datasets as mod
    elif module == "yeseg":
        from . import yeseg as mod
    elif module == "swjtu":
        from . import swjtu as mod
    elif module == "refer":
        from . import refer as mod
    elif module == "layouts":
        from . import layouts as mod
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(mod, name)
