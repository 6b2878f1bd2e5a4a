"""SWJTU-Vision-Language in the layout TSMNet trains on (mmseg ``CustomDataset``, stacked 4-band tiles).

Matched to yeyuanxin110/TSMNet: ``swjtu.py`` (``SWJTUDataset``: classes, ``.tif`` images and
maps, ``reduce_zero_label=False``), ``segmentation/configs/_base_/datasets/SWJTU_clip.py``
(4-band normalisation, ``imdecode_backend='tifffile'``, ``seg_pad_val=255``),
``segmentation/calculate_mean_std.py`` (``data/SWJTU/img_optical_sar/val/1_1.tif``) and
``segmentation/TSMNet/TSMNet.py`` (``forward_train``: bands 0-2 optical, band 3 SAR; the scene
description of ``<dir>/NAME.tif`` is ``<dir>/txt/NAME.txt``; ``gt == 7`` is set to 0)::

    root/img_optical_sar/{split}/NAME.tif       4 bands: R, G, B, SAR
    root/img_optical_sar/{split}/txt/NAME.txt   scene description (one text per tile)
    root/ann_dir/{split}/NAME.tif               class ids 0..6 (7 = "other" -> 0), 255 = ignore

Unverified (the annotation folder name never appears in the repository: its config uses
``suiji800/img_optical_sar800`` + ``suiji800/ann800`` for train and ``..1912`` for val): the
annotation folder is ``ann_dir/{split}`` (mmseg's convention) or ``ann/{split}``; pass
``img_dir=`` / ``ann_dir=`` templates (``{split}`` is substituted) for other names, e.g.
``img_dir="suiji800/img_optical_sar800", ann_dir="suiji800/ann800"``.

The public SWJTU-OPT-SAR archive (separate ``optical/``, ``sar/``, ``label/`` folders with one
sub-folder per region) is :class:`~rsvl_train.data.datasets.SWJTUVisionLanguageDataset`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from .datasets import DatasetError, DatasetNotFoundError, _OptSarBase, read_image

__all__ = ["SWJTU_ANN_DIRS", "SWJTU_CLASSES", "TSMNetSWJTUDataset"]

#: ``SWJTUDataset.CLASSES`` of yeyuanxin110/TSMNet ``swjtu.py`` (ids 0..6).
SWJTU_CLASSES: tuple[str, ...] = (
    "background", "bareland", "low vegetation", "trees", "houses", "water", "roads",
)
SWJTU_IMG_DIR = "img_optical_sar/{split}"
#: Annotation folder templates tried in order (unverified, see the module docstring).
SWJTU_ANN_DIRS: tuple[str, ...] = ("ann_dir/{split}", "ann/{split}")


class TSMNetSWJTUDataset(_OptSarBase):
    """Stacked optical+SAR tiles with id labels and per-tile descriptions (module docstring).

    Args:
        root: dataset root (``data/SWJTU`` in the TSMNet config).
        split: sub-folder name (``train``, ``val``, ``test``).
        preprocess, modalities, augment: as :class:`~rsvl_train.data.datasets.OptSarSegDataset`.
        img_dir, ann_dir: folder templates relative to ``root``; ``{split}`` is replaced.
    """

    name = "SWJTU-Vision-Language (TSMNet)"
    classes = SWJTU_CLASSES
    label_map = MappingProxyType({7: 0})  # TSMNet.forward_train: gt_semantic_seg[gt_semantic_seg == 7] = 0
    dirs = {"description": "txt"}  # noqa: RUF012 - overridden per instance by the base class

    def __init__(
        self,
        root: str | Path,
        split: str,
        preprocess: Mapping[str, Mapping[str, Any]],
        modalities: Sequence[str] = ("optical", "sar"),
        augment: bool = False,
        img_dir: str = SWJTU_IMG_DIR,
        ann_dir: str | None = None,
    ) -> None:
        self.img_dir = img_dir
        self.ann_dir = ann_dir
        super().__init__(root, split, preprocess, modalities=modalities, augment=augment)

    def _folders(self) -> tuple[Path, Path | None]:
        img = self.root / self.img_dir.format(split=self.split)
        templates = (self.ann_dir,) if self.ann_dir else SWJTU_ANN_DIRS
        for t in templates:
            ann = self.root / t.format(split=self.split)
            if ann.is_dir():
                return img, ann
        return img, None

    def layout_help(self) -> str:
        img = self.img_dir.format(split="{split}")
        ann = self.ann_dir or " | ".join(SWJTU_ANN_DIRS)
        return (
            f"  root/{img}/NAME.tif   (4 bands: R, G, B, SAR)\n"
            f"  root/{img}/txt/NAME.txt   (scene description)\n"
            f"  root/{ann}/NAME.tif   (class ids 0..6, 255 = ignore)"
        )

    def _index(self) -> list[tuple[str, dict[str, Path | None]]]:
        cls = type(self).__name__
        img, ann = self._folders()
        if not img.is_dir() or ann is None:
            where = img if not img.is_dir() else self.root / (self.ann_dir or SWJTU_ANN_DIRS[0]).format(split=self.split)
            raise DatasetNotFoundError(
                f"{cls}: split={self.split!r}: the folder {str(where)!r} does not exist. Expected:\n"
                f"{self.layout_help()}\nPass an existing split, or img_dir=/ann_dir= templates for other folder names"
            )
        images = {p.stem: p for p in sorted(img.glob("*.tif"))}
        labels = {p.stem: p for p in sorted(ann.glob("*.tif"))}
        only_img = sorted(set(images) - set(labels))
        only_ann = sorted(set(labels) - set(images))
        if only_img or only_ann:
            raise DatasetError(
                f"{cls}: {str(img)!r} and {str(ann)!r} do not match: {len(only_img)} images without a label "
                f"({', '.join(only_img[:5])}), {len(only_ann)} labels without an image ({', '.join(only_ann[:5])}). "
                "Every NAME.tif needs both"
            )
        txt = img / self.dirs["description"]
        return [
            (n, {"stack": images[n], "label": labels[n], "description": txt / f"{n}.txt"})
            for n in sorted(images)
        ]

    def _read_modalities(self, name: str, paths: Mapping[str, Path | None]
                         ) -> dict[str, tuple[np.ndarray, np.ndarray | None, Path]]:
        p = paths["stack"]
        assert p is not None
        data, nd = read_image(p)
        if data.shape[0] != 4:
            raise DatasetError(
                f"image {str(p)!r} has {data.shape[0]} bands; TSMNet's SWJTU tiles stack 4 bands "
                "(R, G, B, SAR) in one .tif"
            )
        split = {"optical": data[:3], "sar": data[3:4]}
        return {m: (split[m], nd, p) for m in self.modalities}
