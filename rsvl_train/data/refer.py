"""RefCOCO-format referring segmentation: RRSIS-D and RRSIS-HR as their reference loaders read them.

Matched to Lsan2401/RMSIN ``refer/refer.py`` + ``data/dataset_refer_bert.py`` and its README
("Datasets"), and zxk688/CADFormer ``refer/refer.py`` (which adds ``rrsishr``) +
``data/dataset_refer_bert.py`` + ``args.py`` (``--refer_data_root ./refer/data/``,
``--dataset rrsisd``, ``--splitBy unc``)::

    data_root/rrsisd/refs(unc).p            refs: list of {ref_id, ann_id, image_id, category_id,
                                            split, sentences: [{raw, sent, sent_id, tokens}], sent_ids}
    data_root/rrsisd/instances.json         COCO: images [{id, file_name, height, width}],
                                            annotations [{id, image_id, category_id, segmentation, bbox}],
                                            categories [{id, name}]
    data_root/images/rrsisd/JPEGImages/     file_name of every image
    (RRSIS-HR: the same with ``rrsishr``)

``root`` may be ``data_root`` or ``data_root/<dataset>``. ``refs(<split_by>).json`` (the same
list as JSON) is read when there is no pickle. The pickle is read with an unpickler that builds
plain lists / dicts / strings / numbers only and refuses anything else (a refs file needs no
classes), so a hostile file cannot run code.

Splits as ``REFER.getRefIds(split=...)``: ``train`` / ``val`` match exactly, ``test`` is every
ref whose split contains "test", ``testA``/``testB``/``testC`` contain that letter.

Items follow :class:`~rsvl_train.data.datasets.RRSISDataset`: ``dict(image=Float[3,S,S],
mask=Long[S,S] in {0,1}, expression=str, name=str, ref_id=int, sent_id=int)``. As in the
reference ``ReferDataset`` the training split yields one item per ref with a random sentence
(``sentences="random"``); other splits yield every sentence (``"all"``), the test protocol.
Masks: ``REFER.getMask`` (:func:`~rsvl_train.data.coco_masks.decode_segmentation`). Not
reproduced: CADFormer's training-only augmentation that blacks out 20-60 random 32x32 boxes
in 20 % of the training refs (``add_random_boxes``), and the 20-token truncation
(``max_tokens = 20``): tokenisation belongs to the model (:func:`max_expression_tokens` tells
what length covers every expression).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from rsvl_runtime.normalization import normalize_optical

from .coco_masks import SegmentationFormatError, decode_segmentation
from .datasets import (
    DatasetError,
    DatasetNotFoundError,
    _short_list,
    describe_folder,
    referring_image,
    resize_square,
)

__all__ = ["REFER_DATASETS", "ReferDataset", "find_refs_file", "load_refs", "max_expression_tokens"]

#: Dataset name -> image folder under ``data_root`` (``REFER.__init__``, IMAGE_DIR).
REFER_DATASETS: dict[str, str] = {
    "rrsisd": "images/rrsisd/JPEGImages",
    "rrsishr": "images/rrsishr/JPEGImages",
}


class _PlainUnpickler(pickle.Unpickler):
    """Builds only built-in containers and scalars; any class reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise DatasetError(
            f"the refs pickle references {module}.{name}; a RefCOCO refs file holds only lists, dicts, strings "
            "and numbers, so it is refused (re-export it with pickle of plain data, or as refs(...).json)"
        )


def find_refs_file(folder: Path, split_by: str | None) -> Path:
    """``folder/refs(<split_by>).p`` (or ``.json``); with ``split_by=None`` the only refs file there."""
    if split_by is not None:
        for ext in (".p", ".json"):
            p = folder / f"refs({split_by}){ext}"
            if p.is_file():
                return p
        have = sorted(p.name for p in folder.glob("refs(*)*"))
        raise DatasetNotFoundError(
            f"refs file {str(folder / f'refs({split_by}).p')!r} does not exist (found: {have or 'none'}); "
            "pass the split_by of one of them"
        )
    found = sorted(folder.glob("refs(*).p")) or sorted(folder.glob("refs(*).json"))
    if len(found) != 1:
        raise DatasetNotFoundError(
            f"{str(folder)!r} has {len(found)} refs files ({[p.name for p in found]}); expected one "
            "refs(unc).p, or pass split_by"
        )
    return found[0]


def load_refs(path: Path) -> list[dict[str, Any]]:
    """The refs list of a ``refs(*).p`` pickle (plain data only) or ``refs(*).json``."""
    try:
        if path.suffix == ".json":
            refs = json.loads(path.read_text(encoding="utf-8"))
        else:
            with open(path, "rb") as f:
                refs = _PlainUnpickler(f, encoding="utf-8").load()
    except DatasetError:
        raise
    except Exception as e:  # pickle / json raise many types for corrupt files
        raise DatasetError(f"could not read the refs file {str(path)!r}: {type(e).__name__}: {e}") from e
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DatasetError(f"refs file {str(path)!r} must hold a list of ref dicts, got {type(refs).__name__}")
    return refs


