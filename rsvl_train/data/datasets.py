"""Torch datasets for optical + SAR (+ text) semantic segmentation and referring segmentation.

Every image is normalised with :mod:`rsvl_runtime.normalization` and the modality specs passed
in ``preprocess`` (the same dicts that travel in the model config and the bundle), so
training sees exactly what the runtime will feed the exported graphs.

Supported layouts
-----------------

**YESeg-OPT-SAR-like** (:class:`OptSarSegDataset`; written by
:func:`rsvl_train.data.make_tile_dataset` with ``layout="yeseg"``)::

    root/{train,val,test}/opt/NAME.png|tif     optical, RGB (uint8 or uint16)
    root/{split}/sar/NAME.png|tif              SAR, 1 band (float dB / linear, or 8/16-bit DN)
    root/{split}/lbl/NAME.png|tif              labels, 1 band uint8 class ids, 255 = ignore
    root/{split}/txt/NAME.txt                  optional scene description

This is rsvl's own layout (the synthetic generator writes it). The official layouts of the
real datasets have their own readers, built on the item loading here:
:class:`rsvl_train.data.yeseg.YESegDataset` (YESeg-OPT-SAR as its MGFNet loader reads it),
:class:`rsvl_train.data.swjtu.TSMNetSWJTUDataset` (SWJTU-Vision-Language as TSMNet reads it)
and :class:`rsvl_train.data.refer.ReferDataset` (RRSIS-D / RRSIS-HR, RefCOCO format);
:mod:`rsvl_train.data.layouts` recognises which one a folder holds. The public YESeg-OPT-SAR
and SWJTU-OPT-SAR archives ship ``optical/``, ``sar/`` and ``label/`` folders with one
sub-folder per region and no split folders, i.e. the SWJTU layout below: use
:class:`SWJTUVisionLanguageDataset` with split lists for them.

**SWJTU-Vision-Language** (:class:`SWJTUVisionLanguageDataset`; ``layout="swjtu"``), the
public SWJTU-OPT-SAR organisation plus text and split lists::

    root/optical/REGION/NAME.png|tif
    root/sar/REGION/NAME.png|tif
    root/label/REGION/NAME.png|tif
    root/text/REGION/NAME.txt                  optional scene description
    root/splits/{split}.txt                    one "REGION/NAME" per line

``split="all"`` uses every labelled image when no split list exists.

Pixel values: PNG files are read with Pillow, TIF files with rasterio. SAR rasters are
passed to :func:`~rsvl_runtime.normalization.normalize_sar` as they are, so the SAR spec must
describe them (``units="db"`` / ``"linear"`` for float rasters; for 8-bit PNG SAR give the
mean/std in DN and ``units="db"``, which means "no log transform"). Pixels that are nodata in
any loaded modality (declared TIF nodata, NaN, or optical all-zero where the TIF declares 0)
are set to 0 in the normalised inputs and 255 in the label.

**RRSIS-D-like referring segmentation** (:class:`RRSISDataset`; written by
:func:`rsvl_train.data.make_referring_dataset`)::

    root/images/NAME.png|jpg|tif               RGB image
    root/masks/MASK.png|tif                    target mask, pixels > 0 are the object
    root/{train,val,test}.json                 [{"image": "NAME.png", "mask": "MASK.png",
                                                 "expression": "the largest building ..."}]

Items
-----
``OptSarSegDataset`` / ``SWJTUVisionLanguageDataset``: ``dict(optical=Float[3,H,W],
sar=Float[1,H,W], label=Long[H,W], description=str, name=str)``; a modality not listed in
``modalities`` is returned as zeros (the "missing modality" input of the model).
``RRSISDataset``: ``dict(image=Float[3,S,S], mask=Long[S,S] in {0,1}, expression=str,
name=str)``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from rsvl_runtime.normalization import normalize_optical, normalize_sar

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "DatasetNotFoundError",
    "OptSarSegDataset",
    "RRSISDataset",
    "SWJTUVisionLanguageDataset",
    "random_dihedral",
    "read_image",
    "referring_image",
    "resize_square",
]

IGNORE_INDEX = 255
#: File extensions recognised as rasters, in order of preference when a name has several.
IMAGE_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_MODALITIES = ("optical", "sar")


class DatasetError(ValueError):
    """A dataset folder or file is malformed; the message names the argument, path and fix."""


def read_label_file(path: Path, expected: str) -> np.ndarray:
    """One label image as ``[H, W]`` int64 class ids, its nodata pixels set to ``IGNORE_INDEX``;
    a label with more than one band is refused (``expected`` says what it should be)."""
    raw, nodata = read_image(path)
    if raw.shape[0] != 1:
        raise DatasetError(f"label {str(path)!r} has {raw.shape[0]} bands; expected {expected}")
    label = raw[0].astype(np.int64)
    if nodata is not None:
        label[nodata] = IGNORE_INDEX
    return label


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset folder or file does not exist (also a :class:`FileNotFoundError`)."""


