"""Dataset loaders on fixture folders, error messages, augmentation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsvl_runtime.normalization import normalize_optical, normalize_sar
from rsvl_train.data.datasets import (
    DatasetError,
    DatasetNotFoundError,
    OptSarSegDataset,
    RRSISDataset,
    SWJTUVisionLanguageDataset,
    random_dihedral,
    read_image,
)
from rsvl_train.data.synthetic import make_tile_dataset

from ._synthetic_fixtures import write_corrupt_tif


def test_yeseg_items(tile_dataset_root: Path, preprocess) -> None:
    ds = OptSarSegDataset(tile_dataset_root, "train", preprocess)
    assert len(ds) == 8
    item = ds[0]
    assert item["optical"].shape == (3, 64, 64) and item["optical"].dtype == torch.float32
    assert item["sar"].shape == (1, 64, 64) and item["sar"].dtype == torch.float32
    assert item["label"].shape == (64, 64) and item["label"].dtype == torch.int64
    assert item["name"] == "train_00000"
    assert item["description"].startswith("a ")
    # normalisation is exactly the runtime's
    raw = np.moveaxis(np.asarray(Image.open(tile_dataset_root / "train" / "opt" / "train_00000.png")), -1, 0)
    np.testing.assert_allclose(item["optical"].numpy(), normalize_optical(raw, preprocess["optical"]), rtol=1e-6)
    sar, _ = read_image(tile_dataset_root / "train" / "sar" / "train_00000.tif")
    np.testing.assert_allclose(item["sar"].numpy(), normalize_sar(sar, preprocess["sar"]), rtol=1e-6)
    assert set(torch.unique(item["label"]).tolist()) <= set(range(7))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["optical"].shape == (4, 3, 64, 64) and len(batch["description"]) == 4


def test_single_modality_gives_zeros(tile_dataset_root: Path, preprocess) -> None:
    ds = OptSarSegDataset(tile_dataset_root, "val", {"optical": preprocess["optical"]}, modalities=("optical",))
    item = ds[0]
    assert torch.count_nonzero(item["sar"]) == 0 and item["sar"].shape == (1, 64, 64)
    assert torch.count_nonzero(item["optical"]) > 0


def test_augment_is_consistent(tile_dataset_root: Path, preprocess) -> None:
    plain = OptSarSegDataset(tile_dataset_root, "train", preprocess)
    aug = OptSarSegDataset(tile_dataset_root, "train", preprocess, augment=True)
    torch.manual_seed(3)
    for _ in range(4):
        a, p = aug[1], plain[1]
        # find the dihedral transform that maps the plain label onto the augmented one
        found = False
        for k in range(4):
            for flip in (False, True):
                def t(x: torch.Tensor, k: int = k, flip: bool = flip) -> torch.Tensor:
                    y = torch.rot90(x, k, dims=(-2, -1))
                    return torch.flip(y, dims=(-1,)) if flip else y
                if torch.equal(t(p["label"]), a["label"]) and torch.equal(t(p["optical"]), a["optical"]) \
                        and torch.equal(t(p["sar"]), a["sar"]):
                    found = True
        assert found


def test_random_dihedral_non_square() -> None:
    arr = np.arange(12).reshape(1, 3, 4)
    for _ in range(10):
        assert random_dihedral([arr])[0].shape == (1, 3, 4)


def test_swjtu_layout(tmp_path: Path, preprocess) -> None:
    make_tile_dataset(tmp_path, 3, tile=32, seed=1, split="train", layout="swjtu")
    make_tile_dataset(tmp_path, 2, tile=32, seed=1, split="test", layout="swjtu")
    ds = SWJTUVisionLanguageDataset(tmp_path, "train", preprocess)
    assert len(ds) == 3 and ds[0]["name"] == "SYN_train/train_00000" and ds[0]["description"]
    assert len(SWJTUVisionLanguageDataset(tmp_path, "all", preprocess)) == 5
    with pytest.raises(DatasetNotFoundError, match=r"split='val'.*available: \['test', 'train'\]"):
        SWJTUVisionLanguageDataset(tmp_path, "val", preprocess)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_png_sar_and_tif_labels(tmp_path: Path, preprocess) -> None:
    """Any modality may be PNG or TIF; 8-bit PNG SAR is normalised with a DN spec."""
    base = tmp_path / "train"
    for sub in ("opt", "sar", "lbl"):
        (base / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(base / "opt" / "a.png")
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(base / "sar" / "a.png")
    import rasterio

    lab = rng.integers(0, 7, (16, 16), dtype=np.uint8)
    lab[0, 0] = 255
    with rasterio.open(base / "lbl" / "a.tif", "w", driver="GTiff", height=16, width=16, count=1,
                       dtype="uint8") as dst:
        dst.write(lab, 1)
    spec = {"optical": preprocess["optical"], "sar": {"units": "db", "mean": [127.5], "std": [64.0]}}
    item = OptSarSegDataset(tmp_path, "train", spec)[0]
    assert item["label"][0, 0] == 255 and item["description"] == ""
    assert abs(float(item["sar"].mean())) < 0.5


def test_nodata_is_ignored(tmp_path: Path, preprocess) -> None:
    make_tile_dataset(tmp_path, 1, tile=32, seed=0, split="train")
    import rasterio

    p = tmp_path / "train" / "sar" / "train_00000.tif"
    with rasterio.open(p, "r+") as dst:
        data = dst.read(1)
        data[:4, :4] = dst.nodata
        data[5, 5] = np.nan
        dst.write(data, 1)
    item = OptSarSegDataset(tmp_path, "train", preprocess)[0]
    assert (item["label"][:4, :4] == 255).all() and item["label"][5, 5] == 255
    assert (item["sar"][:, :4, :4] == 0).all() and (item["optical"][:, :4, :4] == 0).all()
    assert torch.isfinite(item["sar"]).all()


# ---- errors -------------------------------------------------------------------------------------


def test_missing_root(tmp_path: Path, preprocess) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetNotFoundError) as ei:
        OptSarSegDataset(missing, "train", preprocess)
    msg = str(ei.value)
    assert "root=" in msg and str(missing) in msg and "opt/NAME" in msg and "make_tile_dataset" in msg
    assert isinstance(ei.value, FileNotFoundError) and isinstance(ei.value, DatasetError)


def test_missing_split_and_folder(tile_dataset_root: Path, tmp_path: Path, preprocess) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"split='trian'.*\['test', 'train', 'val'\]"):
        OptSarSegDataset(tile_dataset_root, "trian", preprocess)
    root = tmp_path / "copy"
    shutil.copytree(tile_dataset_root / "val", root / "val")
    shutil.rmtree(root / "val" / "sar")
    with pytest.raises(DatasetNotFoundError, match=r"sar folder .*val/sar.* does not exist"):
        OptSarSegDataset(root, "val", preprocess)
    # but optical-only works without it
    assert len(OptSarSegDataset(root, "val", preprocess, modalities=("optical",))) == 4


def test_missing_files_are_named(tile_dataset_root: Path, tmp_path: Path, preprocess) -> None:
    root = tmp_path / "copy"
    shutil.copytree(tile_dataset_root / "val", root / "val")
    (root / "val" / "sar" / "val_00002.tif").unlink()
    (root / "val" / "lbl" / "val_00003.png").unlink()
    with pytest.raises(DatasetError) as ei:
        OptSarSegDataset(root, "val", preprocess)
    msg = str(ei.value)
    assert "val_00002" in msg and "val_00003" in msg and "sar" in msg and "lbl" in msg
    assert "do not match" in msg


def test_bad_preprocess(tile_dataset_root: Path) -> None:
    with pytest.raises(DatasetError, match="'sar' modality spec"):
        OptSarSegDataset(tile_dataset_root, "val", {"optical": {"mean": [0, 0, 0], "std": [1, 1, 1]}})
    with pytest.raises(DatasetError, match="modalities"):
        OptSarSegDataset(tile_dataset_root, "val", {}, modalities=("lidar",))


def test_corrupt_file_named(tile_dataset_root: Path, tmp_path: Path, preprocess) -> None:
    root = tmp_path / "copy"
    shutil.copytree(tile_dataset_root / "val", root / "val")
    write_corrupt_tif(root / "val" / "sar" / "val_00001.tif", size=64)
    ds = OptSarSegDataset(root, "val", preprocess)
    with pytest.raises(DatasetError, match=r"could not read .*val_00001\.tif.*re-generate"):
        ds[1]


# ---- referring ----------------------------------------------------------------------------------


def test_rrsis_items(referring_dataset_root: Path, preprocess) -> None:
    ds = RRSISDataset(referring_dataset_root, "train", preprocess, size=64)
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (64, 64) and item["mask"].dtype == torch.int64
    assert set(torch.unique(item["mask"]).tolist()) <= {0, 1} and item["mask"].sum() > 0
    assert item["expression"].startswith("the ")
    native = RRSISDataset(referring_dataset_root, "val", preprocess["optical"], size=None)[0]
    assert native["image"].shape == (3, 96, 96)


def test_rrsis_errors(referring_dataset_root: Path, tmp_path: Path, preprocess) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"(?s)root=.*make_referring_dataset"):
        RRSISDataset(tmp_path / "none", "train", preprocess)
    with pytest.raises(DatasetNotFoundError, match=r"(?s)split='testA'.*available: \['test', 'train', 'val'\]"):
        RRSISDataset(referring_dataset_root, "testA", preprocess)
    root = tmp_path / "r"
    shutil.copytree(referring_dataset_root, root)
    recs = json.loads((root / "val.json").read_text())
    (root / "masks" / recs[0]["mask"]).unlink()
    with pytest.raises(DatasetError, match=recs[0]["mask"]):
        RRSISDataset(root, "val", preprocess)
    (root / "bad.json").write_text('[{"image": "x.png"}]')
    with pytest.raises(DatasetError, match="'expression'"):
        RRSISDataset(root, "bad", preprocess)
