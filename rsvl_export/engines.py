"""TensorRT engines of a bundle: optimisation profiles from the graph's dynamic axes, and the
build step shared by ``rsvl-export`` and ``rsvl-export rebuild-engine``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .tensorrt_build import TensorRTUnavailable, build_engine, tensorrt_available, trtexec_command

log = logging.getLogger("rsvl.export")


def engine_profiles(inputs: dict[str, Any], max_batch: int, max_vocab: int
                    ) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """TensorRT optimisation profile (min, opt, max) per image-graph input: the symbolic axes
    B in 1..max_batch and K in 1..max_vocab; the static axes (tile size, bands) fixed."""
    sizes = {"B": (1, max(1, min(8, max_batch)), max_batch), "K": (1, max(1, min(16, max_vocab)), max_vocab)}
    profiles = {}
    for name, meta in inputs.items():
        lo, mid, hi = [], [], []
        for d in meta["shape"]:
            a, b, c = sizes.get(d, (1, 1, 1)) if isinstance(d, str) else (d, d, d)
            lo.append(a), mid.append(b), hi.append(c)
        profiles[name] = (lo, mid, hi)
    return profiles


def build_image_engine(src: Path, out_dir: Path, precision: str, inputs: dict[str, Any], max_batch: int,
                       max_vocab: int, required: bool, timing_cache: str | None = None) -> dict[str, Any] | None:
    """Build ``image.<precision>.engine`` from ``src`` into ``out_dir`` and return its manifest entry.

    Without TensorRT or a GPU: raise :class:`TensorRTUnavailable` when ``required``, else log the
    exact ``trtexec`` command for the target machine and return None.
    """
    profiles = engine_profiles(inputs, max_batch, max_vocab)
    fp16 = precision == "fp16"
    ok, reason = tensorrt_available()
    if not ok:
        cmd = trtexec_command(src, profiles, fp16)
        if required:
            raise TensorRTUnavailable(f"--engine tensorrt: {reason}. Build on the target GPU machine with "
                                      f"`rsvl-export rebuild-engine BUNDLE` or:\n  {cmd}")
        log.info("  no engine built (%s). On the target GPU machine run `rsvl-export rebuild-engine BUNDLE`, or:\n"
                 "    %s", reason, cmd)
        return None
    cache = Path(timing_cache) if timing_cache else Path.home() / ".cache" / "rsvl" / "trt_timing.cache"
    cache.parent.mkdir(parents=True, exist_ok=True)
    name = f"image.{precision}.engine"
    info = build_engine(src, out_dir / name, profiles, fp16=fp16, timing_cache_path=cache)
    meta = info.to_dict() if hasattr(info, "to_dict") else dict(vars(info))
    meta.update({"graph": "image", "file": name, "precision": precision})
    return meta
