"""Dataset layouts behind ``rsvl-train --data``: parse the spec, recognise a folder, open the splits.

``--data`` takes ``synthetic`` / ``synthetic-referring``, ``KIND:PATH`` or a bare ``PATH``
(the kind is then recognised from the folder when exactly one layout fits). Kinds and the
layouts each accepts (first match wins within a kind):

=========  ==========  ==================================================================
kind       layout      what the folder holds (reader)
=========  ==========  ==================================================================
yeseg      mgfnet      ``OPT/``, ``SAR/``, ``label/``, ``train.txt`` (:class:`.yeseg.YESegDataset`)
yeseg      rsvl        ``{train,val}/{opt,sar,lbl}/`` (synthetic; :class:`.datasets.OptSarSegDataset`)
swjtu      tsmnet      ``img_optical_sar/{split}/`` 4-band tiles (:class:`.swjtu.TSMNetSWJTUDataset`)
swjtu      regions     ``optical/REGION/``, ``sar/REGION/``, ``label/REGION/``, ``splits/``
                       (public YESeg / SWJTU-OPT-SAR archives; :class:`.datasets.SWJTUVisionLanguageDataset`)
rrsisd     refer       ``rrsisd/instances.json`` + ``refs(unc).p``, ``images/rrsisd/JPEGImages/``
                       (:class:`.refer.ReferDataset`)
rrsishr    refer       the same with ``rrsishr``
rrsis      json        ``images/``, ``masks/``, ``{split}.json`` (synthetic; :class:`.datasets.RRSISDataset`)
=========  ==========  ==================================================================

``yeseg:`` also accepts the ``regions`` layout (the public YESeg-OPT-SAR archive has it);
``rrsis:`` accepts every referring layout (``json``, RRSIS-D, RRSIS-HR).
A folder that fits no layout of the asked kind is refused in one line naming what was
expected and what is there: ``PATH does not look like YESeg-OPT-SAR: expected ...; found: a, b``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .datasets import DatasetError, DatasetNotFoundError, describe_folder

__all__ = [
    "DATA_KINDS",
    "LAYOUTS",
    "Layout",
    "detect_layout",
    "open_dataset",
    "open_datasets",
    "parse_data_spec",
]

SYNTHETIC_KINDS: tuple[str, ...] = ("synthetic", "synthetic-referring")
#: Kinds that take a folder, in detection order.
DATA_KINDS: tuple[str, ...] = ("yeseg", "swjtu", "rrsisd", "rrsishr", "rrsis")
_KIND_TITLES = {
    "yeseg": "YESeg-OPT-SAR",
    "swjtu": "SWJTU-Vision-Language",
    "rrsisd": "RRSIS-D",
    "rrsishr": "RRSIS-HR",
    "rrsis": "a referring segmentation dataset",
}


def _dirs(root: Path, *names: str) -> bool:
    return all((root / n).is_dir() for n in names)


def _has_split_subfolders(root: Path) -> bool:
    return root.is_dir() and any(_dirs(p, "opt", "lbl") for p in root.iterdir() if p.is_dir())


def _has_regions(root: Path) -> bool:
    return _dirs(root, "optical", "sar", "label") and any(p.is_dir() for p in (root / "label").iterdir())


def _refer_probe(name: str) -> Callable[[Path], bool]:
    def probe(root: Path) -> bool:
        return (root / name / "instances.json").is_file() or (
            root.name == name and (root / "instances.json").is_file()
        )
    return probe


@dataclass(frozen=True)
class Layout:
    """One folder organisation a kind accepts: how to recognise it and what it must contain."""

    kind: str
    name: str
    task: str  # "semantic" | "referring"
    expected: str
    probe: Callable[[Path], bool]


LAYOUTS: tuple[Layout, ...] = (
    Layout("yeseg", "mgfnet", "semantic",
           "OPT/NAME.png, SAR/NAME.png, label/**/NAME.png and train.txt/val.txt (MGFNet loader)",
           lambda r: _dirs(r, "OPT", "SAR", "label") and (r / "train.txt").is_file()),
    Layout("yeseg", "rsvl", "semantic", "{train,val}/{opt,sar,lbl}/NAME.png|tif (rsvl synthetic)",
           _has_split_subfolders),
    Layout("swjtu", "tsmnet", "semantic",
           "img_optical_sar/{train,val}/NAME.tif (R,G,B,SAR) + txt/NAME.txt and ann_dir/{train,val}/NAME.tif (TSMNet)",
           lambda r: (r / "img_optical_sar").is_dir()),
    Layout("swjtu", "regions", "semantic",
           "optical/REGION/NAME.png, sar/REGION/NAME.png, label/REGION/NAME.png and splits/{train,val}.txt "
           "(public archive)", _has_regions),
    Layout("rrsisd", "refer", "referring",
           "rrsisd/refs(unc).p, rrsisd/instances.json and images/rrsisd/JPEGImages/", _refer_probe("rrsisd")),
    Layout("rrsishr", "refer", "referring",
           "rrsishr/refs(unc).p, rrsishr/instances.json and images/rrsishr/JPEGImages/", _refer_probe("rrsishr")),
    Layout("rrsis", "json", "referring", "images/, masks/ and {train,val}.json (rsvl synthetic)",
           lambda r: _dirs(r, "images", "masks") and any(r.glob("*.json"))),
)


def _layouts_for(kind: str) -> list[Layout]:
    out = [lay for lay in LAYOUTS if lay.kind == kind]
    if kind == "yeseg":  # the public YESeg-OPT-SAR archive is organised like SWJTU-OPT-SAR
        out += [lay for lay in LAYOUTS if lay.kind == "swjtu" and lay.name == "regions"]
    if kind == "rrsis":  # any referring layout (the recipes say rrsis:PATH for RRSIS-D and RRSIS-HR)
        out += [lay for lay in LAYOUTS if lay.kind in ("rrsisd", "rrsishr")]
    return out


def parse_data_spec(data: str) -> tuple[str, str | None]:
    """``(kind, path)`` of a ``--data`` value; a bare path gives kind ``"auto"``.

    Raises :class:`ValueError` for an unknown ``KIND:`` prefix or a kind without a path.
    """
    known = ", ".join([*SYNTHETIC_KINDS, *(f"{k}:PATH" for k in DATA_KINDS), "PATH"])
    if data.lower() in SYNTHETIC_KINDS:
        return data.lower(), None
    kind, sep, path = data.partition(":")
    if sep and kind.lower() in DATA_KINDS:
        if not path:
            raise ValueError(f"--data {data!r}: give the dataset folder, e.g. --data {kind.lower()}:/data/{kind.lower()}")
        return kind.lower(), path
    if data.lower() in DATA_KINDS:
        raise ValueError(f"--data {data!r}: give the dataset folder, e.g. --data {data.lower()}:/data/{data.lower()}")
    if sep and re.fullmatch(r"[A-Za-z][\w-]*", kind) and not os.path.exists(data):
        raise ValueError(f"--data {data!r}: unknown dataset kind {kind!r}; use one of {known}")
    if not data:
        raise ValueError(f"--data is empty; use one of {known}")
    return "auto", data


def detect_layout(kind: str, path: str | Path) -> Layout:
    """The layout of ``path`` for ``kind`` (``"auto"``: any kind, when exactly one fits).

    Raises :class:`~rsvl_train.data.datasets.DatasetNotFoundError` (one line) when nothing
    fits or, for ``"auto"``, when layouts of several kinds fit.
    """
    root = Path(path)
    if kind == "auto":
        matched = [lay for lay in LAYOUTS if lay.probe(root)]
        kinds = sorted({lay.kind for lay in matched}, key=DATA_KINDS.index)
        if len(kinds) == 1:
            return matched[0]
        if kinds:
            raise DatasetError(
                f"{root} fits several dataset layouts ({', '.join(f'{lay.kind}: {lay.expected}' for lay in matched)}); "
                f"prefix the kind, e.g. --data {kinds[0]}:{root}"
            )
        expected = "; ".join(f"{k}: " + " or ".join(lay.expected for lay in _layouts_for(k)) for k in DATA_KINDS)
        raise DatasetNotFoundError(
            f"{root} does not look like any dataset rsvl-train reads: expected {expected}; found: {describe_folder(root)}"
        )
    if kind not in DATA_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; use one of {', '.join(DATA_KINDS)}")
    candidates = _layouts_for(kind)
    for lay in candidates:
        if lay.probe(root):
            return lay
    raise DatasetNotFoundError(
        f"{root} does not look like {_KIND_TITLES[kind]}: expected "
        + " or ".join(lay.expected for lay in candidates) + f"; found: {describe_folder(root)}"
    )


def open_dataset(layout: Layout, path: str | Path, split: str, preprocess: Mapping[str, Any],
                 train: bool = False, size: int | None = 480) -> Dataset:
    """One split of ``path`` read as ``layout``; ``train`` switches on augmentation (semantic only).

    ``size`` is the referring output side (``None``: native size); semantic tiles keep theirs.
    """
    from . import datasets

    if layout.kind in ("rrsisd", "rrsishr"):
        from .refer import ReferDataset

        return ReferDataset(path, split, preprocess, dataset=layout.kind, size=size)
    if layout.kind == "rrsis":
        return datasets.RRSISDataset(path, split, preprocess, size=size)
    if layout.name == "mgfnet":
        from .yeseg import YESegDataset

        return YESegDataset(path, split, preprocess, augment=train)
    if layout.name == "tsmnet":
        from .swjtu import TSMNetSWJTUDataset

        return TSMNetSWJTUDataset(path, split, preprocess, augment=train)
    if layout.name == "regions":
        return datasets.SWJTUVisionLanguageDataset(path, split, preprocess, augment=train)
    return datasets.OptSarSegDataset(path, split, preprocess, augment=train)


def open_datasets(kind: str, path: str | Path, preprocess: Mapping[str, Any], task: str = "semantic",
                  size: int | None = 480, classes: Sequence[str] | None = None) -> tuple[Dataset, Dataset]:
    """Train (augmented) and val datasets of ``--data kind:path`` for a model of ``task``.

    ``classes`` (the model config's class names): when the layout has a fixed class list
    (YESeg-OPT-SAR 8, SWJTU 7) and the count differs, the label ids cannot match the model's
    outputs, so it is refused naming both lists.
    """
    layout = detect_layout(kind, path)
    if layout.task != task:
        raise DatasetError(
            f"--data {path}: this is a {layout.task} dataset ({_KIND_TITLES[layout.kind]}) but the model is a {task} "
            f"model; pick a {task} dataset or a {layout.task} model"
        )
    train = open_dataset(layout, path, "train", preprocess, train=True, size=size)
    have = tuple(getattr(train, "classes", ()))
    if classes is not None and have and len(have) != len(classes):
        raise DatasetError(
            f"--data {path}: {_KIND_TITLES[layout.kind]} labels have {len(have)} class ids ({', '.join(have)}) but "
            f"the model config has {len(classes)} classes ({', '.join(classes)}); give the model the dataset's "
            "classes in this order"
        )
    return train, open_dataset(layout, path, "val", preprocess, train=False, size=size)
