"""report.html as a GIS user reads it (rsvl_runtime.report): legend, formatted areas, nodata row,
vocabulary and prompts, optical thumbnail, human timing names — in the file and, rendered by
headless Chromium, in the browser's DOM (a screenshot is kept under $RSVL_TEST_ARTIFACTS,
default tests/artifacts/)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rsvl_runtime import outputs as out
from rsvl_runtime.report import (
    format_area,
    optical_thumbnail,
    render_report,
    timing_label,
)
from rsvl_runtime.scene import run_scene

from ._runtime_rasters import (
    OPTICAL_SPEC,
    SAR_SPEC,
    LinearModel,
    optical_array,
    sar_array,
    write_tif,
)

NAMES = ["water", "forest", "urban"]
VOCAB = [{"name": "water", "synonyms": ["lake", "river"], "color": [31, 119, 180],
          "prompts": ["a satellite image of water.", "a satellite image of lake.", "a satellite image of river."]},
         {"name": "forest", "synonyms": [], "color": [44, 160, 44], "prompts": ["a satellite image of forest."]},
         {"name": "urban", "synonyms": ["buildings"], "color": [214, 39, 40],
          "prompts": ["a satellite image of urban.", "a satellite image of buildings."]}]
H, W, NODATA_ROWS = 96, 128, 16  # 10 m pixels: 100 m² each; the first 16 rows are nodata
ARTIFACTS = Path(os.environ.get("RSVL_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")


def _scene(tmp_path: Path) -> tuple[Path, Path]:
    o = optical_array(H, W)
    o[:, :NODATA_ROWS] = 0
    return (write_tif(tmp_path / "optical.tif", o, nodata=0),
            write_tif(tmp_path / "sar.tif", sar_array(H, W)))


def _run(tmp_path: Path, **kw: Any) -> Path:
    opt, sar = _scene(tmp_path)
    args: dict[str, Any] = {"class_names": NAMES, "colors": [v["color"] for v in VOCAB], "optical_spec": OPTICAL_SPEC,
                            "sar_spec": SAR_SPEC, "tile": 64, "overlap": 0.25, "batch": 4, "progress": False,
                            "cog": False, "vocabulary": VOCAB, "stac": False,
                            "bundle_info": {"model": "tsmnet-tiny", "digest": "abc123"}}
    args.update(kw)
    res = run_scene(LinearModel(len(args["class_names"])), str(opt), str(sar), tmp_path / "out", **args)
    return res.out_dir


def _images(text: str) -> dict[str, bytes]:
    return {alt: base64.b64decode(b64) for alt, b64 in
            re.findall(r"<img alt='([^']+)' src='data:image/(?:png|webp);base64,([A-Za-z0-9+/=]+)'>", text)}


@pytest.fixture(scope="module")
def semantic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("report"))


def test_format_area_units_and_separators() -> None:
    assert format_area(12_345_678) == "12.35 km²"
    assert format_area(1_500_000_000) == "1,500.00 km²"
    assert format_area(45_600) == "4.56 ha"
    assert format_area(999_999) == "100.00 ha"
    assert format_area(1234.4) == "1,234 m²"
    assert format_area(0) == "0 m²"
    assert format_area(2.25) == "2.2 m²"


def test_timing_labels_and_fallback() -> None:
    assert timing_label("read_s") == ("Reading inputs", "s")
    assert timing_label("predict_s") == ("Model inference", "s")
    assert timing_label("gpu_warmup_s") == ("Gpu warmup", "s")
    assert timing_label("scenes_per_s") == ("Throughput", "scenes/s")
    assert timing_label("odd_key") == ("Odd key", "")


def test_report_of_a_run(semantic_run: Path) -> None:
    text = (semantic_run / out.REPORT).read_text(encoding="utf-8")
    table = json.loads((semantic_run / out.CLASSES).read_text())
    rows = table["classes"] if isinstance(table, dict) else table
    assert "http" not in text.replace("http-equiv", "")  # self-contained
    # legend in HTML: swatch colour + name for every class, and nodata
    legend = re.search(r"<ul class=legend id=legend>(.*?)</ul>", text, re.DOTALL)
    assert legend is not None
    for v in VOCAB:
        r, g, b = v["color"]
        assert f"rgb({r},{g},{b})" in legend.group(1) and f"<b>{v['name']}</b>" in legend.group(1)
    assert "<b>nodata</b>" in legend.group(1)
    # areas table: formatted areas of classes.json, the nodata row, the total
    areas = re.search(r"<table id=areas>(.*?)</table>", text, re.DOTALL)
    assert areas is not None
    for c in rows:
        if c["name"] in NAMES:
            assert f"<td>{c['pixels']:,}</td><td>{format_area(c['area_m2'])}</td>" in areas.group(1)
    nodata_px = NODATA_ROWS * W
    assert f"nodata</td><td>{nodata_px:,}</td><td>20.48 ha</td><td>204,800</td>" in areas.group(1)
    assert f"total</th><th>{H * W:,}</th><th>1.23 km²</th><th>1,228,800</th>" in areas.group(1)
    # vocabulary with synonyms and prompts
    vocab = re.search(r"<table id=vocabulary>(.*?)</table>", text, re.DOTALL)
    assert vocab is not None and "lake, river" in vocab.group(1)
    assert "<li>a satellite image of buildings.</li>" in vocab.group(1)
    # human timing names, no internal keys as labels
    assert ">Reading inputs<" in text and ">Model inference<" in text and ">Total<" in text
    assert ">read_s<" not in text and ">total_s<" not in text


def test_optical_thumbnail(semantic_run: Path) -> None:
    from PIL import Image

    imgs = _images((semantic_run / out.REPORT).read_text(encoding="utf-8"))
    assert set(imgs) == {"input image", "labels preview"}
    thumb = Image.open(io.BytesIO(imgs["input image"]))
    assert thumb.format == "WEBP" and "data:image/webp;base64," in (semantic_run / out.REPORT).read_text()
    assert thumb.mode == "RGBA" and thumb.size == (W, H)
    a = np.asarray(thumb)
    assert (a[:NODATA_ROWS, :, 3] == 0).all() and (a[NODATA_ROWS:, :, 3] == 255).all()  # nodata transparent
    valid = a[NODATA_ROWS:, :, :3]
    assert valid.min() == 0 and valid.max() == 255  # p2..p98 stretched


def test_thumbnail_is_decimated(tmp_path: Path) -> None:
    from PIL import Image

    p = write_tif(tmp_path / "big.tif", optical_array(300, 1100))
    img = Image.open(io.BytesIO(optical_thumbnail(p, (1, 2, 3), None, OPTICAL_SPEC, max_size=256)))
    assert max(img.size) == 256 and img.size == (256, 70)


def test_referring_report(tmp_path: Path) -> None:
    d = _run(tmp_path, task="referring", class_names=["background", "target"], colors=None, vocabulary=None,
             bundle_info={"model": "cadformer-tiny", "expression": "the lake in the north"})
    assert (d / out.MASK).is_file()
    text = (d / out.REPORT).read_text(encoding="utf-8")
    assert "<p id=expression>“the lake in the north”</p>" in text
    assert "<b>target</b>" in text and "id=vocabulary" not in text


def test_render_report_escapes_and_accepts_paths() -> None:
    table = [{"id": 0, "name": "<water>", "color": [0, 0, 255], "pixels": 3, "area_m2": 300.0, "fraction": 1.0}]
    text = render_report(title="t", preview_png=b"\x89PNGfake", table=table, timings={"total_s": 1.5, "new_step_s": 2},
                         inputs={"optical": "/x/o.tif"}, raster={"crs": "EPSG:32633"}, nodata=(0, 0.0))
    assert "&lt;water&gt;" in text and "<water>" not in text
    assert ">New step<" in text and "2.00 s" in text and "/x/o.tif" in text
    assert "<td>300 m²</td>" in text


# ----------------------------------------------------------------------------- headless Chromium
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_report_renders_in_chromium(semantic_run: Path) -> None:
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (scripts/test.sh installs it with apt-get: "
                    "`apt-get install -y chromium`)")
    url = (semantic_run / out.REPORT).resolve().as_uri()
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={semantic_run.parent / 'chromium-profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", url], check=False, capture_output=True, text=True,
                         timeout=120).stdout
    assert "<ul class=\"legend\" id=\"legend\">" in dom
    for name in NAMES:
        assert f"<b>{name}</b>" in dom
    assert "<table id=\"areas\">" in dom and "20.48 ha" in dom and "1.23 km²" in dom
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2000", url],
                   check=False, capture_output=True, timeout=120)
    from PIL import Image

    img = Image.open(shot)
    assert img.size == (1280, 2000)
    assert len(np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0)) > 50  # rendered images, not blank


def test_sar_only_run_shows_the_sar_in_grey(tmp_path: Path) -> None:
    from PIL import Image

    sar = write_tif(tmp_path / "sar.tif", sar_array(64, 80))
    res = run_scene(LinearModel(3), None, str(sar), tmp_path / "out", class_names=NAMES, colors=None,
                    optical_spec=OPTICAL_SPEC, sar_spec=SAR_SPEC, tile=64, overlap=0.25, batch=4, progress=False,
                    cog=False, stac=False)
    text = (res.out_dir / out.REPORT).read_text(encoding="utf-8")
    assert "<figcaption>SAR input (bands 1; display stretch p2–p98; nodata transparent)</figcaption>" in text
    # lossy WebP (no alpha stored where every pixel is valid): grey within the codec's rounding
    a = np.asarray(Image.open(io.BytesIO(_images(text)["input image"])).convert("RGBA")).astype(int)
    assert a.shape == (64, 80, 4) and (a[..., 3] == 255).all()
    assert np.abs(a[..., 0] - a[..., 1]).max() <= 2 and np.abs(a[..., 0] - a[..., 2]).max() <= 2
    assert a[..., 1].min() <= 2 and a[..., 1].max() >= 253
