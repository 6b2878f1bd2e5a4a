"""Engine vs ONNX Runtime FP32 on the same bundle, for the GPU check (``scripts/gpu_check.sh``).

    python -m benchmarks.engine_parity --bundle DIR --out parity.json [--batch 1,8,32]

For a semantic bundle: the text engine's class embeddings against the FP32 text graph's, and
the image engine's logits against the FP32 image graph's on synthetic tiles (the export's parity
tiles, ``rsvl_train.data.synthetic.tiles``), at
each batch size (gates: cosine >= 0.999, argmax agreement >= 0.995). It also times two launches
of the engine session (the second one finds TensorRT-RTX's runtime cache). Where an engine
cannot run, the exact refusal is recorded instead and the script still exits 0, so the check
goes on to the next measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

GATE = {"cosine": 0.999, "argmax_agreement": 0.995}


def _tiles(bundle: Any, batch: int, seed: int) -> dict[str, np.ndarray]:
    """``batch`` normalised synthetic tiles (realistic classes) for the bundle's modalities, as the
    runtime feeds them, from the export's generator (:mod:`rsvl_train.data.synthetic.tiles`)."""
    from rsvl_train.data.synthetic.tiles import synthetic_tiles

    return synthetic_tiles(bundle.meta.modalities, batch, bundle.tile_size, seed)


def _load(bundle: Any, backend: str) -> tuple[Any, float]:
    from rsvl_runtime import Segmenter
    from rsvl_runtime.backends import load_sessions

    t0 = time.perf_counter()
    seg = Segmenter(bundle, load_sessions(bundle, backend, "auto" if backend == "tensorrt" else "fp32"))
    seg.set_vocabulary([c["name"] for c in bundle.meta.default_vocabulary])
    return seg, time.perf_counter() - t0


def engine_parity(bundle_path: str, batches: list[int]) -> dict[str, Any]:
    from rsvl_export.parity import compare_metrics
    from rsvl_runtime.backends.tensorrt import bundle_engine, check_engine
    from rsvl_runtime.bundle import Bundle

    b = Bundle.load(bundle_path)
    doc: dict[str, Any] = {"bundle": str(b.root), "model": b.meta.model, "host": platform.node(),
                           "engines": [], "cases": [], "gate": GATE}
    for graph in ("image", "text"):
        eng = bundle_engine(b.manifest, graph)  # the serialised entry: check_engine reads a mapping
        if eng:
            c = check_engine(b.path(eng["file"]), eng)
            doc["engines"].append({"file": eng["file"], "flavour": eng.get("flavour"), "version": eng.get("version"),
                                   "targets": eng.get("targets"), "valid_here": c.ok, "reason": c.reason,
                                   "diagnostics": c.diagnostics})
    if b.task != "semantic":
        doc["skipped"] = "engine parity is measured on semantic bundles"
        return doc
    ref, _ = _load(b, "onnxruntime-cpu")
    try:
        trt, first_s = _load(b, "tensorrt")
    except Exception as e:  # noqa: BLE001 - record the exact refusal, e.g. Hopper and TensorRT-RTX
        doc["refusal"] = f"{type(e).__name__}: {e}"
        return doc
    doc["first_launch_s"] = round(first_s, 3)
    doc["text"] = compare_metrics(ref.text_emb, trt.text_emb, "embeddings")
    for batch in batches:
        tiles = _tiles(b, batch, seed=100 + batch)
        want = ref.predict_logits(tiles["optical"], tiles.get("sar"))
        t0 = time.perf_counter()
        got = trt.predict_logits(tiles["optical"], tiles.get("sar"))
        m = compare_metrics(want, got, "logits")
        m["passed"] = all(m[k] >= v for k, v in GATE.items())
        doc["cases"].append({"batch": batch, "first_call_s": round(time.perf_counter() - t0, 4), **m})
    for s in (trt.sessions.image, trt.sessions.text):
        if hasattr(s, "close"):
            s.close()                                   # saves the runtime cache
    _, second_s = _load(b, "tensorrt")
    doc["second_launch_s"] = round(second_s, 3)
    doc["passed"] = all(c["passed"] for c in doc["cases"])
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.engine_parity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--out", required=True, help="JSON report")
    p.add_argument("--batch", default="1,8,32")
    args = p.parse_args(argv)
    doc = engine_parity(args.bundle, [int(x) for x in args.batch.split(",")])
    Path(args.out).write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")
    print(json.dumps({k: doc.get(k) for k in ("model", "refusal", "passed", "first_launch_s", "second_launch_s")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
