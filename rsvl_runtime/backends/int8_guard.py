"""Whether an INT8 ONNX Runtime variant (``image.ort.onnx``, ``text.ort.onnx``) computes on this
CPU what its export checked: u8 x s8 products saturate without VNNI."""

from __future__ import annotations

import logging

from ..manifest import GraphEntry

log = logging.getLogger("rsvl.runtime")


def int8_refusal(graph: GraphEntry) -> str | None:
    """Why a graph's INT8 ``.ort.onnx`` variant (``image.ort.onnx``, ``text.ort.onnx``) would
    compute something else on this CPU than where its parity was checked; None when it is not
    INT8 or is safe here.

    Without VNNI (AVX2's ``vpmaddubsw``) pairs of u8*s8 products saturate at int16, so a variant
    validated on a VNNI CPU with s8 weights computes something else here. It is safe when this
    CPU has VNNI, when its weights are u8 (ORT's u8 x u8 kernels widen before they multiply) or
    7-bit (``reduce_range``: the pair sums cannot saturate), or when its parity was checked on a
    CPU without VNNI (the saturation was in the check)."""
    rep = graph.ort_report or {}
    if not str(rep.get("variant", "")).startswith("int8"):
        return None
    from ..cpu import has_vnni

    if (has_vnni() or rep.get("weights") == "u8" or rep.get("reduce_range") is True
            or (rep.get("cpu") or {}).get("vnni") is False):
        return None
    return (f"{graph.ort} is INT8 with s8 weights validated on a CPU with VNNI, and this CPU has none "
            "(its u8*s8 products saturate)")


def int8_safe(graph: GraphEntry) -> bool:
    """:func:`int8_refusal` is None; else a warning that names the fallback and the fix."""
    why = int8_refusal(graph)
    if why is not None:
        log.warning("%s: using %s. Re-export with --ort-optimize on this kind of CPU to "
                    "validate a variant for it", why, graph.fp32)
    return why is None
