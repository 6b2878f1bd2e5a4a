"""Dataset folders of synthetic tiles: :func:`make_tile_dataset` (YESeg-OPT-SAR-like or
SWJTU-like semantic folders) and :func:`make_referring_dataset` (RRSIS-D-like referring
folder), in the layouts :mod:`rsvl_train.data.datasets` reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .constants import CLASS_NAMES, SAR_NODATA
from .geotiff import from_origin, write_tif
from .noise import NOISE_TILE, sub_seed
from .scene import SyntheticScene
from .text import describe_labels, referring_expressions

__all__ = ["make_referring_dataset", "make_tile_dataset"]


def _tile_scene(seed: int, split: str, i: int, tile: int) -> SyntheticScene:
    s = sub_seed(seed, f"tile/{split}/{i}")
    rng = np.random.default_rng([s & 0xFFFFFFFF, 3])
    # multiples of the noise tile, so a tile of <= 256 px draws a single noise tile per stream
    origin = (int(rng.integers(0, 1 << 14)) * NOISE_TILE, int(rng.integers(0, 1 << 14)) * NOISE_TILE)
    return SyntheticScene(s, tile, tile, river=None, origin_px=origin)


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, compress_level=1)


def make_tile_dataset(
    out_dir: str | Path,
    n_tiles: int,
    tile: int = 256,
    seed: int = 0,
    split: str = "train",
    layout: Literal["yeseg", "swjtu"] = "yeseg",
    sar_units: Literal["db", "linear"] = "db",
) -> Path:
    """Write ``n_tiles`` synthetic tiles of one split; returns the dataset root.

    Every tile is an independent small scene (its own seed and landscape offset; about half
    of them have a river). Layouts (see :mod:`rsvl_train.data.datasets`):

    - ``"yeseg"``: ``root/{split}/opt/NAME.png`` (RGB uint8), ``root/{split}/sar/NAME.tif``
      (float32 dB, or linear), ``root/{split}/lbl/NAME.png`` (uint8 ids, 255 ignore),
      ``root/{split}/txt/NAME.txt`` (scene description).
    - ``"swjtu"``: ``root/{optical,sar,label,text}/<region>/NAME.{png,tif,png,txt}`` with
      region ``"SYN_<split>"`` and the split list ``root/splits/{split}.txt``
      (one ``region/NAME`` a line).

    Call it once per split (different splits never share tiles). A 256x256 tile takes a few
    tens of milliseconds.
    """
    root = Path(out_dir)
    names: list[str] = []
    for i in range(n_tiles):
        scene = _tile_scene(seed, split, i, tile)
        b = scene.render(0, 0, tile, tile)
        name = f"{split}_{i:05d}"
        opt = np.rint(b.optical).astype(np.uint8).transpose(1, 2, 0)
        sar = b.sar_db if sar_units == "db" else np.power(10.0, b.sar_db / 10.0).astype(np.float32)
        text = describe_labels(b.labels)
        transform = from_origin(500000.0 + 10.0 * tile * i, 4600000.0, 10.0, 10.0)
        if layout == "yeseg":
            base = root / split
            _write_png(base / "opt" / f"{name}.png", opt)
            write_tif(base / "sar" / f"{name}.tif", sar, transform, nodata=SAR_NODATA)
            _write_png(base / "lbl" / f"{name}.png", b.labels)
            (base / "txt").mkdir(parents=True, exist_ok=True)
            (base / "txt" / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
        elif layout == "swjtu":
            region = f"SYN_{split}"
            _write_png(root / "optical" / region / f"{name}.png", opt)
            write_tif(root / "sar" / region / f"{name}.tif", sar, transform, nodata=SAR_NODATA)
            _write_png(root / "label" / region / f"{name}.png", b.labels)
            (root / "text" / region).mkdir(parents=True, exist_ok=True)
            (root / "text" / region / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
            names.append(f"{region}/{name}")
        else:
            raise ValueError(f"layout must be 'yeseg' or 'swjtu', got {layout!r}")
    if layout == "swjtu":
        (root / "splits").mkdir(parents=True, exist_ok=True)
        (root / "splits" / f"{split}.txt").write_text("".join(n + "\n" for n in names), encoding="utf-8")
    return root


def make_referring_dataset(
    out_dir: str | Path,
    n: int,
    size: int = 256,
    seed: int = 0,
    splits: dict[str, float] | None = None,
    expressions_per_image: int = 2,
) -> Path:
    """Write an RRSIS-D-like referring segmentation folder of ``n`` images; returns the root.

    Layout (read by :class:`rsvl_train.data.datasets.RRSISDataset`)::

        root/images/NAME.png            RGB uint8, size x size
        root/masks/NAME_K.png           uint8, 255 = the referred object, 0 = background
        root/{split}.json               [{"image": "NAME.png", "mask": "NAME_K.png",
                                          "expression": "...", "class": "water",
                                          "ref_id": int}, ...]

    ``splits`` maps split name -> fraction of images (default train 0.8, val 0.1, test 0.1);
    images are assigned in order, so every split gets whole images.
    """
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    splits = splits or {"train": 0.8, "val": 0.1, "test": 0.1}
    names = list(splits)
    bounds = np.cumsum([splits[s] for s in names]) / sum(splits.values()) * n
    records: dict[str, list[dict[str, Any]]] = {s: [] for s in names}
    ref_id = 0
    i = k = 0
    while i < n:
        scene = _tile_scene(seed, "referring", k, size)
        k += 1
        b = scene.render(0, 0, size, size)
        exprs = referring_expressions(b.labels, seed=k, max_expressions=expressions_per_image)
        if not exprs:
            continue
        split = names[int(np.searchsorted(bounds, i, side="right"))] if i < bounds[-1] else names[-1]
        name = f"{i:05d}"
        _write_png(root / "images" / f"{name}.png", np.rint(b.optical).astype(np.uint8).transpose(1, 2, 0))
        for j, e in enumerate(exprs):
            mname = f"{name}_{j}.png"
            _write_png(root / "masks" / mname, (e.mask * 255).astype(np.uint8))
            records[split].append(
                {"image": f"{name}.png", "mask": mname, "expression": e.text,
                 "class": CLASS_NAMES[e.class_id], "ref_id": ref_id}
            )
            ref_id += 1
        i += 1
    for s, recs in records.items():
        (root / f"{s}.json").write_text(json.dumps(recs, indent=1), encoding="utf-8")
    return root
