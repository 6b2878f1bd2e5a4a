"""Optimisation profiles (min/opt/max shapes per dynamic input) and the commands that rebuild an
engine: shared by the build, the session and the refusal messages."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Shape = Sequence[int]
#: input name -> (min, opt, max) shapes, or -> {"min": [...], "opt": [...], "max": [...]}
Profiles = Mapping[str, Any]


def profile_triplet(p: Any) -> tuple[list[int], list[int], list[int]]:
    """(min, opt, max) of either accepted profile form."""
    if isinstance(p, Mapping):
        return list(p["min"]), list(p["opt"]), list(p["max"])
    mn, opt, mx = p
    return list(mn), list(opt), list(mx)


def normalize_profiles(profiles: Profiles) -> dict[str, dict[str, list[int]]]:
    """``{input: {"min": [...], "opt": [...], "max": [...]}}`` from either accepted form, validated."""
    out: dict[str, dict[str, list[int]]] = {}
    for name, p in profiles.items():
        mn, opt, mx = (list(map(int, s)) for s in profile_triplet(p))
        if not (len(mn) == len(opt) == len(mx)):
            raise ValueError(f"profile of {name!r}: min/opt/max ranks differ: {mn} / {opt} / {mx}")
        if any(not (a <= b <= c) for a, b, c in zip(mn, opt, mx)):
            raise ValueError(f"profile of {name!r}: need min <= opt <= max per axis, got {mn} / {opt} / {mx}")
        if any(a < 0 for a in mn):
            raise ValueError(f"profile of {name!r}: negative size in {mn}")
        out[name] = {"min": mn, "opt": opt, "max": mx}
    return out


def graph_profiles(inputs: Mapping[str, Any], sizes: Mapping[str, tuple[int, int, int]]
                   ) -> dict[str, dict[str, list[int]]]:
    """Profiles for a graph's inputs as the manifest describes them (``{"shape": ["B", 3, 256, 256]}``):
    each symbolic axis takes ``sizes[axis]`` = (min, opt, max), static axes stay fixed."""
    out: dict[str, tuple[list[int], list[int], list[int]]] = {}
    for name, meta in inputs.items():
        lo: list[int] = []
        mid: list[int] = []
        hi: list[int] = []
        for d in meta["shape"]:
            if isinstance(d, str):
                if d not in sizes:
                    raise ValueError(f"input {name!r} has a dynamic axis {d!r} without a size range "
                                     f"(known: {sorted(sizes)})")
                a, b, c = sizes[d]
            else:
                a = b = c = int(d)
            lo.append(a)
            mid.append(b)
            hi.append(c)
        out[name] = (lo, mid, hi)
    return normalize_profiles(out)


def check_shape_in_profile(name: str, shape: Shape, profile: Any) -> None:
    """Raise ``ValueError`` (both shapes in the message) if ``shape`` is outside ``profile``."""
    mn, _, mx = profile_triplet(profile)
    shape = [int(s) for s in shape]
    if len(shape) != len(mn) or any(s < a or s > b for s, a, b in zip(shape, mn, mx)):
        raise ValueError(f"input {name!r} has shape {shape}, outside the engine's optimisation profile "
                         f"min {list(mn)} .. max {list(mx)}: split the batch/vocabulary into chunks inside the "
                         "profile, or rebuild the engine with larger --max-batch/--max-vocab")


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def trtexec_command(onnx_path: str | os.PathLike[str], profiles: Profiles, fp16: bool = True,
                    engine_path: str | os.PathLike[str] | None = None,
                    timing_cache: str | os.PathLike[str] | None = None,
                    workspace_gb: float | None = None) -> str:
    """The enterprise ``trtexec`` command line that builds the same engine as ``build_engine``.

    ``--stronglyTyped``: precision comes from the ONNX graph (pass the FP16 ONNX for an FP16
    engine). It is required on TensorRT 10.12+ (weak typing deprecated) and a no-op on 11.x.
    On TensorRT < 10.12 replace it with ``--fp16`` and pass the FP32 ONNX.
    """
    onnx_path = Path(onnx_path)
    prof = normalize_profiles(profiles)
    if engine_path is None:
        stem = onnx_path.name.removesuffix(".onnx")
        if fp16 and not stem.endswith(".fp16"):
            stem += ".fp16"
        engine_path = onnx_path.with_name(stem + ".engine")
    parts = ["trtexec", f"--onnx={shlex.quote(str(onnx_path))}", "--stronglyTyped"]
    for key, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
        if prof:
            parts.append(f"{flag}=" + ",".join(f"{n}:{_dims(p[key])}" for n, p in prof.items()))
    if workspace_gb:
        parts.append(f"--memPoolSize=workspace:{int(workspace_gb * 1024)}M")
    if timing_cache:
        parts.append(f"--timingCacheFile={shlex.quote(str(timing_cache))}")
    parts.append(f"--saveEngine={shlex.quote(str(engine_path))}")
    return " ".join(parts)


def rebuild_hint(engine_path: str | os.PathLike[str], engine_meta: Mapping[str, Any]) -> str:
    """How to rebuild an engine for this machine: ``rsvl-export rebuild-engine BUNDLE`` with the
    engine's flavour, and for enterprise TensorRT the exact ``trtexec`` command as well."""
    engine_path = Path(engine_path)
    flavour = str(engine_meta.get("flavour", "tensorrt"))
    hint = f"`rsvl-export rebuild-engine {engine_path.parent} --engine {flavour}`"
    profiles = engine_meta.get("profiles")
    if flavour == "tensorrt" and profiles:
        precision = str(engine_meta.get("precision", "fp16"))
        onnx_name = engine_meta.get("onnx") or f"{engine_meta.get('graph', 'image')}.{precision}.onnx"
        try:
            cmd = trtexec_command(engine_path.parent / onnx_name, profiles, precision == "fp16",
                                  engine_path=engine_path)
            hint += f", or `{cmd}`"
        except (ValueError, KeyError, TypeError):
            pass
    return hint


#: The temporary work folders engines are built in: the export's ``.NAME.partial`` beside the bundle
#: folder NAME (``rsvl_export/pipeline.py``) and a rebuild's ``.rebuild-XXXX`` inside the bundle
#: (``rsvl_export/rebuild.py``). Both are gone when the command ends.
_EXPORT_WORK = re.compile(r"(^|[\s`'\"=(/])\.([^/\s`'\"]+)\.partial(?=/)")
_REBUILD_WORK = re.compile(r"/\.rebuild-[^/\s`'\"]+(?=/)")


def final_bundle_paths(text: str) -> str:
    """``text`` (an error or a hint such as :func:`trtexec_command`'s) with the paths into the
    temporary build folders, deleted when the command ends, pointed at the bundle folder they
    become: ``bundles/.x.partial/image.fp16.onnx`` -> ``bundles/x/image.fp16.onnx``,
    ``B/.rebuild-k3j/image.fp16.engine`` -> ``B/image.fp16.engine``."""
    return _REBUILD_WORK.sub("", _EXPORT_WORK.sub(r"\1\2", text))


__all__ = ["Profiles", "Shape", "check_shape_in_profile", "final_bundle_paths", "graph_profiles",
           "normalize_profiles", "profile_triplet", "rebuild_hint", "trtexec_command"]
