"""Real dataset layouts: YESeg-OPT-SAR (MGFNet), SWJTU (TSMNet), RRSIS-D / RRSIS-HR (RefCOCO),
COCO mask decoding, layout detection and the ``--data`` messages.

Every fixture is written here in the official layout (tiny 32x32 tiles); expectations are
hand-written from the official loaders cited in the modules' docstrings.
"""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from rsvl_runtime.normalization import normalize_optical, normalize_sar
from rsvl_train.data.coco_masks import (
    decode_segmentation,
    polygon_mask,
    rle_counts_from_string,
    rle_counts_to_string,
    rle_decode,
    rle_encode,
)
from rsvl_train.data.datasets import DatasetError, DatasetNotFoundError, RRSISDataset
from rsvl_train.data.layouts import detect_layout, open_datasets, parse_data_spec
from rsvl_train.data.refer import ReferDataset, max_expression_tokens
from rsvl_train.data.swjtu import SWJTU_CLASSES, TSMNetSWJTUDataset
from rsvl_train.data.yeseg import YESEG_CLASSES, YESegDataset

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

S = 32


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _label(seed: int, n_classes: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_classes, (S, S), dtype=np.uint8)


# ---- YESeg-OPT-SAR (MGFNet loader layout) --------------------------------------------------------


@pytest.fixture()
def yeseg_root(tmp_path: Path) -> Path:
    root = tmp_path / "DATA"
    rng = np.random.default_rng(0)
    for name in ("1", "10", "3"):
        _png(root / "OPT" / f"{name}.png", rng.integers(0, 255, (S, S, 3), dtype=np.uint8))
        grey = rng.integers(0, 255, (S, S), dtype=np.uint8)
        _png(root / "SAR" / f"{name}.png", np.repeat(grey[..., None], 3, -1) if name == "10" else grey)
    _png(root / "label" / "1.png", _label(1, 8))
    _png(root / "label" / "10.png", _label(10, 8))
    # "3" is labelled in two parts (two sub-folders of label/): the first wins where it is non-zero
    a = np.zeros((S, S), np.uint8)
    a[:, :16] = 5
    b = np.full((S, S), 2, np.uint8)
    b[0, :] = 7
    _png(root / "label" / "HY_C" / "3.png", a)
    _png(root / "label" / "HY_D" / "3.png", b)
    (root / "train.txt").write_text("1.png\n10.png\n")
    (root / "val.txt").write_text("3.png")
    (root / "OPT" / "txt").mkdir()
    (root / "OPT" / "txt" / "1.txt").write_text("Farmland with a road along the river.\n", encoding="utf-8")
    return root


def test_yeseg_mgfnet_layout(yeseg_root: Path, preprocess) -> None:
    spec = {"optical": preprocess["optical"], "sar": {"units": "db", "mean": [127.5], "std": [64.0]}}
    train = YESegDataset(yeseg_root, "train", spec)
    assert [n for n, _ in train.samples] == ["1", "10"]
    assert len(train) == 2 and train.classes == YESEG_CLASSES and len(YESEG_CLASSES) == 8
    assert YESEG_CLASSES[0] == "background" and YESEG_CLASSES[5] == "water" and YESEG_CLASSES[7] == "other"
    item = train[0]
    # exact stem: "1" gets label/1.png only (the official prefix match would add 10.png)
    np.testing.assert_array_equal(item["label"].numpy(), _label(1, 8))
    assert item["description"] == "Farmland with a road along the river."
    assert train[1]["description"] == ""
    assert train[1]["sar"].shape == (1, S, S)  # a grey SAR PNG saved as RGB is read as one band
    raw = np.moveaxis(np.asarray(Image.open(yeseg_root / "OPT" / "1.png")), -1, 0)
    np.testing.assert_allclose(item["optical"].numpy(), normalize_optical(raw, spec["optical"]), rtol=1e-6)
    sar = np.asarray(Image.open(yeseg_root / "SAR" / "1.png"))[None].astype(np.float32)
    np.testing.assert_allclose(item["sar"].numpy(), normalize_sar(sar, spec["sar"]), rtol=1e-6)

    val = YESegDataset(yeseg_root, "val", spec)
    merged = val[0]["label"].numpy()
    assert (merged[1:, :16] == 5).all() and (merged[1:, 16:] == 2).all()
    assert (merged[0, :16] == 5).all() and (merged[0, 16:] == 7).all()


