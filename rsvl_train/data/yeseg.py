"""YESeg-OPT-SAR in the layout of its official loader (MGFNet), with TSMNet's scene descriptions.

Matched to yeyuanxin110/YESeg-OPT-SAR ``code/MGFNet/scripts/datasets/YESeg_OPT_SAR.py``
(class ``YESeg``) and ``code/MGFNet/tools/dataset_split*.py`` (which write the split lists)::

    root/OPT/NAME.png            optical RGB (uint8)
    root/SAR/NAME.png            SAR (8-bit grey; a grey PNG saved as RGB is read as one band)
    root/label/**/NAME.png       class ids 0..7 (searched recursively, as ``rglob('*.png')``)
    root/train.txt, root/val.txt one file name per line ("NAME.png"), the same name in OPT/ and SAR/
    root/OPT/txt/NAME.txt        optional scene description (TSMNet's convention, see below)

Label encoding: one band of ids, ``CLASSES`` order below, 255 = ignore (``ignore_label``);
only the ``train`` and ``val`` splits exist (the official loader asserts it).

Deviations from the official loader, on purpose:

- labels are matched by exact stem; the official ``x.stem.startswith(img_name)`` also picks
  ``10.png``, ``11.png``... for ``1.png`` and sums them. Several label files with the *same*
  stem (in different sub-folders of ``label/``) are merged as the official ``read_label``
  does: the first file (sorted path order here, file-system order there) wins where it is
  non-zero, later files fill the pixels still 0.
- scene descriptions: MGFNet has none. TSMNet (yeyuanxin110/TSMNet
  ``segmentation/TSMNet/TSMNet.py``, ``forward_train``) reads ``<image folder>/txt/NAME.txt``
  next to each image, so a description for ``OPT/NAME.png`` is ``OPT/txt/NAME.txt`` (empty
  string when absent).

The public archive itself (``optical/REGION/``, ``sar/REGION/``, ``label/REGION/``, no split
lists; README of yeyuanxin110/YESeg-OPT-SAR) is read by
:class:`~rsvl_train.data.datasets.SWJTUVisionLanguageDataset` with
``dirs={"description": "text"}`` and split lists ``splits/{split}.txt``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .datasets import (
    DatasetError,
    DatasetNotFoundError,
    _OptSarBase,
    _short_list,
    read_label_file,
)

__all__ = ["YESEG_CLASSES", "YESegDataset"]

#: Class order of the official loader (``YESeg.CLASSES``); the README names 2 "low vegetation"
#: and 4 "houses".
YESEG_CLASSES: tuple[str, ...] = (
    "background", "bare ground", "vegetation", "trees", "house", "water", "roads", "other",
)
YESEG_SPLITS: tuple[str, ...] = ("train", "val")


class YESegDataset(_OptSarBase):
    """YESeg-OPT-SAR as the official MGFNet loader reads it (module docstring).

    Args:
        root: the folder holding ``OPT/``, ``SAR/``, ``label/`` and ``train.txt`` / ``val.txt``.
        split: ``"train"`` or ``"val"`` (any other name needs ``root/{split}.txt``).
        preprocess, modalities, augment, dirs: as :class:`~rsvl_train.data.datasets.OptSarSegDataset`.

    Items are named by the stem of the split-list entry.
    """

    name = "YESeg-OPT-SAR"
    classes = YESEG_CLASSES
    dirs = {"optical": "OPT", "sar": "SAR", "label": "label", "description": "txt"}  # noqa: RUF012

    def layout_help(self) -> str:
        d = self.dirs
        return (
            f"  root/{d['optical']}/NAME.png   (optical RGB)\n"
            f"  root/{d['sar']}/NAME.png   (SAR)\n"
            f"  root/{d['label']}/**/NAME.png   (class ids 0..7, 255 = ignore)\n"
            "  root/train.txt, root/val.txt   (one NAME.png per line)\n"
            f"  root/{d['optical']}/{d['description']}/NAME.txt   (optional description)"
        )

    def _index(self) -> list[tuple[str, dict[str, Path | None]]]:
        cls = type(self).__name__
        split_file = self.root / f"{self.split}.txt"
        if not split_file.is_file():
            have = sorted(p.stem for p in self.root.glob("*.txt"))
            raise DatasetNotFoundError(
                f"{cls}: split={self.split!r} has no split list {str(split_file)!r} (available: {have or 'none'}). "
                "The official tools (code/MGFNet/tools/dataset_split.py) write train.txt and val.txt with one "
                "label file name per line"
            )
        entries = [ln.strip() for ln in split_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        label_dir = self.root / self.dirs["label"]
        if not label_dir.is_dir():
            raise DatasetNotFoundError(f"{cls}: the label folder {str(label_dir)!r} does not exist. Expected:\n"
                                       f"{self.layout_help()}")
        labels: dict[str, list[Path]] = {}
        for p in sorted(label_dir.rglob("*")):
            if p.is_file() and p.suffix.lower() in (".png", ".tif", ".tiff"):
                labels.setdefault(p.stem, []).append(p)
        self._label_parts = labels
        desc_dir = self.root / self.dirs["optical"] / self.dirs["description"]
        samples: list[tuple[str, dict[str, Path | None]]] = []
        missing: list[str] = []
        for entry in entries:
            stem = entry.split(".")[0]  # as the official loader: f.split('.')[0]
            paths: dict[str, Path | None] = {
                m: self.root / self.dirs[m] / entry for m in self.modalities
            }
            missing += [str(p.relative_to(self.root)) for p in paths.values() if p is not None and not p.is_file()]
            if stem not in labels:
                missing.append(f"{self.dirs['label']}/**/{stem}.png")
                continue
            paths["label"] = labels[stem][0]
            paths["description"] = desc_dir / f"{stem}.txt"
            samples.append((stem, paths))
        if missing:
            raise DatasetError(
                f"{cls}: split list {str(split_file)!r} names {len(missing)} files that are not under "
                f"root={str(self.root)!r}: {_short_list(missing)}. Add them or remove their lines from the split list"
            )
        return samples

    def _read_label(self, name: str, paths: Mapping[str, Path | None]) -> np.ndarray:
        parts = self._label_parts.get(name) or [paths["label"]]
        merged: np.ndarray | None = None
        for p in parts:
            assert p is not None
            lab = read_label_file(p, f"one band of class ids 0..{len(YESEG_CLASSES) - 1} (YESeg-OPT-SAR labels)")
            if merged is None:
                merged = lab
            else:
                if lab.shape != merged.shape:
                    raise DatasetError(f"label parts {[str(q) for q in parts]} differ in size")
                empty = merged == 0
                merged[empty] = lab[empty]
        assert merged is not None
        return merged
