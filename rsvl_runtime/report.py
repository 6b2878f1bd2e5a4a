"""``report.html``: the self-contained report of a run (preview embedded as base64, the class
table, raster information, inputs, timings and the bundle).
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .files import atomic_write_text
from .finished import FinishedRun
from .outputs import utc_now

PathLike = str | os.PathLike[str]


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.sw{display:inline-block;width:14px;height:14px;
border:1px solid #555;vertical-align:middle}pre{background:#f7f7f7;padding:8px;overflow:auto}
img{max-width:100%;border:1px solid #ccc}"""


def _kv_table(items: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th class=l>{html.escape(str(k))}</th><td class=l>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in items.items())
    return f"<table>{rows}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    return str(v)


def render_report(*, title: str, preview_png: bytes, table: Sequence[Mapping[str, Any]],
                  timings: Mapping[str, Any], inputs: Mapping[str, Any], raster: Mapping[str, Any],
                  bundle_info: Mapping[str, Any] | None = None) -> str:
    """Self-contained HTML report: preview (base64), legend/area table, raster info, inputs,
    timings and bundle information."""
    b64 = base64.b64encode(preview_png).decode("ascii")
    rows = []
    for c in table:
        r, g, b = c["color"]
        rows.append(
            f"<tr><td class=l><span class=sw style='background:rgb({r},{g},{b})'></span></td>"
            f"<td>{c['id']}</td><td class=l>{html.escape(str(c['name']))}</td><td>{c['pixels']}</td>"
            f"<td>{c['area_m2']:.1f}</td><td>{c['area_m2'] / 1e6:.4f}</td><td>{100 * c['fraction']:.2f}%</td></tr>")
    classes = ("<table><tr><th class=l>colour</th><th>id</th><th class=l>class</th><th>pixels</th>"
               "<th>area m²</th><th>area km²</th><th>fraction</th></tr>" + "".join(rows) + "</table>")
    bundle = (f"<h2>Model bundle</h2><pre>{html.escape(json.dumps(bundle_info, indent=2, default=str))}</pre>"
              if bundle_info else "")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<img alt='preview' src='data:image/png;base64,{b64}'>"
            f"<h2>Classes</h2>{classes}<h2>Raster</h2>{_kv_table(raster)}"
            f"<h2>Inputs</h2>{_kv_table(inputs)}<h2>Timings</h2>{_kv_table(timings)}{bundle}"
            f"<p><small>generated {html.escape(utc_now())} by rsvl_runtime</small></p></body></html>\n")


def write_report(path: PathLike, run: FinishedRun, preview_png: bytes) -> None:
    """The report of a finished run (:func:`render_report`), written atomically to ``path``."""
    atomic_write_text(path, render_report(title=run.title, preview_png=preview_png, table=run.class_table,
                                          timings=run.timings, inputs={k: v["path"] for k, v in run.inputs.items()},
                                          raster=run.raster, bundle_info=run.bundle_info))