def test_yeseg_errors(yeseg_root: Path, preprocess) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"split='test'.*available: \['train', 'val'\]"):
        YESegDataset(yeseg_root, "test", preprocess)
    (yeseg_root / "val.txt").write_text("3.png\n4.png\n")
    with pytest.raises(DatasetError, match=r"OPT/4\.png.*SAR/4\.png.*label/\*\*/4\.png"):
        YESegDataset(yeseg_root, "val", preprocess)


# ---- SWJTU-Vision-Language (TSMNet layout) ----------------------------------------------------------


def _write_tif(path: Path, data: np.ndarray) -> None:
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2],
                       count=data.shape[0], dtype=data.dtype.name) as dst:
        dst.write(data)


@pytest.fixture()
def swjtu_root(tmp_path: Path) -> Path:
    root = tmp_path / "SWJTU"
    rng = np.random.default_rng(2)
    for split, names in (("train", ("1_1", "1_2")), ("val", ("2_1",))):
        for n in names:
            _write_tif(root / "img_optical_sar" / split / f"{n}.tif", rng.integers(0, 255, (4, S, S), dtype=np.uint8))
            lab = _label(len(n) + ord(n[-1]), 8)  # ids 0..7 (7 = "other")
            lab[0, 0] = 255
            _write_tif(root / "ann_dir" / split / f"{n}.tif", lab[None])
            txt = root / "img_optical_sar" / split / "txt" / f"{n}.txt"
            txt.parent.mkdir(parents=True, exist_ok=True)
            txt.write_text(f"scene {n}: houses beside water", encoding="utf-8")
    return root


def test_swjtu_tsmnet_layout(swjtu_root: Path, preprocess) -> None:
    spec = {"optical": preprocess["optical"], "sar": {"units": "db", "mean": [100.0], "std": [40.0]}}
    ds = TSMNetSWJTUDataset(swjtu_root, "train", spec)
    assert len(ds) == 2 and [n for n, _ in ds.samples] == ["1_1", "1_2"]
    assert ds.classes == SWJTU_CLASSES and len(SWJTU_CLASSES) == 7 and SWJTU_CLASSES[6] == "roads"
    item = ds[0]
    import rasterio

    with rasterio.open(swjtu_root / "img_optical_sar" / "train" / "1_1.tif") as src:
        stack = src.read()
    with rasterio.open(swjtu_root / "ann_dir" / "train" / "1_1.tif") as src:
        raw_label = src.read(1).astype(np.int64)
    np.testing.assert_allclose(item["optical"].numpy(), normalize_optical(stack[:3], spec["optical"]), rtol=1e-6)
    np.testing.assert_allclose(item["sar"].numpy(), normalize_sar(stack[3:4].astype(np.float32), spec["sar"]),
                               rtol=1e-6)
    want = raw_label.copy()
    want[want == 7] = 0  # TSMNet.forward_train folds "other" into background
    assert (raw_label == 7).any()
    np.testing.assert_array_equal(item["label"].numpy(), want)
    assert item["label"][0, 0] == 255 and int(item["label"].max()) == 255
    assert set(np.unique(want[want != 255]).tolist()) <= set(range(7))
    assert item["description"] == "scene 1_1: houses beside water"
    assert len(TSMNetSWJTUDataset(swjtu_root, "val", spec)) == 1
    with pytest.raises(DatasetNotFoundError, match=r"split='test'.*img_optical_sar/test"):
        TSMNetSWJTUDataset(swjtu_root, "test", spec)


