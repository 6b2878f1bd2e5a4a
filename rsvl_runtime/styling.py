"""Styling of the output rasters, so that QGIS and ArcGIS show them right away.

- :func:`label_colormap`: the GDAL colour table of ``labels.tif``/``mask.tif`` (one opaque
  entry per label id, nodata 255 transparent — a TIFF palette holds no alpha, GDAL gives the
  nodata entry alpha 0 — unused ids black); the row writer puts it into the GeoTIFF when it
  creates it (:class:`rsvl_runtime.outputs.GeoTiffRowWriter`), and the COG rewrite keeps it.
- :func:`write_aux_xml`: the GDAL PAM side-car ``labels.tif.aux.xml``: the band description,
  ``<CategoryNames>`` (GDAL, QGIS "paletted" and ArcGIS use them as labels) and a thematic
  ``<GDALRasterAttributeTable>`` (Value, Class, Red, Green, Blue, Alpha, Count, Area_m2), and
  ``class_names`` band metadata. (GeoTIFF cannot hold category names or a RAT itself.)
- :func:`write_qml`: the QGIS style ``labels.qml`` next to it (QGIS loads ``<name>.qml``
  itself): a "paletted" renderer with one entry per label id, "unclassified" included, and
  nodata 255 transparent.
- :data:`SCORE_SCALE`: the scale of ``scores.tif`` bands (1/255, offset 0), so that GIS tools
  show probabilities 0..1.

:func:`style_outputs` writes the side-cars of a finished run into its output stage
(:class:`rsvl_runtime.outputs.OutputStage`), so that the commit and ``done.json`` list them.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

from .colours import NODATA_COLOR
from .files import atomic_write_text
from .outputs import LABEL_NODATA, OutputStage

PathLike = str | os.PathLike[str]

#: Value scale of a scores.tif band: stored 0..255 -> score 0..1.
SCORE_SCALE = 1.0 / 255.0
#: QGIS version written into the style (the paletted renderer has this form since QGIS 3.0).
QGIS_VERSION = "3.28.0"

RGBA = tuple[int, int, int, int]


def qml_name(raster_name: str) -> str:
    """``labels.tif`` -> ``labels.qml`` (the name QGIS looks for)."""
    return raster_name.rsplit(".", 1)[0] + ".qml"


def aux_name(raster_name: str) -> str:
    """``labels.tif`` -> ``labels.tif.aux.xml`` (GDAL's PAM side-car)."""
    return raster_name + ".aux.xml"


def label_colormap(palette: Sequence[Sequence[int]]) -> dict[int, RGBA]:
    """A full 256-entry GDAL colour table: id -> its colour (opaque), other ids transparent."""
    cmap: dict[int, RGBA] = {i: (*NODATA_COLOR, 0) for i in range(256)}
    for i, c in enumerate(palette[:LABEL_NODATA]):
        cmap[i] = (int(c[0]), int(c[1]), int(c[2]), 255)
    return cmap


def _hex(c: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in c[:3]))


def _xml(root: ET.Element) -> str:
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def render_aux_xml(names: Sequence[str], palette: Sequence[Sequence[int]], description: str,
                   table: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The PAM document of a one-band label raster: description, category names, thematic RAT
    (``table``: classes.json rows, for the Count and Area_m2 columns) and ``class_names``."""
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    ET.SubElement(band, "Description").text = description
    cats = ET.SubElement(band, "CategoryNames")
    for n in names:
        ET.SubElement(cats, "Category").text = str(n)
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    # GDAL field types: 0 integer, 1 real, 2 string; usages: 5 MinMax, 2 Name, 6..9 RGBA, 1 PixelCount, 0 generic
    fields = [("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8), ("Alpha", 0, 9),
              ("Count", 1, 1), ("Area_m2", 1, 0)]
    for i, (name, kind, usage) in enumerate(fields):
        fd = ET.SubElement(rat, "FieldDefn", index=str(i))
        ET.SubElement(fd, "Name").text = name
        ET.SubElement(fd, "Type").text = str(kind)
        ET.SubElement(fd, "Usage").text = str(usage)
    rows = {int(r["id"]): r for r in (table or [])}
    for i, (n, c) in enumerate(zip(names, palette)):
        row = ET.SubElement(rat, "Row", index=str(i))
        r = rows.get(i, {})
        for v in (i, n, int(c[0]), int(c[1]), int(c[2]), 255, int(r.get("pixels", 0)), float(r.get("area_m2", 0.0))):
            ET.SubElement(row, "F").text = str(v)
    md = ET.SubElement(band, "Metadata")
    ET.SubElement(md, "MDI", key="class_names").text = json.dumps(list(map(str, names)))
    return _xml(root)


def render_qml(names: Sequence[str], palette: Sequence[Sequence[int]]) -> str:
    """A QGIS layer style: "paletted" renderer on band 1, one entry per id, nodata transparent."""
    root = ET.Element("qgis", version=QGIS_VERSION, styleCategories="AllStyleCategories")
    pipe = ET.SubElement(root, "pipe")
    rr = ET.SubElement(pipe, "rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1",
                       nodataColor="")
    transparency = ET.SubElement(rr, "rasterTransparency")
    single = ET.SubElement(transparency, "singleValuePixelList")
    ET.SubElement(single, "pixelListEntry", min=str(LABEL_NODATA), max=str(LABEL_NODATA), percentTransparent="100")
    palette_el = ET.SubElement(rr, "colorPalette")
    for i, (n, c) in enumerate(zip(names, palette)):
        ET.SubElement(palette_el, "paletteEntry", value=str(i), color=_hex(c), alpha="255", label=str(n))
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "huesaturation", saturation="0", grayscaleMode="0", colorizeOn="0")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + _xml(root)


def write_aux_xml(path: PathLike, names: Sequence[str], palette: Sequence[Sequence[int]], description: str,
                  table: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Write :func:`render_aux_xml` atomically."""
    atomic_write_text(path, render_aux_xml(names, palette, description, table))


def write_qml(path: PathLike, names: Sequence[str], palette: Sequence[Sequence[int]]) -> None:
    """Write :func:`render_qml` atomically."""
    atomic_write_text(path, render_qml(names, palette))


def style_outputs(stage: OutputStage, raster_name: str, table: Sequence[Mapping[str, Any]],
                  description: str = "class") -> list[str]:
    """Stage ``<raster>.aux.xml`` and ``<raster stem>.qml`` for the label raster ``raster_name``
    from the class table (rows ``id, name, color, ...``); returns the staged names."""
    names = [str(r["name"]) for r in table]
    palette = [r["color"] for r in table]
    aux, qml = aux_name(raster_name), qml_name(raster_name)
    write_aux_xml(stage.temp(aux), names, palette, description, table)
    write_qml(stage.temp(qml), names, palette)
    return [aux, qml]