def _short_list(items: Sequence[str], n: int = 10) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def describe_folder(root: Path) -> str:
    """What a folder holds, for "found: ..." in layout errors (``a/, b/, c.txt``, at most 10 names)."""
    if not root.is_dir():
        return "not a folder" if root.exists() else "no such folder"
    items = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    return _short_list(items) if items else "an empty folder"


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _missing_files(names: Sequence[str], files: Mapping[str, Mapping[str, Path]],
                   where: Mapping[str, Path]) -> list[str]:
    """One line per role whose folder lacks some of ``names``: how many, where, and which."""
    problems = []
    for role, have in files.items():
        missing = [n for n in names if n not in have]
        if missing:
            problems.append(f"{len(missing)} missing in {str(where[role])!r}: {_short_list(missing)}")
    return problems


def read_image(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a raster as ``[C, H, W]`` plus a boolean nodata mask ``[H, W]`` (or None).

    PNG/JPEG go through Pillow (an alpha channel is dropped, and its zeros become nodata);
    TIF through rasterio (declared nodata and NaN become nodata). Unreadable or truncated
    files raise :class:`DatasetError` naming the file.
    """
    p = Path(path)
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            import rasterio
            from rasterio.errors import NotGeoreferencedWarning

            with warnings.catch_warnings():  # dataset tiles are often plain TIFs without georeferencing
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(p) as src:
                    data = src.read()
                    nd = src.nodata
            invalid = None
            if nd is not None:
                invalid = np.all(data == nd, axis=0) if not np.isnan(nd) else np.all(np.isnan(data), axis=0)
            if np.issubdtype(data.dtype, np.floating):
                nan = ~np.all(np.isfinite(data), axis=0)
                if nan.any():
                    invalid = nan if invalid is None else invalid | nan
            return data, invalid
        from PIL import Image

        with Image.open(p) as im:
            im.load()
            if im.mode == "P":
                arr = np.asarray(im)  # palette index = class id for label PNGs
            elif im.mode in ("RGBA", "LA"):
                a = np.asarray(im)
                return np.moveaxis(a[..., :-1], -1, 0).copy(), a[..., -1] == 0
            else:
                arr = np.asarray(im)
        arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
        return np.ascontiguousarray(arr), None
    except DatasetError:
        raise
    except Exception as e:  # rasterio / Pillow raise many types for corrupt files
        raise DatasetError(
            f"could not read {str(p)!r}: {type(e).__name__}: {e}. The file is truncated or not a "
            "valid image; re-download or re-generate it (or remove it from every modality folder)"
        ) from e


def resize_square(arr: np.ndarray, size: int | None, nearest: bool) -> np.ndarray:
    """Resize ``[C, H, W]`` to ``[C, size, size]`` (bilinear, or nearest for masks); ``None`` keeps it."""
    if size is None or arr.shape[-2:] == (size, size):
        return arr
    from PIL import Image

    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    out = [np.asarray(Image.fromarray(band.astype(np.float32)).resize((size, size), resample)) for band in arr]
    return np.stack(out)


def referring_image(path: Path) -> np.ndarray:
    """An RGB ``[3, H, W]`` image for referring segmentation (grey images are repeated to 3 bands)."""
    img, _ = read_image(path)
    if img.shape[0] == 1:
        img = np.repeat(img, 3, axis=0)
    if img.shape[0] != 3:
        raise DatasetError(f"image {str(path)!r} has {img.shape[0]} bands; expected RGB")
    return img


def _read_text(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    return path.read_text(encoding="utf-8").strip()


def random_dihedral(arrays: Sequence[np.ndarray], generator: torch.Generator | None = None) -> list[np.ndarray]:
    """Apply one random flip / rot90 (same for all arrays) on the last two axes.

    Non-square arrays only get transforms that keep the shape (flips, rot180).
    The random draw uses torch's generator so DataLoader workers are seeded properly.
    """
    h, w = arrays[0].shape[-2:]
    k = int(torch.randint(0, 4, (1,), generator=generator))
    if h != w:
        k = 2 * (k % 2)
    flip = bool(torch.randint(0, 2, (1,), generator=generator))
    out = []
    for a in arrays:
        b = np.rot90(a, k, axes=(-2, -1)) if k else a
        if flip:
            b = b[..., ::-1]
        out.append(np.ascontiguousarray(b))
    return out


def _spec(preprocess: Mapping[str, Any], modality: str, owner: str) -> Mapping[str, Any]:
    if not isinstance(preprocess, Mapping) or modality not in preprocess:
        have = sorted(preprocess) if isinstance(preprocess, Mapping) else type(preprocess).__name__
        raise DatasetError(
            f"{owner}: preprocess={have!r} has no {modality!r} modality spec; pass the model config's "
            f"'preprocess' dict (e.g. {{'optical': {{'scale': 255, 'mean': [...], 'std': [...]}}, "
            f"'sar': {{'units': 'db', 'mean': [...], 'std': [...]}}}})"
        )
    return preprocess[modality]


# --------------------------------------------------------------------------------------------
# Semantic segmentation (optical + SAR + text)
# --------------------------------------------------------------------------------------------


class _OptSarBase(Dataset):
    """Shared item loading for the optical + SAR + label (+ text) layouts."""

    name = "dataset"
    #: Folder name per role; subclasses override.
    dirs: dict[str, str] = {}  # noqa: RUF012 - overridden per instance

    def __init__(
        self,
        root: str | Path,
        split: str,
        preprocess: Mapping[str, Mapping[str, Any]],
        modalities: Sequence[str] = ("optical", "sar"),
        augment: bool = False,
        dirs: Mapping[str, str] | None = None,
    ) -> None:
        if dirs:
            self.dirs = {**type(self).dirs, **dirs}
        self.root = Path(root)
        self.split = split
        self.modalities = tuple(modalities)
        bad = [m for m in self.modalities if m not in _MODALITIES]
        if bad or not self.modalities:
            raise DatasetError(
                f"{type(self).__name__}: modalities={tuple(modalities)!r} is invalid; choose a non-empty "
                f"subset of {_MODALITIES}"
            )
        self.specs = {m: _spec(preprocess, m, type(self).__name__) for m in self.modalities}
        self.augment = augment
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"{type(self).__name__}: root={str(root)!r} is not a folder. Expected the {self.name} "
                f"layout:\n{self.layout_help()}\nPass the folder that contains it, or write a synthetic one with "
                "rsvl_train.data.make_tile_dataset(root, n_tiles, split=...)"
            )
        # samples: (name, {role: path or None})
        self.samples: list[tuple[str, dict[str, Path | None]]] = self._index()
        if not self.samples:
            raise DatasetError(
                f"{type(self).__name__}: no samples for split={split!r} under root={str(root)!r}. "
                f"Expected:\n{self.layout_help()}"
            )

    # -- layout specific --------------------------------------------------------------------
    def layout_help(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def _index(self) -> list[tuple[str, dict[str, Path | None]]]:  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def _files_by_stem(folder: Path, recursive_prefix: str = "") -> dict[str, Path]:
        found: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            ext = p.suffix.lower()
            if p.is_file() and ext in IMAGE_EXTENSIONS:
                key = recursive_prefix + p.stem
                if key not in found or IMAGE_EXTENSIONS.index(ext) < IMAGE_EXTENSIONS.index(
                    found[key].suffix.lower()
                ):
                    found[key] = p
        return found

    def _check_sets(self, files: dict[str, dict[str, Path]], where: Mapping[str, Path]) -> list[str]:
        """Names present in every required role; a mismatch raises with the missing files."""
        roles = ["label", *self.modalities]
        union = sorted(set().union(*(set(files[r]) for r in roles)))
        problems = _missing_files(union, {r: files[r] for r in roles}, where)
        if problems:
            raise DatasetError(
                f"{type(self).__name__}: the {'/'.join(roles)} file sets under root={str(self.root)!r} "
                f"(split={self.split!r}) do not match; " + "; ".join(problems)
                + ". Every image needs a file with the same name (any of "
                f"{', '.join(IMAGE_EXTENSIONS)}) in each folder: add the missing files or remove the extra ones"
            )
        return union

    # -- items -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    #: Raw label value -> class id applied after reading (e.g. TSMNet folds YESeg's 7 'other' into 0).
    label_map: ClassVar[Mapping[int, int]] = MappingProxyType({})

    def _read_label(self, name: str, paths: Mapping[str, Path | None]) -> np.ndarray:
        """The ``[H, W]`` int64 label of one sample, nodata pixels set to ``IGNORE_INDEX``."""
        lab_path = paths["label"]
        assert lab_path is not None
        return read_label_file(lab_path, f"1 band of class ids (0..K-1, {IGNORE_INDEX} = ignore). Convert "
                                         "colour-coded labels to ids first")

    def _read_modalities(self, name: str, paths: Mapping[str, Path | None]
                         ) -> dict[str, tuple[np.ndarray, np.ndarray | None, Path]]:
        """``{modality: (data [C, H, W], nodata mask or None, file)}`` for the loaded modalities.

        A SAR file with three identical bands (grey PNG saved as RGB) is read as one band.
        """
        out: dict[str, tuple[np.ndarray, np.ndarray | None, Path]] = {}
        for m in self.modalities:
            p = paths[m]
            assert p is not None
            data, nd = read_image(p)
            if m == "sar" and data.shape[0] == 3 and (data[1:] == data[:1]).all():
                data = data[:1]
            out[m] = (data, nd, p)
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, paths = self.samples[index]
        label = self._read_label(name, paths)
        if self.label_map:
            raw = label.copy()
            for src, dst in self.label_map.items():
                label[raw == src] = dst
        lab_path = paths["label"]
        h, w = label.shape
        invalid = np.zeros((h, w), dtype=bool)
        arrays: dict[str, np.ndarray] = {}
        for m, (data, nd, p) in self._read_modalities(name, paths).items():
            want = 3 if m == "optical" else 1
            if data.shape[0] != want or data.shape[1:] != (h, w):
                raise DatasetError(
                    f"{m} file {str(p)!r} has shape {tuple(data.shape)} (bands, H, W); expected "
                    f"({want}, {h}, {w}) to match the label {str(lab_path)!r}"
                )
            if nd is not None:
                invalid |= nd
            if m == "optical":
                x = normalize_optical(data, self.specs[m])
            else:
                x = normalize_sar(data.astype(np.float32), self.specs[m])
            bad = ~np.isfinite(x).all(axis=0)
            invalid |= bad
            arrays[m] = x
        for m, x in arrays.items():
            x[:, invalid] = 0.0
        label[invalid] = IGNORE_INDEX
        for m in _MODALITIES:
            if m not in arrays:
                arrays[m] = np.zeros((3 if m == "optical" else 1, h, w), dtype=np.float32)
        if self.augment:
            opt, sar, label = random_dihedral([arrays["optical"], arrays["sar"], label])
            arrays = {"optical": opt, "sar": sar}
        return {
            "optical": torch.from_numpy(np.ascontiguousarray(arrays["optical"])),
            "sar": torch.from_numpy(np.ascontiguousarray(arrays["sar"])),
            "label": torch.from_numpy(np.ascontiguousarray(label)),
            "description": _read_text(paths.get("description")),
            "name": name,
        }


class OptSarSegDataset(_OptSarBase):
    """Optical + SAR (+ description) segmentation tiles in the YESeg-OPT-SAR-like layout.

    Args:
        root: dataset root containing ``{split}/opt``, ``{split}/sar``, ``{split}/lbl``
            (and optionally ``{split}/txt``); see the module docstring.
        split: ``"train"``, ``"val"``, ``"test"`` or any sub-folder name.
        preprocess: ``{"optical": spec, "sar": spec}`` modality specs
            (:mod:`rsvl_runtime.normalization`); only the loaded modalities are required.
        modalities: which modalities to read; the others are returned as zeros.
        augment: random flips / rot90, identical for all modalities and the label.
        dirs: override folder names, e.g. ``{"optical": "optical", "label": "label"}``.

    Raises:
        DatasetNotFoundError: ``root``, ``root/split`` or a modality folder is missing.
        DatasetError: mismatched file sets (the message lists the missing files), a bad
            ``preprocess``, or an unreadable file (at item access).
    """

    name = "YESeg-OPT-SAR-like"
    dirs = {"optical": "opt", "sar": "sar", "label": "lbl", "description": "txt"}  # noqa: RUF012

    def layout_help(self) -> str:
        d = self.dirs
        return (
            f"  root/{{train,val,test}}/{d['optical']}/NAME.png|tif   (optical RGB)\n"
            f"  root/{{split}}/{d['sar']}/NAME.png|tif   (SAR, 1 band)\n"
            f"  root/{{split}}/{d['label']}/NAME.png|tif   (class ids, 255 = ignore)\n"
            f"  root/{{split}}/{d['description']}/NAME.txt   (optional description)"
        )

    def _index(self) -> list[tuple[str, dict[str, Path | None]]]:
        cls = type(self).__name__
        base = self.root / self.split
        if not base.is_dir():
            have = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            raise DatasetNotFoundError(
                f"{cls}: split={self.split!r} has no folder {str(base)!r} (root={str(self.root)!r} has "
                f"{have or 'no sub-folders'}). Expected:\n{self.layout_help()}\nPass one of the existing "
                "splits, or point root at the folder that contains the split folders"
            )
        where = {r: base / self.dirs[r] for r in ("label", *self.modalities)}
        files: dict[str, dict[str, Path]] = {}
        for role, folder in where.items():
            if not folder.is_dir():
                raise DatasetNotFoundError(
                    f"{cls}: root={str(self.root)!r}, split={self.split!r}: the {role} folder "
                    f"{str(folder)!r} does not exist. Expected:\n{self.layout_help()}\nAdd the folder, pass "
                    f"dirs={{{role!r}: '<folder name>'}}, or drop {role!r} from modalities"
                )
            files[role] = self._files_by_stem(folder)
        names = self._check_sets(files, where)
        txt = base / self.dirs["description"]
        return [
            (
                n,
                {**{r: files[r][n] for r in files}, "description": txt / f"{n}.txt" if txt.is_dir() else None},
            )
            for n in names
        ]


class SWJTUVisionLanguageDataset(_OptSarBase):
    """SWJTU-Vision-Language (and public YESeg/SWJTU-OPT-SAR) layout with split lists.

    ``root/{optical,sar,label,text}/REGION/NAME.*`` and ``root/splits/{split}.txt`` listing
    ``REGION/NAME`` ids (see the module docstring). ``split="all"`` takes every labelled image
    when there is no ``splits/all.txt``. Items are named ``"REGION/NAME"``. Arguments and
    errors as :class:`OptSarSegDataset`.
    """

    name = "SWJTU-Vision-Language"
    dirs = {"optical": "optical", "sar": "sar", "label": "label", "description": "text"}  # noqa: RUF012

    def layout_help(self) -> str:
        d = self.dirs
        return (
            f"  root/{d['optical']}/REGION/NAME.png|tif   (optical RGB)\n"
            f"  root/{d['sar']}/REGION/NAME.png|tif   (SAR, 1 band)\n"
            f"  root/{d['label']}/REGION/NAME.png|tif   (class ids, 255 = ignore)\n"
            f"  root/{d['description']}/REGION/NAME.txt   (optional description)\n"
            "  root/splits/{split}.txt   (one REGION/NAME per line)"
        )

    def _index(self) -> list[tuple[str, dict[str, Path | None]]]:
        cls = type(self).__name__
        where = {r: self.root / self.dirs[r] for r in ("label", *self.modalities)}
        files: dict[str, dict[str, Path]] = {}
        for role, folder in where.items():
            if not folder.is_dir():
                raise DatasetNotFoundError(
                    f"{cls}: root={str(self.root)!r}: the {role} folder {str(folder)!r} does not exist. "
                    f"Expected:\n{self.layout_help()}\nAdd the folder, pass dirs={{{role!r}: '<folder name>'}}, "
                    f"or drop {role!r} from modalities"
                )
            found: dict[str, Path] = {}
            for region in sorted(p for p in folder.iterdir() if p.is_dir()):
                found.update(self._files_by_stem(region, f"{region.name}/"))
            files[role] = found
        split_file = self.root / "splits" / f"{self.split}.txt"
        if split_file.is_file():
            wanted = [ln.strip() for ln in split_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
            problems = _missing_files(wanted, files, where)
            if problems:
                raise DatasetError(
                    f"{cls}: split list {str(split_file)!r} names images that are not there; "
                    + "; ".join(problems)
                    + ". Add the files or remove the ids from the split list"
                )
            names = wanted
        elif self.split == "all":
            names = self._check_sets(files, where)
        else:
            have = sorted(p.stem for p in (self.root / "splits").glob("*.txt")) if (self.root / "splits").is_dir() else []
            raise DatasetNotFoundError(
                f"{cls}: split={self.split!r} has no split list {str(split_file)!r} (available: "
                f"{have or 'none'}). Write one REGION/NAME per line into it, or pass split='all'"
            )
        txt = self.root / self.dirs["description"]
        return [
            (n, {**{r: files[r][n] for r in files}, "description": txt / f"{n}.txt" if txt.is_dir() else None})
            for n in names
        ]


# --------------------------------------------------------------------------------------------
# Referring segmentation
# --------------------------------------------------------------------------------------------


class RRSISDataset(Dataset):
    """RRSIS-D-like referring segmentation: image + expression -> binary mask.

    Args:
        root: folder with ``images/``, ``masks/`` and ``{split}.json`` (module docstring).
        split: which JSON list to read (``train``, ``val``, ``test``...).
        preprocess: the optical modality spec, or a dict with an ``"optical"`` spec.
        size: output side length (images resized bilinearly, masks nearest); ``None`` keeps
            the native size. CADFormer uses 480.

    No geometric augmentation: flips would invalidate "left/right/north..." in expressions.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        preprocess: Mapping[str, Any],
        size: int | None = 480,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.size = size
        self.spec = preprocess["optical"] if isinstance(preprocess, Mapping) and "optical" in preprocess else preprocess
        if not isinstance(self.spec, Mapping) or "mean" not in self.spec or "std" not in self.spec:
            raise DatasetError(
                f"RRSISDataset: preprocess={preprocess!r} is not an optical modality spec; pass "
                "{'scale': 255, 'mean': [r, g, b], 'std': [r, g, b]} or {'optical': {...}}"
            )
        layout = (
            "  root/images/NAME.png|jpg|tif\n  root/masks/MASK.png\n"
            '  root/{split}.json = [{"image": "NAME.png", "mask": "MASK.png", "expression": "..."}]'
        )
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"RRSISDataset: root={str(root)!r} is not a folder. Expected:\n{layout}\nPass the dataset "
                "folder, or write a synthetic one with rsvl_train.data.make_referring_dataset(root, n)"
            )
        ann = self.root / f"{split}.json"
        if not ann.is_file():
            have = sorted(p.stem for p in self.root.glob("*.json"))
            raise DatasetNotFoundError(
                f"RRSISDataset: split={split!r} has no annotation file {str(ann)!r} (available: "
                f"{have or 'none'}). Expected:\n{layout}"
            )
        try:
            records = json.loads(ann.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DatasetError(f"RRSISDataset: {str(ann)!r} is not valid JSON ({e}); expected:\n{layout}") from e
        if not isinstance(records, list):
            raise DatasetError(f"RRSISDataset: {str(ann)!r} must hold a JSON list of records; expected:\n{layout}")
        self.records: list[dict[str, Any]] = []
        missing: list[str] = []
        for i, r in enumerate(records):
            if not isinstance(r, dict) or not {"image", "mask", "expression"} <= set(r):
                raise DatasetError(
                    f"RRSISDataset: record {i} of {str(ann)!r} is {r!r}; every record needs the keys "
                    "'image', 'mask' and 'expression'"
                )
            for key, folder in (("image", "images"), ("mask", "masks")):
                if not (self.root / folder / r[key]).is_file():
                    missing.append(str(Path(folder) / r[key]))
            self.records.append(r)
        if missing:
            raise DatasetError(
                f"RRSISDataset: {len(missing)} files named in {str(ann)!r} are missing under "
                f"root={str(self.root)!r}: {_short_list(sorted(set(missing)))}. Add them or remove their records"
            )
        if not self.records:
            raise DatasetError(f"RRSISDataset: {str(ann)!r} has no records")

    def __len__(self) -> int:
        return len(self.records)

    def _resize(self, arr: np.ndarray, nearest: bool) -> np.ndarray:
        return resize_square(arr, self.size, nearest)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        img = referring_image(self.root / "images" / r["image"])
        mask, _ = read_image(self.root / "masks" / r["mask"])
        if img.shape[1:] != mask.shape[1:]:
            raise DatasetError(
                f"mask {r['mask']!r} is {mask.shape[1:]} but image {r['image']!r} is {img.shape[1:]}; "
                "they must have the same size"
            )
        x = normalize_optical(self._resize(img.astype(np.float32), nearest=False), self.spec)
        m = (self._resize((mask[:1] > 0).astype(np.float32), nearest=True)[0] > 0.5).astype(np.int64)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(x)),
            "mask": torch.from_numpy(m),
            "expression": str(r["expression"]),
            "name": Path(r["mask"]).stem,
        }