# ---- COCO masks -------------------------------------------------------------------------------------------


def _hand_mask() -> np.ndarray:
    m = np.zeros((S, S), np.uint8)
    m[4:8, 10:12] = 1
    m[20:30, 3] = 1
    return m


def test_rle_compressed_and_uncompressed() -> None:
    m = _hand_mask()
    # column-major runs starting with zeros: col 3 rows 20..29, then cols 10-11 rows 4..7
    counts = [3 * S + 20, 10, (10 - 3) * S - 30 + 4, 4, S - 8 + 4, 4, S * S - (11 * S + 8)]
    assert rle_encode(m) == {"size": [S, S], "counts": counts}
    np.testing.assert_array_equal(rle_decode({"size": [S, S], "counts": counts}), m)
    # the string pycocotools.mask.encode writes for this mask (computed once with pycocotools 2.0.11)
    coco = "d3:V6JfJ0lc0"
    assert rle_counts_to_string(counts) == coco and rle_counts_from_string(coco) == counts
    np.testing.assert_array_equal(rle_decode({"size": [S, S], "counts": coco.encode()}), m)
    with pytest.raises(ValueError, match="summing to"):
        rle_decode({"size": [S, S + 1], "counts": counts})


def test_rle_roundtrip_random() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        m = (rng.random((h, w)) > rng.random()).astype(np.uint8)
        s = rle_counts_to_string(rle_encode(m)["counts"])
        np.testing.assert_array_equal(rle_decode({"size": [h, w], "counts": s}), m)


def test_polygon_masks_hand_drawn() -> None:
    # square [4, 12) x [6, 10): columns 4..11, rows 6..9 (as pycocotools: 32 pixels)
    sq = polygon_mask([[4, 6, 12, 6, 12, 10, 4, 10]], S, S)
    want = np.zeros((S, S), np.uint8)
    want[6:10, 4:12] = 1
    np.testing.assert_array_equal(sq, want)
    # right triangle: pixel centres strictly inside x >= 16, y >= 16, x + y < 44 (pycocotools: 66)
    tri = polygon_mask([[16, 16, 28, 16, 16, 28]], S, S)
    r, c = np.mgrid[0:S, 0:S]
    np.testing.assert_array_equal(tri, ((c >= 16) & (r >= 16) & (c + r <= 42)).astype(np.uint8))
    assert tri.sum() == 66
    # several polygons are united; a polygon leaving the image is clipped
    both = decode_segmentation([[4, 6, 12, 6, 12, 10, 4, 10], [-5, -5, 3, -5, 3, 2, -5, 2]], S, S)
    assert both.sum() == 32 + 3 * 2 and both[:2, :3].all()
    with pytest.raises(ValueError, match="at least 3 points"):
        polygon_mask([[1, 2, 3, 4]], S, S)
    with pytest.raises(ValueError, match="neither a list of polygons"):
        decode_segmentation("nope", S, S)


def test_polygon_matches_pycocotools_when_installed() -> None:
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    inside = differ = 0
    for _ in range(50):
        pts = rng.uniform(-2, S + 2, size=(int(rng.integers(3, 8)), 2)).ravel().tolist()
        ref = mask_api.decode(mask_api.frPyObjects([pts], S, S))[..., 0]
        inside += int(ref.sum())
        differ += int((ref != polygon_mask([pts], S, S)).sum())
    assert differ <= 0.05 * inside


# ---- RefCOCO format (RRSIS-D / RRSIS-HR) ---------------------------------------------------------------


SQUARE = [[4.0, 6.0, 12.0, 6.0, 12.0, 10.0, 4.0, 10.0]]


