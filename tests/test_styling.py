"""GIS-native outputs (issue 13, items 1 and 2): colour tables, category names, RAT, .qml, score
scales, colours chosen by meaning, transparent nodata (rsvl_runtime.styling, rsvl_runtime.colours).

Runs drive ``run_scene`` with a fake per-pixel model on tiny GeoTIFFs and read the files back:
rasterio for colour tables, descriptions and scales (and the PAM side-car, which GDAL merges
into the band's metadata), xml.etree for the ``.aux.xml`` and ``.qml`` documents.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from PIL import Image

from rsvl_runtime import outputs as out
from rsvl_runtime.colours import (
    MIN_DELTA_E,
    NODATA_COLOR,
    UNCLASSIFIED_COLOR,
    class_palette,
    delta_e,
    meaning_color,
    palette_lut,
)
from rsvl_runtime.options import SceneOptions
from rsvl_runtime.scene import run_scene
from rsvl_runtime.styling import SCORE_SCALE, label_colormap, render_qml
from rsvl_runtime.vocabulary import (
    VocabularyError,
    load_vocabulary_file,
    parse_vocabulary,
)

from ._runtime_rasters import (
    OPTICAL_SPEC,
    SAR_SPEC,
    LinearModel,
    optical_array,
    sar_array,
    write_tif,
)

NAMES = ["water", "trees", "buildings", "road", "zorblax"]


def _run(tmp_path: Path, model: Any, names: list[str], *, cog: bool = True, opt_nodata: float | None = None,
         h: int = 80, w: int = 96, **kw: Any):  # type: ignore[no-untyped-def]
    o = optical_array(h, w)
    if opt_nodata is not None:
        o[:, :8, :] = int(opt_nodata)
    opt = write_tif(tmp_path / "optical.tif", o, nodata=opt_nodata)
    sar = write_tif(tmp_path / "sar.tif", sar_array(h, w))
    args: dict[str, Any] = {"class_names": names, "optical_spec": OPTICAL_SPEC, "sar_spec": SAR_SPEC, "tile": 64,
                            "overlap": 0.25, "batch": 4, "progress": False, "cog": cog, "stac": False}
    args.update(kw)
    return run_scene(model, str(opt), str(sar), tmp_path / "out", **args)


def _is_green(c: tuple[int, ...]) -> bool:
    return c[1] > c[0] + 40 and c[1] > c[2] + 40


def _is_blue(c: tuple[int, ...]) -> bool:
    return c[2] > c[0] + 60 and c[2] > c[1] + 20


# ----------------------------------------------------------------------------- labels.tif styled
@pytest.mark.parametrize("cog", [False, True])
def test_labels_carry_colour_table_categories_rat_and_qml(tmp_path: Path, cog: bool) -> None:
    _run(tmp_path, LinearModel(5), NAMES, cog=cog)
    d = tmp_path / "out"
    table = json.loads((d / out.CLASSES).read_text())["classes"]
    colors = [tuple(r["color"]) for r in table]
    assert [r["name"] for r in table] == NAMES
    with rasterio.open(d / out.LABELS) as ds:
        if cog:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"  # the final file, after the COG copy
        cmap = ds.colormap(1)
        assert [cmap[i][:3] for i in range(5)] == colors and all(cmap[i][3] == 255 for i in range(5))
        assert cmap[255] == (0, 0, 0, 0)  # nodata transparent (TIFF palettes hold no alpha: GDAL's rule)
        assert cmap[5][:3] == (0, 0, 0)
        assert ds.descriptions == ("class",)
        # GDAL read the PAM side-car labels.tif.aux.xml: its band metadata shows up
        assert json.loads(ds.tags(1)["class_names"]) == NAMES
    band = ET.parse(d / "labels.tif.aux.xml").getroot().find("PAMRasterBand")
    assert band is not None and band.get("band") == "1"
    assert [c.text for c in band.findall("CategoryNames/Category")] == NAMES
    rat = band.find("GDALRasterAttributeTable")
    assert rat is not None and rat.get("tableType") == "thematic"
    fields = [f.findtext("Name") for f in rat.findall("FieldDefn")]
    assert fields == ["Value", "Class", "Red", "Green", "Blue", "Alpha", "Count", "Area_m2"]
    assert [f.findtext("Usage") for f in rat.findall("FieldDefn")][:6] == ["5", "2", "6", "7", "8", "9"]
    rows = [[f.text for f in r.findall("F")] for r in rat.findall("Row")]
    assert [r[:2] for r in rows] == [[str(i), n] for i, n in enumerate(NAMES)]
    assert [tuple(int(v) for v in r[2:5]) for r in rows] == colors
    assert [int(r[6]) for r in rows] == [t["pixels"] for t in table] and sum(int(r[6]) for r in rows) == 80 * 96
    qml = ET.parse(d / "labels.qml").getroot()
    rr = qml.find("pipe/rasterrenderer")
    assert qml.tag == "qgis" and rr is not None and rr.get("type") == "paletted" and rr.get("band") == "1"
    entries = rr.findall("colorPalette/paletteEntry")
    assert [(e.get("value"), e.get("label")) for e in entries] == [(str(i), n) for i, n in enumerate(NAMES)]
    assert [e.get("color") for e in entries] == ["#{:02x}{:02x}{:02x}".format(*c) for c in colors]
    (nodata,) = rr.findall("rasterTransparency/singleValuePixelList/pixelListEntry")
    assert (nodata.get("min"), nodata.get("max"), nodata.get("percentTransparent")) == ("255", "255", "100")
    done = json.loads((d / out.DONE).read_text())
    assert {"labels.qml", "labels.tif.aux.xml"} <= set(done["outputs"]) and out.is_complete(d)


def test_scores_have_scale_one_over_255(tmp_path: Path) -> None:
    _run(tmp_path, LinearModel(5), NAMES)
    with rasterio.open(tmp_path / "out" / out.SCORES) as ds:
        assert ds.scales == (SCORE_SCALE,) * 5 and ds.offsets == (0.0,) * 5
        assert ds.descriptions == tuple(NAMES)
        band = ds.read(1)
    scaled = band * ds.scales[0]
    assert 0.0 < scaled.min() and scaled.max() <= 1.0


def test_statistics_added_to_the_aux_xml_keep_the_run_complete(tmp_path: Path) -> None:
    """GIS tools add statistics to .aux.xml side-cars: only their presence is checked."""
    _run(tmp_path, LinearModel(5), NAMES, cog=False)
    d = tmp_path / "out"
    aux = d / "labels.tif.aux.xml"
    aux.write_text(aux.read_text().replace("</PAMDataset>", "  <Metadata><MDI key='STATISTICS_MAXIMUM'>4</MDI>"
                                                            "</Metadata>\n</PAMDataset>"))
    assert out.is_complete(d)
    (d / "labels.qml").write_text("changed")
    assert not out.is_complete(d)


def test_referring_mask_has_colour_table_and_style(tmp_path: Path) -> None:
    class TwoClass:
        def __call__(self, optical: np.ndarray | None, sar: np.ndarray | None) -> np.ndarray:
            assert optical is not None
            x = optical[:, :1]
            return np.concatenate([-x, x], axis=1).astype(np.float32)

    _run(tmp_path, TwoClass(), ["background", "the lake"], task="referring", colors=[(200, 200, 200), (255, 64, 64)])
    d = tmp_path / "out"
    with rasterio.open(d / out.MASK) as ds:
        cmap = ds.colormap(1)
        assert cmap[0] == (200, 200, 200, 255) and cmap[1] == (255, 64, 64, 255) and cmap[255][3] == 0
        assert ds.descriptions == ("mask",)
    labels = [e.get("label") for e in ET.parse(d / "mask.qml").getroot().iter("paletteEntry")]
    assert labels == ["background", "the lake"]
    assert (d / "mask.tif.aux.xml").is_file()


def test_qml_and_colormap_functions() -> None:
    cmap = label_colormap([(1, 2, 3), (4, 5, 6)])
    assert len(cmap) == 256 and cmap[1] == (4, 5, 6, 255) and cmap[2] == (0, 0, 0, 0) and cmap[255][3] == 0
    root = ET.fromstring(render_qml(["a&b", "<c>"], [(255, 0, 0), (0, 0, 255)]).split("\n", 1)[1])
    assert [e.get("label") for e in root.iter("paletteEntry")] == ["a&b", "<c>"]  # escaped, round-trips


# ----------------------------------------------------------------------------- preview
def test_preview_nodata_transparent_and_legend_hatched(tmp_path: Path) -> None:
    _run(tmp_path, LinearModel(5), NAMES, cog=False, opt_nodata=0)
    d = tmp_path / "out"
    with rasterio.open(d / out.LABELS) as ds:
        labels = ds.read(1)
    assert (labels[:8] == 255).all() and (labels[8:] != 255).all()
    img = Image.open(d / out.PREVIEW)
    assert img.mode == "P"
    arr = np.asarray(img.convert("RGBA"))
    assert (arr[:8, :96, 3] == 0).all()  # nodata rows: transparent
    assert (arr[8:80, :96, 3] == 255).all()
    lut = palette_lut([tuple(r["color"]) for r in json.loads((d / out.CLASSES).read_text())["classes"]])
    np.testing.assert_array_equal(arr[8:80, :96], lut[labels[8:]])
    legend = arr[80:]
    assert (legend[..., 3] == 255).all()  # the legend strip is opaque
    # the nodata swatch (6th entry: one 200 px column in a 320 px canvas -> row 5, y 96..108) is hatched
    swatch = legend[97:108, 7:18, :3].reshape(-1, 3)
    assert {tuple(c) for c in swatch} >= {(255, 255, 255), (120, 120, 120)}


def test_preview_falls_back_to_rgba_beyond_the_palette() -> None:
    from rsvl_runtime.preview import LEGEND_FIRST, render_preview

    labels = (np.arange(60 * 300).reshape(60, 300) % 250).astype(np.uint8)
    labels[:5] = 255
    colors = [(i, 255 - i, (7 * i) % 256) for i in range(250)]  # more ids than LEGEND_FIRST
    img = render_preview(labels, colors, [f"c{i}" for i in range(250)])
    assert len(colors) > LEGEND_FIRST and img.mode == "RGBA"
    arr = np.asarray(img)
    np.testing.assert_array_equal(arr[:60, :300], palette_lut(colors)[labels])
    few = render_preview(labels % 7, colors[:7], [f"c{i}" for i in range(7)])
    assert few.mode == "P"
    np.testing.assert_array_equal(np.asarray(few.convert("RGBA"))[:60, :300], palette_lut(colors[:7])[labels % 7])
    # the legends of both draw the same greys and swatches
    np.testing.assert_array_equal(np.asarray(few.convert("RGBA"))[60:, :, 3], 255)


def test_palette_lut_is_rgba() -> None:
    lut = palette_lut([(10, 20, 30)])
    assert lut.shape == (256, 4) and tuple(lut[0]) == (10, 20, 30, 255)
    assert tuple(lut[255]) == (*NODATA_COLOR, 0) and lut[1, 3] == 0


# ----------------------------------------------------------------------------- colours by meaning
def test_custom_vocabulary_gets_colours_by_meaning() -> None:
    vocab = parse_vocabulary("Trees|forest,water,crops,Buildings,roads,bare soil,snow,qwerty,zxcvb")
    c = {v.name: v.color for v in vocab}
    assert _is_green(c["Trees"]) and _is_blue(c["water"])
    assert c["crops"][0] > 150 and c["crops"][1] > 150 and c["crops"][2] < 120  # yellow-green
    r, g, b = c["Buildings"]
    assert r > 180 and g < 80 and b < 80
    r, g, b = c["roads"]
    assert abs(r - g) < 10 and abs(g - b) < 10 and 90 < r < 190  # grey
    r, g, b = c["bare soil"]
    assert r > g > b  # brown
    assert min(c["snow"]) > 220  # white-ish
    taken = list(c.values()) + [NODATA_COLOR, UNCLASSIFIED_COLOR]
    for name in ("qwerty", "zxcvb"):  # unknown names: distinct from every other colour and nodata
        others = [t for t in taken if t != c[name]]
        assert min(delta_e(c[name], t) for t in others) >= MIN_DELTA_E


def test_meaning_matches_synonyms_plurals_and_head_nouns() -> None:
    assert _is_green(parse_vocabulary([{"name": "class A", "synonyms": ["Forests"]}, "b"])[0].color)
    assert meaning_color(["tall trees"]) == meaning_color(["tree"]) == meaning_color(["WOODLAND"])
    assert meaning_color(["water bodies"]) == meaning_color(["lakes"]) == meaning_color(["River"])
    assert meaning_color(["low vegetation"]) != meaning_color(["vegetation"])
    assert meaning_color(["qwerty"]) is None


def test_same_meaning_twice_gets_distinct_shades() -> None:
    pal = class_palette([["river"], ["lake"], ["sea"]])
    assert all(_is_blue(c) or c[2] >= max(c[:2]) for c in pal)
    assert min(delta_e(a, b) for i, a in enumerate(pal) for b in pal[i + 1:]) >= MIN_DELTA_E


def test_many_classes_stay_apart() -> None:
    pal = class_palette([[f"class {i}"] for i in range(40)])
    assert len(set(pal)) == 40
    d = [delta_e(a, b) for i, a in enumerate(pal) for b in pal[i + 1:]]
    assert min(d) >= MIN_DELTA_E * 0.5  # 40 hues cannot all be 20 apart; none collide
    assert min(delta_e(c, NODATA_COLOR) for c in pal) >= MIN_DELTA_E


def test_vocab_file_colours_win(tmp_path: Path) -> None:
    f = tmp_path / "v.json"
    f.write_text(json.dumps([{"name": "water", "color": [255, 0, 0]}, {"name": "trees"}, "lake"]))
    vocab = load_vocabulary_file(f)
    assert vocab[0].color == (255, 0, 0) and _is_green(vocab[1].color) and _is_blue(vocab[2].color)
    f.write_text(json.dumps([{"name": "water", "color": [300, 0, 0]}, "trees"]))
    with pytest.raises(VocabularyError, match=r"class 'water' has the colour \[300, 0, 0\]: give three integers"):
        load_vocabulary_file(f)


def test_scene_options_fill_missing_colours_by_meaning() -> None:
    opts = SceneOptions(class_names=("road", "water", "qwerty"), tile=64, overlap=0.25, batch=2,
                        colors=((1, 2, 3),))
    pal = opts.check()
    assert pal[0] == (1, 2, 3) and _is_blue(pal[1]) and len(pal) == 3
    assert opts.check() == pal  # deterministic (the resume signature holds it)