def _split_matches(ref_split: str, split: str) -> bool:
    """``REFER.getRefIds`` split filter."""
    if split in ("testA", "testB", "testC"):
        return split[-1] in ref_split
    if split in ("testAB", "testBC", "testAC"):
        return ref_split == split
    if split == "test":
        return "test" in ref_split
    return ref_split == split


class ReferDataset(Dataset):
    """RRSIS-D / RRSIS-HR (RefCOCO format) referring segmentation (module docstring).

    Args:
        root: ``data_root`` (holding ``<dataset>/`` and ``images/<dataset>/JPEGImages``) or
            ``data_root/<dataset>``.
        split: ``train``, ``val``, ``test`` (or ``testA``...).
        preprocess: the optical modality spec, or a dict with an ``"optical"`` spec.
        dataset: ``"rrsisd"`` or ``"rrsishr"``.
        split_by: the refs file ``refs(<split_by>).p``; ``None`` takes the only one present
            (RRSIS-D ships ``refs(unc).p``).
        size: output side length (bilinear image, nearest mask); ``None`` keeps the native size.
        sentences: ``"random"`` (one item per ref, random sentence), ``"all"`` (one item per
            sentence) or ``"auto"`` (random for ``train``, all otherwise).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        preprocess: Mapping[str, Any],
        dataset: str = "rrsisd",
        split_by: str | None = None,
        size: int | None = 480,
        sentences: Literal["auto", "random", "all"] = "auto",
    ) -> None:
        if dataset not in REFER_DATASETS:
            raise DatasetError(f"ReferDataset: dataset={dataset!r} is unknown; use one of {sorted(REFER_DATASETS)}")
        self.dataset = dataset
        self.split = split
        self.size = size
        spec = preprocess["optical"] if isinstance(preprocess, Mapping) and "optical" in preprocess else preprocess
        if not isinstance(spec, Mapping) or "mean" not in spec or "std" not in spec:
            raise DatasetError(
                f"ReferDataset: preprocess={preprocess!r} is not an optical modality spec; pass "
                "{'scale': 255, 'mean': [r, g, b], 'std': [r, g, b]} or {'optical': {...}}"
            )
        self.spec = spec
        self.data_root = self._data_root(Path(root))
        ann_dir = self.data_root / dataset
        self.image_dir = self.data_root / REFER_DATASETS[dataset]
        self.refs_file = find_refs_file(ann_dir, split_by)
        refs = load_refs(self.refs_file)
        inst_path = ann_dir / "instances.json"
        try:
            instances = json.loads(inst_path.read_text(encoding="utf-8"))
            self.images: dict[int, dict[str, Any]] = {im["id"]: im for im in instances["images"]}
            self.anns: dict[int, dict[str, Any]] = {a["id"]: a for a in instances["annotations"]}
            self.categories: dict[int, str] = {c["id"]: c["name"] for c in instances.get("categories", [])}
        except FileNotFoundError as e:
            raise DatasetNotFoundError(f"ReferDataset: {str(inst_path)!r} does not exist; {self.layout_help()}") from e
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DatasetError(
                f"ReferDataset: {str(inst_path)!r} is not a COCO instances file ({type(e).__name__}: {e}); it needs "
                "'images' [{id, file_name, height, width}] and 'annotations' [{id, image_id, segmentation}]"
            ) from e
        self.refs = [r for r in refs if _split_matches(str(r.get("split", "")), split)]
        if not self.refs:
            have = sorted({str(r.get("split")) for r in refs})
            raise DatasetNotFoundError(
                f"ReferDataset: split={split!r} has no refs in {str(self.refs_file)!r} (splits there: {have})"
            )
        self._check_refs()
        mode = ("random" if split == "train" else "all") if sentences == "auto" else sentences
        if mode not in ("random", "all"):
            raise DatasetError(f"ReferDataset: sentences={sentences!r}; use 'auto', 'random' or 'all'")
        self.sentences = mode
        #: (ref index, sentence index or -1 for a random one)
        self.items: list[tuple[int, int]] = (
            [(i, -1) for i in range(len(self.refs))] if mode == "random"
            else [(i, j) for i, r in enumerate(self.refs) for j in range(len(r["sentences"]))]
        )

    def layout_help(self) -> str:
        d = self.dataset
        return (f"expected data_root/{d}/refs(unc).p (or .json), data_root/{d}/instances.json and "
                f"data_root/{REFER_DATASETS[d]}/<file_name>")

    def _data_root(self, root: Path) -> Path:
        if (root / self.dataset).is_dir():
            return root
        if root.name == self.dataset and (root / "instances.json").is_file():
            return root.parent
        raise DatasetNotFoundError(
            f"ReferDataset: root={str(root)!r} does not look like {self.dataset}: {self.layout_help()}; "
            f"found: {describe_folder(root)}"
        )

    def _check_refs(self) -> None:
        problems: list[str] = []
        missing_files: set[str] = set()
        for r in self.refs:
            if not {"ref_id", "ann_id", "image_id", "sentences"} <= set(r):
                problems.append(f"ref {r.get('ref_id', '?')} lacks ref_id/ann_id/image_id/sentences")
            elif r["ann_id"] not in self.anns or r["image_id"] not in self.images:
                problems.append(f"ref {r['ref_id']} points to ann {r['ann_id']} / image {r['image_id']} not in "
                                "instances.json")
            elif not r["sentences"]:
                problems.append(f"ref {r['ref_id']} has no sentences")
            else:
                name = self.images[r["image_id"]]["file_name"]
                if not (self.image_dir / name).is_file():
                    missing_files.add(name)
        if missing_files:
            problems.append(f"{len(missing_files)} images missing in {str(self.image_dir)!r}: "
                            f"{_short_list(sorted(missing_files))}")
        if problems:
            raise DatasetError(f"ReferDataset: {str(self.refs_file)!r}: " + "; ".join(problems[:5])
                               + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))

    def expressions(self) -> list[str]:
        """Every raw sentence of this split (all sentences of every ref)."""
        return [str(s.get("raw", s.get("sent", ""))) for r in self.refs for s in r["sentences"]]

    def mask(self, ref: Mapping[str, Any]) -> np.ndarray:
        """The ``uint8`` 0/1 mask of a ref at the image's native size (``REFER.getMask``)."""
        ann = self.anns[ref["ann_id"]]
        im = self.images[ref["image_id"]]
        try:
            return decode_segmentation(ann["segmentation"], int(im["height"]), int(im["width"]))
        except (SegmentationFormatError, KeyError) as e:
            raise DatasetError(f"ReferDataset: annotation {ann.get('id')} of ref {ref['ref_id']} in "
                               f"{str(self.data_root / self.dataset / 'instances.json')!r}: {e}") from e

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i, j = self.items[index]
        ref = self.refs[i]
        if j < 0:
            j = int(torch.randint(0, len(ref["sentences"]), (1,)))
        sent = ref["sentences"][j]
        im = self.images[ref["image_id"]]
        path = self.image_dir / im["file_name"]
        img = referring_image(path)
        m = self.mask(ref)
        if img.shape[1:] != m.shape:
            raise DatasetError(f"image {str(path)!r} is {img.shape[1:]} but instances.json says "
                               f"{list(m.shape)} (height, width)")
        x = normalize_optical(resize_square(img.astype(np.float32), self.size, nearest=False), self.spec)
        mk = (resize_square(m[None].astype(np.float32), self.size, nearest=True)[0] > 0.5).astype(np.int64)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(x)),
            "mask": torch.from_numpy(mk),
            "expression": str(sent.get("raw", sent.get("sent", ""))),
            "name": f"{Path(im['file_name']).stem}_ref{ref['ref_id']}",
            "ref_id": int(ref["ref_id"]),
            "sent_id": int(sent.get("sent_id", j)),
        }


def max_expression_tokens(dataset: Any, tokenizer: Any) -> int:
    """The longest expression of ``dataset`` in tokens of ``tokenizer``, special tokens included.

    ``dataset``: a :class:`ReferDataset` (every sentence of its split), an
    :class:`~rsvl_train.data.datasets.RRSISDataset` (its records), or any iterable of strings.
    ``tokenizer``: a ``tokenizers.Tokenizer`` (its truncation and padding are switched off on
    a copy, so the count is the untruncated length) or a callable ``str -> list of ids``.
    The CADFormer text length must be at least this to see every word.
    """
    texts: Iterable[str]
    if hasattr(dataset, "expressions"):
        texts = dataset.expressions()
    elif hasattr(dataset, "records"):
        texts = [str(r["expression"]) for r in dataset.records]
    else:
        texts = dataset
    if hasattr(tokenizer, "to_str"):
        from tokenizers import Tokenizer

        tk = Tokenizer.from_str(tokenizer.to_str())
        tk.no_truncation()
        tk.no_padding()

        def count(t: str) -> int:
            return len(tk.encode(t).ids)
    else:
        def count(t: str) -> int:
            return len(tokenizer(t))
    return max((count(t) for t in texts), default=0)