def _refs() -> list[dict[str, Any]]:
    def sents(ids: list[int], texts: list[str]) -> list[dict[str, Any]]:
        return [{"raw": t, "sent": t.lower(), "sent_id": i, "tokens": t.lower().split()} for i, t in zip(ids, texts)]

    return [
        {"ref_id": 0, "ann_id": 10, "image_id": 1, "category_id": 1, "split": "train", "sent_ids": [0, 1],
         "sentences": sents([0, 1], ["The vehicle on the left", "a small car"])},
        {"ref_id": 1, "ann_id": 11, "image_id": 2, "category_id": 2, "split": "val", "sent_ids": [2, 3],
         "sentences": sents([2, 3], ["the long bridge", "A bridge crossing the river from north to south"])},
        {"ref_id": 2, "ann_id": 12, "image_id": 2, "category_id": 2, "split": "test", "sent_ids": [4],
         "sentences": sents([4], ["the road"])},
    ]


def _write_refer(data_root: Path, name: str, refs_format: str = "p") -> Path:
    ann_dir = data_root / name
    img_dir = data_root / "images" / name / "JPEGImages"
    ann_dir.mkdir(parents=True)
    img_dir.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in (1, 2):
        _png(img_dir / f"{i:05d}.jpg", rng.integers(0, 255, (S, S, 3), dtype=np.uint8))
    instances = {
        "images": [{"id": i, "file_name": f"{i:05d}.jpg", "height": S, "width": S} for i in (1, 2)],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": SQUARE, "bbox": [4, 6, 8, 4]},
            {"id": 11, "image_id": 2, "category_id": 2, "segmentation": {"size": [S, S], "counts": "d3:V6JfJ0lc0"}},
            {"id": 12, "image_id": 2, "category_id": 3, "segmentation": rle_encode(_hand_mask()[::-1].copy())},
        ],
        "categories": [{"id": 1, "name": "vehicle"}, {"id": 2, "name": "bridge"}, {"id": 3, "name": "road"}],
    }
    (ann_dir / "instances.json").write_text(json.dumps(instances), encoding="utf-8")
    if refs_format == "p":
        (ann_dir / "refs(unc).p").write_bytes(pickle.dumps(_refs(), protocol=2))
    else:
        (ann_dir / "refs(unc).json").write_text(json.dumps(_refs()), encoding="utf-8")
    return data_root


@pytest.fixture()
def rrsisd_root(tmp_path: Path) -> Path:
    return _write_refer(tmp_path / "refer_data", "rrsisd")


def test_rrsisd_splits_masks_and_sentences(rrsisd_root: Path, preprocess) -> None:
    train = ReferDataset(rrsisd_root, "train", preprocess, size=None)
    assert len(train) == 1 and train.sentences == "random"  # one item per ref, random sentence
    torch.manual_seed(0)
    seen = {train[0]["expression"] for _ in range(12)}
    assert seen == {"The vehicle on the left", "a small car"}
    item = train[0]
    want = np.zeros((S, S), np.int64)
    want[6:10, 4:12] = 1
    np.testing.assert_array_equal(item["mask"].numpy(), want)
    assert item["image"].shape == (3, S, S) and item["name"] == "00001_ref0" and item["ref_id"] == 0

    val = ReferDataset(rrsisd_root, "val", preprocess, size=None)
    assert len(val) == 2 and [val[i]["sent_id"] for i in range(2)] == [2, 3]  # every sentence
    np.testing.assert_array_equal(val[0]["mask"].numpy(), _hand_mask())  # compressed RLE
    test = ReferDataset(rrsisd_root, "test", preprocess, size=64)
    assert len(test) == 1 and test[0]["mask"].shape == (64, 64) and test[0]["image"].shape == (3, 64, 64)
    np.testing.assert_array_equal(ReferDataset(rrsisd_root, "test", preprocess, size=None)[0]["mask"].numpy(),
                                  _hand_mask()[::-1])  # uncompressed RLE
    assert set(train.categories.values()) == {"vehicle", "bridge", "road"}
    batch = next(iter(torch.utils.data.DataLoader(val, batch_size=2)))
    assert batch["mask"].shape == (2, S, S) and len(batch["expression"]) == 2


def test_rrsishr_json_refs_and_dataset_folder_as_root(tmp_path: Path, preprocess) -> None:
    data_root = _write_refer(tmp_path / "d", "rrsishr", refs_format="json")
    ds = ReferDataset(data_root / "rrsishr", "val", preprocess, dataset="rrsishr", size=None)
    assert ds.refs_file.name == "refs(unc).json" and len(ds) == 2
    assert ds.image_dir == data_root / "images" / "rrsishr" / "JPEGImages"


def test_max_expression_tokens(rrsisd_root: Path, preprocess, referring_dataset_root: Path) -> None:
    from rsvl_train.tokenization import clip_tokenizer

    val = ReferDataset(rrsisd_root, "val", preprocess)
    assert val.expressions() == ["the long bridge", "A bridge crossing the river from north to south"]
    assert max_expression_tokens(val, lambda t: t.split()) == 9
    # CLIP BPE: start + 9 words + end; truncation to 4 on the tokenizer does not cap the count
    assert max_expression_tokens(val, clip_tokenizer(4)) == 11
    assert max_expression_tokens(["a b", "a b c"], lambda t: t.split()) == 3
    rrsis = RRSISDataset(referring_dataset_root, "train", preprocess, size=None)
    assert max_expression_tokens(rrsis, lambda t: t.split()) == max(len(r["expression"].split()) for r in rrsis.records)


def test_refer_errors(rrsisd_root: Path, tmp_path: Path, preprocess) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"split='testB' has no refs.*\['test', 'train', 'val'\]"):
        ReferDataset(rrsisd_root, "testB", preprocess)
    with pytest.raises(DatasetNotFoundError, match=r"does not look like rrsishr.*found: images/, rrsisd/"):
        ReferDataset(rrsisd_root, "train", preprocess, dataset="rrsishr")
    (rrsisd_root / "images" / "rrsisd" / "JPEGImages" / "00002.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 images missing .*00002\.jpg"):
        ReferDataset(rrsisd_root, "val", preprocess)
    # a refs pickle that references a class is refused (no code runs from a dataset file)
    (rrsisd_root / "rrsisd" / "refs(unc).p").write_bytes(pickle.dumps([OrderedDict(_refs()[0])]))
    with pytest.raises(DatasetError, match=r"references collections\.OrderedDict"):
        ReferDataset(rrsisd_root, "train", preprocess)


# ---- layout detection and --data ---------------------------------------------------------------


def test_parse_data_spec() -> None:
    assert parse_data_spec("synthetic") == ("synthetic", None)
    assert parse_data_spec("rrsisd:/d/x") == ("rrsisd", "/d/x")
    assert parse_data_spec("RRSISHR:/d") == ("rrsishr", "/d")
    assert parse_data_spec("/data/yeseg") == ("auto", "/data/yeseg")
    with pytest.raises(ValueError, match=r"unknown dataset kind 'yesg'.*yeseg:PATH"):
        parse_data_spec("yesg:/d")
    with pytest.raises(ValueError, match="give the dataset folder"):
        parse_data_spec("swjtu")
    with pytest.raises(ValueError, match="give the dataset folder"):
        parse_data_spec("rrsisd:")


def test_detect_layouts(yeseg_root: Path, swjtu_root: Path, rrsisd_root: Path, tile_dataset_root: Path,
                        referring_dataset_root: Path, tmp_path: Path) -> None:
    assert (detect_layout("auto", yeseg_root).kind, detect_layout("auto", yeseg_root).name) == ("yeseg", "mgfnet")
    assert detect_layout("auto", swjtu_root).name == "tsmnet"
    assert detect_layout("auto", rrsisd_root).kind == "rrsisd"
    assert detect_layout("auto", rrsisd_root / "rrsisd").kind == "rrsisd"
    assert detect_layout("auto", tile_dataset_root).name == "rsvl"  # the synthetic path
    assert detect_layout("auto", referring_dataset_root).name == "json"
    assert detect_layout("rrsis", rrsisd_root).kind == "rrsisd"  # the recipes' rrsis:PATH
    from rsvl_train.data.synthetic import make_tile_dataset

    regions = make_tile_dataset(tmp_path / "reg", 1, tile=32, split="train", layout="swjtu")
    assert detect_layout("yeseg", regions).name == "regions" and detect_layout("auto", regions).kind == "swjtu"


def test_wrong_layout_message(rrsisd_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as ei:
        detect_layout("yeseg", rrsisd_root)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"{rrsisd_root} does not look like YESeg-OPT-SAR: expected OPT/NAME.png, SAR/NAME.png, "
                          "label/**/NAME.png and train.txt/val.txt")
    assert msg.endswith("; found: images/, rrsisd/")
    (tmp_path / "e").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"does not look like any dataset .*found: an empty folder$"):
        detect_layout("auto", tmp_path / "e")
    with pytest.raises(DatasetNotFoundError, match=r"does not look like RRSIS-HR: expected rrsishr/refs"):
        detect_layout("rrsishr", rrsisd_root)
    for d in ("OPT", "SAR", "label"):
        (rrsisd_root / d).mkdir()
    (rrsisd_root / "train.txt").write_text("")
    with pytest.raises(DatasetError, match=r"fits several dataset layouts .*prefix the kind, e.g. --data yeseg:"):
        detect_layout("auto", rrsisd_root)
    assert detect_layout("rrsisd", rrsisd_root).kind == "rrsisd"


def test_open_datasets_and_task_check(yeseg_root: Path, rrsisd_root: Path, preprocess) -> None:
    spec = {"optical": preprocess["optical"], "sar": {"units": "db", "mean": [127.5], "std": [64.0]}}
    train, val = open_datasets("auto", yeseg_root, spec)
    assert isinstance(train, YESegDataset) and train.augment and not val.augment and len(val) == 1
    tr, va = open_datasets("rrsisd", rrsisd_root, spec, task="referring", size=S)
    assert isinstance(tr, ReferDataset) and len(tr) == 1 and len(va) == 2
    with pytest.raises(DatasetError, match=r"referring dataset \(RRSIS-D\) but the model is a semantic model"):
        open_datasets("auto", rrsisd_root, spec, task="semantic")
    assert len(open_datasets("yeseg", yeseg_root, spec, classes=YESEG_CLASSES)[0]) == 2
    with pytest.raises(DatasetError, match=r"labels have 8 class ids \(background, .*other\) but the model config "
                                           r"has 7 classes"):
        open_datasets("yeseg", yeseg_root, spec, classes=SWJTU_CLASSES)


def test_build_datasets_dispatch(rrsisd_root: Path, yeseg_root: Path, tmp_path: Path) -> None:
    """rsvl-train's data path: a wrong kind is refused with the layout message, a bare path is detected."""
    from rsvl_train.factory import get_model_config
    from rsvl_train.train import TrainConfig, build_datasets

    with pytest.raises(DatasetNotFoundError, match="does not look like SWJTU-Vision-Language"):
        build_datasets(TrainConfig(data=f"swjtu:{rrsisd_root}", tile=32), get_model_config("tsmnet-tiny"), tmp_path)
    train, _ = build_datasets(TrainConfig(data=str(rrsisd_root), tile=32), get_model_config("cadformer-tiny"),
                              tmp_path)
    assert isinstance(train, ReferDataset) and train[0]["image"].shape == (3, 32, 32)
    # the paper-scale tsmnet config lists 7 classes; YESeg-OPT-SAR's official ids are 8
    with pytest.raises(DatasetError, match="labels have 8 class ids"):
        build_datasets(TrainConfig(data=f"yeseg:{yeseg_root}", tile=32), get_model_config("tsmnet"), tmp_path)
