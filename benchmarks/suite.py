"""The benchmark run behind ``rsvl-bench``: one model, one bundle, the same inputs for every backend.

Steps: bundle (given, reused from OUT/bundle, or exported) -> eager reference model with the
bundle's weights -> inputs per batch (synthetic scene tiles, the first ``vocab_size`` classes)
-> eager FP32 reference outputs -> FLOPs per tile (the manifest's ``graphs.image.flops``, counted
once at export; counted here only for bundles without it) -> ``image.ort.onnx``
(rsvl_export.ort_optimize) -> the machine's GEMM ceilings (``roofline.py``) -> every runner x
every batch (latency, throughput, peak memory, agreement with eager, GFLOP/s and % of the
matching ceiling) -> ONNX Runtime per-op-type profile of the image graphs (``profiling.py``)
-> text graph (vocabulary change) -> end-to-end tiled scene -> bench.json / bench.md / bench.png.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .backends import (
    RUNNER_KEYS,
    BenchContext,
    make_runner,
    ort_variant_unavailable,
    parse_backends,
)
from .measure import (
    Budget,
    PeakMemory,
    Timing,
    fp16_peak_tflops,
    machine_info,
    measure,
)
from .profiling import profile_ort
from .roofline import annotate_rows, ceiling_for, headroom, measure_ceilings, roofline_columns

log = logging.getLogger("rsvl.bench")


@dataclass
class BenchOptions:
    model: str = "tsmnet-tiny"
    bundle: str | None = None
    checkpoint: str | None = None
    batches: list[int] = field(default_factory=lambda: [1, 8, 32])
    tile: int | None = None
    vocab_size: int = 7
    out: str = "bench"
    quick: bool = False
    backends: list[str] = field(default_factory=lambda: list(RUNNER_KEYS))
    threads: int | None = None
    budget_s: float | None = None
    scene: bool = True
    scene_size: int | None = None
    scene_batch: int | None = None
    text: bool = True
    ort_optimize: bool = True
    int8: bool = True
    flops: bool = True
    seed: int = 0
    reexport: bool = False
    roofline: bool = True
    profile: bool = True


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- setup
def _device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


def prepare_bundle(opts: BenchOptions, out: Path, device: str) -> tuple[Any, dict[str, Any]]:
    """The bundle to benchmark: ``--bundle``, a matching one left in OUT/bundle, or a new export."""
    from rsvl_runtime.bundle import Bundle

    if opts.bundle:
        return Bundle.load(opts.bundle), {"source": "given", "path": opts.bundle}
    path = out / "bundle"
    want_batch = max(max(opts.batches), 32)
    if path.exists() and not opts.reexport:
        try:
            b = Bundle.load(path)
            m = b.meta
            ok = (m.model == opts.model and (opts.tile is None or b.tile_size == opts.tile)
                  and m.limits.max_batch >= max(opts.batches)
                  and (not opts.checkpoint or m.weights.source == str(opts.checkpoint)))
            if ok:
                log.info("reusing the bundle in %s (pass --reexport to export again)", path)
                return b, {"source": "reused", "path": str(path)}
        except Exception as e:  # noqa: BLE001 - any problem: export again
            log.info("not reusing %s (%s)", path, e)
    from rsvl_export.pipeline import ExportOptions, export_bundle

    engine = "auto" if device.startswith("cuda") else "none"
    eo = ExportOptions(model=opts.model, checkpoint=opts.checkpoint, out=str(path), tile=opts.tile,
                       engine=engine, max_batch=want_batch, precision="fp16")
    log.info("exporting %s to %s (engine %s) ...", opts.model, path, engine)
    t0 = time.perf_counter()
    export_bundle(eo)
    return Bundle.load(path), {"source": "exported", "path": str(path), "seconds": round(time.perf_counter() - t0, 1)}


def reference_model(opts: BenchOptions, bundle: Any, device: str) -> tuple[Any, str]:
    """The eager model with exactly the bundle's weights (agreement is meaningless otherwise)."""
    from rsvl_train.checkpoint import load_checkpoint

    if opts.checkpoint:
        model, src = load_checkpoint(opts.checkpoint), str(opts.checkpoint)
    else:
        wfile = bundle.meta.weights.file
        if not wfile:
            raise SystemExit(f"{bundle.root} has no weights (exported with --no-weights): pass --checkpoint "
                             "so that PyTorch runs the same weights as the graphs")
        model, src = load_checkpoint(bundle.path(wfile)), f"{bundle.root}/{wfile}"
    return model.to(device).eval(), src


class Inputs:
    """Text inputs (tokenised once) and image feeds per batch, shared by every runner."""

    def __init__(self, model: Any, task: str, tile: int, vocab_size: int, templates: list[str],
                 input_names: list[str], seed: int) -> None:
        import torch

        from rsvl_export.pipeline import REFERRING_EXAMPLES, parity_vocabulary
        from rsvl_runtime.vocabulary import parse_vocabulary, prompts_for

        self.model, self.task, self.tile, self.seed = model, task, tile, seed
        self.input_names = input_names
        self.device = next(model.parameters()).device
        if task == "semantic":
            names = parity_vocabulary(model, vocab_size)
            if len(names) < vocab_size:
                names += [f"class {i}" for i in range(len(names), vocab_size)]
            self.vocab = parse_vocabulary(names[:vocab_size])
            self.texts, self.owner = prompts_for(self.vocab, templates or ["{}"])
        else:
            self.vocab = []
            self.texts = [REFERRING_EXAMPLES[i % len(REFERRING_EXAMPLES)] for i in range(vocab_size)]
            self.owner = np.arange(len(self.texts))
        self.ids, self.mask = model.tokenize(self.texts)
        with torch.inference_mode():
            out = model.encode_text(torch.from_numpy(self.ids).to(self.device),
                                    torch.from_numpy(self.mask).to(self.device))
        if task == "semantic":
            from rsvl_runtime.vocabulary import average_per_class

            self.text_emb = average_per_class(out.float().cpu().numpy(), self.owner, len(self.vocab))
        else:
            self.words, self.sentence = (o.float().cpu().numpy() for o in out)
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def feeds(self, batch: int) -> dict[str, np.ndarray]:
        if batch not in self._cache:
            from rsvl_export.pipeline import synthetic_tiles  # the export's parity tiles' generator

            tiles = synthetic_tiles(self.model, batch, self.tile, self.seed + batch)
            if self.task == "semantic":
                f = {"text_emb": self.text_emb.astype(np.float32)}
                for n in ("optical", "sar"):
                    if n in self.input_names:
                        f[n] = tiles[n]
            else:
                sel = [i % len(self.texts) for i in range(batch)]
                f = {"optical": tiles["optical"], "word_feats": self.words[sel], "sentence_emb": self.sentence[sel],
                     "attention_mask": self.mask[sel]}
            self._cache[batch] = {n: np.ascontiguousarray(f[n]) for n in self.input_names}
        return self._cache[batch]


def _metrics(ref: np.ndarray, got: np.ndarray, kind: str = "logits") -> dict[str, float]:
    from rsvl_export.parity import compare

    m = compare(ref, got, kind=kind).metrics
    keep = ("max_abs", "max_abs_rel_to_range", "cosine", "argmax_agreement", "mean_vector_cosine",
            "min_vector_cosine", "nonfinite")
    return {k: float(m[k]) for k in keep if k in m}


def count_flops(module: Any, feeds: dict[str, np.ndarray], names: list[str], device: str) -> float | None:
    """FLOPs of one forward pass (torch.utils.flop_counter: matmul/conv/attention FLOPs)."""
    try:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        args = [torch.from_numpy(feeds[n]).to(device) for n in names]
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            module(*args)
        return float(fc.get_total_flops())
    except Exception as e:  # noqa: BLE001
        log.warning("FLOP count failed: %s", e)
        return None


def image_flops(meta: Any, module: Any, inputs: Inputs, names: list[str], device: str
                ) -> tuple[float | None, str | None]:
    """FLOPs per tile of the image graph and where the number comes from: the manifest
    (counted once at export) or, for a bundle exported before that, a count here."""
    g = meta.graphs["image"].flops
    if g is not None:
        return float(g.per_item), f"manifest (export, {g.extra.get('counter', 'FlopCounterMode')} at {g.extra.get('shapes')})"
    total = count_flops(module, inputs.feeds(1), names, device)
    return total, ("bench (the bundle's manifest has no flops)" if total else None)


def annotate_text_rows(rows: list[dict[str, Any]], flops_per_prompt: float,
                       ceilings: dict[str, Any], device: str = "cpu") -> None:
    """GFLOP/s and % of the FP32 ceiling of the text rows (per prompt FLOPs from the manifest;
    the eager row runs on ``device``, the ONNX Runtime rows on the CPU)."""
    for r in rows:
        if r.get("status") == "ok" and r.get("prompts_per_s"):
            dev = device if r.get("runner") == "torch-eager" else "cpu"
            r.update(roofline_columns(flops_per_prompt, float(r["prompts_per_s"]),
                                      ceiling_for({"precision": "fp32", "device": dev}, ceilings)),
                     ceiling_class="fp32")


def profile_image_graphs(ctx: BenchContext, inputs: Inputs) -> dict[str, Any]:
    """Per-op-type ONNX Runtime profile (B=1) of ``image.onnx`` and of ``image.ort.onnx`` when
    there is one: where the image graph's time goes when a row stays far from its ceiling."""
    out: dict[str, Any] = {}
    files = {"image.onnx": ctx.bundle.graph_file("image", "fp32")}
    if ctx.ort_variant is not None and Path(ctx.ort_variant).is_file():
        files["image.ort.onnx"] = Path(ctx.ort_variant)
    for name, path in files.items():
        try:
            out[name] = profile_ort(path, inputs.feeds(1), ctx.threads, runs=3 if ctx.quick else 10)
        except Exception as e:  # noqa: BLE001 - a failed profile is reported, not fatal
            out[name] = {"error": f"{type(e).__name__}: {e}"}
            log.warning("profiling %s failed: %s", name, e)
    return out


# --------------------------------------------------------------------------- ort_optimize
def prepare_ort_variant(opts: BenchOptions, bundle: Any, inputs: Inputs, out: Path, threads: int,
                        model_config: dict[str, Any]) -> tuple[Path | None, dict[str, Any] | None]:
    """The bundle's ``image.ort.onnx`` when it has one; else optimise ``image.onnx`` into OUT
    (reused when OUT holds one made from the same source file and settings)."""
    from rsvl_export.ort_optimize import CHECK_BATCHES, model_kind_for, optimize_for_ort

    g = bundle.meta.graphs["image"]
    if g.ort:
        rep = dict(g.ort_report or {"variant": g.extra.get("ort_variant", "bundle"), "source": "bundle"})
        return bundle.path(g.ort), rep
    src = bundle.graph_file("image", "fp32")
    dst = out / "image.ort.onnx"
    meta = out / "image.ort.json"
    digest = _sha256(src)
    kind = model_kind_for(model_config)
    if dst.exists() and meta.exists():
        try:
            rep = json.loads(meta.read_text())
            if rep.get("source_sha256") == digest and rep.get("int8_tried") == opts.int8 and not opts.reexport:
                log.info("reusing %s (%s)", dst, rep.get("variant"))
                return dst, rep
        except json.JSONDecodeError:
            pass
    log.info("optimising the image graph for ONNX Runtime CPU (kind %s, INT8 %s) ...", kind, opts.int8)
    checks = [inputs.feeds(b) for b in CHECK_BATCHES]
    try:
        rep = optimize_for_ort(src, dst, kind, checks, int8=opts.int8, threads=threads)
    except Exception as e:  # noqa: BLE001
        log.warning("ort_optimize failed: %s", e)
        return None, {"error": f"{type(e).__name__}: {e}"}
    rep.update(source_sha256=digest, int8_tried=opts.int8)
    meta.write_text(json.dumps(rep, indent=2, default=str))
    return dst, rep


# --------------------------------------------------------------------------- image graph
def run_image(ctx: BenchContext, keys: list[str], batches: list[int], inputs: Inputs,
              refs: dict[int, np.ndarray], budget: Budget, flops: float | None,
              peak_tflops: float | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    results: list[dict[str, Any]] = []
    runners: dict[str, Any] = {}
    px = ctx.tile * ctx.tile
    for key in keys:
        runner = make_runner(key, ctx)
        why = runner.unavailable(ctx) or (ort_variant_unavailable(ctx) if key == "ort-opt" else None)
        if why:
            runners[key] = {**runner.describe(), "status": "skipped", "reason": why}
            log.info("%-16s skipped: %s", key, why)
            continue
        gc.collect()
        try:
            with PeakMemory(cuda=ctx.device.startswith("cuda")) as pm:
                t0 = time.perf_counter()
                runner.setup(ctx)
                setup_s = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001
            runners[key] = {**runner.describe(), "status": "error", "reason": f"setup: {type(e).__name__}: {e}"}
            log.warning("%-16s setup failed: %s", key, e)
            log.debug(traceback.format_exc())
            continue
        mem = pm.result()
        runners[key] = {**runner.describe(), "status": "ok", "setup_s": round(setup_s, 2),
                        "setup_rss_mb": round((mem["peak_rss_mb"] or 0) - (mem["start_rss_mb"] or 0), 1)}
        for i, b in enumerate(batches):
            row: dict[str, Any] = {"runner": key, "label": runner.label, "engine": runner.engine,
                                   "precision": runner.precision, "device": runner.device, "io": runner.io,
                                   "batch": b, "tile": ctx.tile}
            why = runner.skip_batch(ctx, b, i == 0)
            if why:
                results.append({**row, "status": "skipped", "reason": why})
                continue
            feeds = inputs.feeds(b)
            try:
                gc.collect()
                with PeakMemory(cuda=ctx.device.startswith("cuda")) as pm:
                    bound = runner.bind(feeds, b)
                    timing = measure(bound.call, budget, batch=b, pixels_per_item=px,
                                     device=runner.device if runner.io == "device" else None)
                got = bound.fetch(bound.call())
            except Exception as e:  # noqa: BLE001
                results.append({**row, "status": "error", "reason": f"{type(e).__name__}: {e}"})
                log.warning("%-16s B=%d failed: %s", key, b, e)
                log.debug(traceback.format_exc())
                continue
            agree = _metrics(refs[b], got)
            row.update(status="ok", **timing.summary(), memory=pm.result(), agreement=agree)
            if bound.compile_s is not None:
                row["compile_s"] = bound.compile_s
            if bound.notes:
                row["notes"] = bound.notes
            if flops and peak_tflops and runner.device.startswith("cuda"):  # the datasheet figure, for the record
                row["fraction_of_fp16_peak"] = round(flops * timing.items_per_s / (peak_tflops * 1e12), 5)
            results.append(row)
            log.info("%-16s B=%-3d p50 %9.2f ms  %8.2f tiles/s  cos %.6f  argmax %.4f", key, b, timing.p50,
                     timing.items_per_s, agree.get("cosine", float("nan")), agree.get("argmax_agreement", float("nan")))
        runner.close()
        del runner
        gc.collect()
    # ratios against eager FP32 at the same batch
    eager = {r["batch"]: r for r in results if r["runner"] == "torch-eager" and r["status"] == "ok"}
    for r in results:
        e = eager.get(r["batch"])
        if r["status"] == "ok" and e:
            r["speedup_vs_eager"] = round(e["p50_ms"] / r["p50_ms"], 3)
    return results, runners


# --------------------------------------------------------------------------- text graph
def run_text(ctx: BenchContext, inputs: Inputs, budget: Budget) -> list[dict[str, Any]]:
    """Vocabulary change: K prompts through the text graph, eager vs ONNX Runtime (+ the runtime's
    full ``Segmenter.encode``: tokenize, text graph, per-class averaging)."""
    import torch

    from rsvl_export.wrappers import ReferringText, SemanticText
    from rsvl_runtime.backends import load_sessions

    rows: list[dict[str, Any]] = []
    k = len(inputs.texts)
    ids, mask = inputs.ids, inputs.mask
    module = SemanticText(ctx.model) if ctx.task == "semantic" else ReferringText(ctx.model)
    t_ids, t_mask = torch.from_numpy(ids).to(ctx.device), torch.from_numpy(mask).to(ctx.device)

    def eager():
        with torch.inference_mode():
            return module(t_ids, t_mask)

    def first(o: Any) -> np.ndarray:
        o = o if torch.is_tensor(o) else o[0]
        return o.float().cpu().numpy()

    ref = first(eager())
    base = {"prompts": k, "classes": len(inputs.vocab) or k, "max_length": int(ids.shape[1])}
    t = measure(eager, budget, batch=k, device=ctx.device if ctx.device.startswith("cuda") else None)
    rows.append({"runner": "torch-eager", "label": "PyTorch eager FP32 text graph", **base, "status": "ok",
                 **_text_summary(t), "agreement": _metrics(ref, ref, "embeddings")})
    try:
        sess = load_sessions(ctx.bundle, "onnxruntime", "fp32", ctx.threads).text
        feeds = {"input_ids": ids, "attention_mask": mask}
        out_name = sess.output_names[0]
        got = sess.run(feeds)[out_name]
        t = measure(lambda: sess.run(feeds), budget, batch=k)
        rows.append({"runner": "ort", "label": "ONNX Runtime text.onnx", **base, "status": "ok", **_text_summary(t),
                     "agreement": _metrics(ref, got, "embeddings"), "providers": getattr(sess, "providers", None)})
    except Exception as e:  # noqa: BLE001
        rows.append({"runner": "ort", "label": "ONNX Runtime text.onnx", **base, "status": "error",
                     "reason": f"{type(e).__name__}: {e}"})
    if "text" in ctx.bundle.meta.graphs and ctx.bundle.meta.graphs["text"].ort:
        from rsvl_runtime.backends.onnxruntime_backend import OrtSession

        variant = (ctx.bundle.meta.graphs["text"].ort_report or {}).get("variant", "fused")
        label = f"ONNX Runtime text.ort.onnx ({variant})"
        try:
            sess = OrtSession(ctx.bundle.graph_file("text", "ort"), providers=["CPUExecutionProvider"],
                              threads=ctx.threads)
            feeds = {"input_ids": ids, "attention_mask": mask}
            got = sess.run(feeds)[sess.output_names[0]]
            t = measure(lambda: sess.run(feeds), budget, batch=k)
            rows.append({"runner": "ort-opt", "label": label, **base, "status": "ok", **_text_summary(t),
                         "agreement": _metrics(ref, got, "embeddings")})
        except Exception as e:  # noqa: BLE001
            rows.append({"runner": "ort-opt", "label": label, **base, "status": "error",
                         "reason": f"{type(e).__name__}: {e}"})
    if ctx.task == "semantic":
        try:
            import tempfile

            from rsvl_runtime import Segmenter

            with tempfile.TemporaryDirectory() as cache:
                seg = Segmenter.load(ctx.bundle, backend="onnxruntime", precision="fp32", threads=ctx.threads,
                                     cache_dir=cache)
                vocab = inputs.vocab
                emb = seg.encode(vocab)
                t = measure(lambda: seg.encode(vocab), budget, batch=len(vocab))
                rows.append({"runner": "runtime-encode", "label": "rsvl_runtime Segmenter.encode (tokenize + ORT + "
                             "average)", **base, "status": "ok", **_text_summary(t),
                             "agreement": _metrics(inputs.text_emb, emb, "embeddings")})
                del seg
        except Exception as e:  # noqa: BLE001
            rows.append({"runner": "runtime-encode", "label": "rsvl_runtime Segmenter.encode", **base,
                         "status": "error", "reason": f"{type(e).__name__}: {e}"})
    e = next((r for r in rows if r["runner"] == "torch-eager"), None)
    for r in rows:
        if r["status"] == "ok" and e:
            r["speedup_vs_eager"] = round(e["p50_ms"] / r["p50_ms"], 3)
    return rows


def _text_summary(t: Timing) -> dict[str, Any]:
    s = t.summary()
    s["prompts_per_s"] = s.pop("tiles_per_s")
    s.pop("megapixels_per_s", None)
    return s


# --------------------------------------------------------------------------- scene
def run_scene_bench(ctx: BenchContext, opts: BenchOptions, inputs: Inputs, image_rows: list[dict[str, Any]],
                    batch: int, size: int) -> list[dict[str, Any]]:
    """End-to-end tiled scene through ``predict_raster`` vs the pure engine at the same batch
    (``image_rows``: measured in the same run); ``stages_s``: the run's per-stage seconds
    (:data:`benchmarks.big_scene.STAGES`)."""
    import tempfile

    from .big_scene import stage_seconds

    from rsvl_runtime import Referrer, Segmenter
    from rsvl_runtime.backends import Sessions, load_sessions
    from rsvl_runtime.backends.onnxruntime_backend import OrtSession
    from rsvl_train.data.synthetic import write_scene

    scene_dir = ctx.out / f"scene_{size}"
    opt_tif, sar_tif = scene_dir / "optical.tif", scene_dir / "sar.tif"
    if not (opt_tif.exists() and sar_tif.exists()):
        t0 = time.perf_counter()
        write_scene(scene_dir, size, size, seed=opts.seed)
        log.info("synthetic %dx%d scene written in %.1f s", size, size, time.perf_counter() - t0)
    variants: list[tuple[str, Any]] = []
    base = load_sessions(ctx.bundle, "auto", "auto", ctx.threads)
    variants.append((_engine_key(base), base))
    if ctx.ort_variant is not None and Path(ctx.ort_variant).is_file() and not ctx.device.startswith("cuda"):
        img = OrtSession(ctx.ort_variant, providers=["CPUExecutionProvider"], threads=ctx.threads)
        variants.append(("ort-opt", Sessions(base.text, img, "onnxruntime[CPU]+image.ort.onnx", "fp32")))
    rows = []
    engine = {(r["runner"], r["batch"]): r for r in image_rows if r.get("status") == "ok"}
    for key, sessions in variants:
        row: dict[str, Any] = {"engine_runner": key, "backend": sessions.backend, "precision": sessions.precision,
                               "batch": batch, "scene": f"{size}x{size}", "megapixels": size * size / 1e6}
        try:
            with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory(dir=ctx.out) as res_dir:
                sar = sar_tif if "sar" in ctx.input_names else None
                if ctx.task == "semantic":
                    seg = Segmenter(ctx.bundle, sessions, batch=batch, cache_dir=cache)
                    seg.set_vocabulary(list(inputs.vocab))
                    run = partial(seg.predict_raster, opt_tif, sar, out_dir=res_dir, progress=False)
                else:
                    ref = Referrer(ctx.bundle, sessions, batch=batch)
                    run = partial(ref.predict_raster, opt_tif, inputs.texts[0], out_dir=res_dir, progress=False)
                with PeakMemory() as pm:
                    t0 = time.perf_counter()
                    res = run()
                    wall = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001
            rows.append({**row, "status": "error", "reason": f"{type(e).__name__}: {e}"})
            log.warning("scene (%s) failed: %s", key, e)
            log.debug(traceback.format_exc())
            continue
        tiles = int(res.tiles)
        row.update(status="ok", tiles=tiles, seconds=round(wall, 3), tiles_per_s=round(tiles / wall, 3),
                   megapixels_per_s=round(size * size / 1e6 / wall, 4),
                   timings={k: round(float(v), 4) for k, v in (res.timings or {}).items()},
                   stages_s=stage_seconds({"timings": res.timings or {}}), memory=pm.result())
        e = engine.get((key, batch))
        if e:
            row["engine_tiles_per_s"] = e["tiles_per_s"]
            row["end_to_end_over_engine"] = round(row["tiles_per_s"] / e["tiles_per_s"], 3)
            row["io_blend_overhead"] = round(1 - row["end_to_end_over_engine"], 3)
        rows.append(row)
        log.info("scene %s via %s B=%d: %d tiles in %.2f s (%.2f tiles/s, engine %s)", row["scene"], key, batch,
                 tiles, wall, row["tiles_per_s"], e["tiles_per_s"] if e else "n/a")
    return rows


def _engine_key(s: Any) -> str:
    b = s.backend
    if b == "tensorrt":
        return "tensorrt"
    if "Tensorrt" in b:
        return "ort-trt"
    if "CUDA" in b:
        return f"ort-cuda-{s.precision}"
    return f"ort-cpu-{s.precision}"


# --------------------------------------------------------------------------- main
def run_benchmark(opts: BenchOptions) -> dict[str, Any]:
    """Run everything and write the reports; returns the bench.json dict."""
    import torch

    from . import report

    t_start = time.perf_counter()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = int(opts.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                   else os.cpu_count() or 1))
    torch.set_num_threads(threads)
    device = _device()
    budget = Budget.quick() if opts.quick else Budget()
    if opts.budget_s:
        budget.budget_s = float(opts.budget_s)
    keys = parse_backends(opts.backends)
    batches = sorted({int(b) for b in opts.batches})
    if not batches or batches[0] < 1:
        raise SystemExit(f"--batch needs positive sizes, got {opts.batches}")
    machine = machine_info()
    doc: dict[str, Any] = {"rsvl_bench": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "machine": machine, "options": {**asdict(opts), "batches": batches, "backends": keys,
                                                           "threads": threads, "device": device,
                                                           "budget": asdict(budget)}}
    bundle, binfo = prepare_bundle(opts, out, device)
    m = bundle.meta
    task = bundle.task
    tile = bundle.tile_size
    if opts.tile and opts.tile != tile:
        raise SystemExit(f"--tile {opts.tile} but the bundle's image graph is fixed to {tile}px; "
                         f"omit --tile or re-export with --tile {opts.tile}")
    model, weights_src = reference_model(opts, bundle, device)
    input_names = list(m.graphs["image"].inputs)
    inputs = Inputs(model, task, tile, opts.vocab_size, list(m.text.prompt_templates), input_names, opts.seed)
    ctx = BenchContext(model=model, task=task, bundle=bundle, tile=tile, device=device, threads=threads, out=out,
                       quick=opts.quick, input_names=input_names)
    doc["bundle"] = {**binfo, "model": m.model, "task": task, "tile": tile, "precision": m.precision,
                     "graphs": {k: {kk: vv for kk, vv in v.to_dict().items() if kk in ("fp32", "fp16", "ort", "exporter")}
                                for k, v in m.graphs.items()},
                     "engines": [e.file for e in m.engines], "weights": weights_src,
                     "trained": m.weights.trained}
    n_params = sum(p.numel() for p in model.parameters())
    doc["model"] = {"name": m.model, "task": task, "parameters_m": round(n_params / 1e6, 2),
                    "vocab_size": len(inputs.vocab) or opts.vocab_size, "prompts": len(inputs.texts)}

    # reference outputs (eager FP32), FLOPs
    module = ctx.image_module().eval()
    refs: dict[int, np.ndarray] = {}
    t0 = time.perf_counter()
    for b in batches:
        with torch.inference_mode():
            refs[b] = module(*[torch.from_numpy(inputs.feeds(b)[n]).to(device) for n in input_names]).float().cpu().numpy()
    log.info("eager reference outputs for B=%s in %.1f s", batches, time.perf_counter() - t0)
    flops, flops_source = image_flops(m, module, inputs, input_names, device) if opts.flops else (None, None)
    gpu = machine.get("gpu") or {}
    peak = fp16_peak_tflops(gpu["name"]) if gpu.get("name") else None
    doc["model"].update(gflops_per_tile=round(flops / 1e9, 3) if flops else None, flops_per_tile=flops,
                        flops_source=flops_source,
                        fp16_peak_tflops=peak)
    del module

    # the ORT-optimised variant
    if "ort-opt" in keys and opts.ort_optimize:
        ctx.ort_variant, rep = prepare_ort_variant(opts, bundle, inputs, out, threads, model.config)
        ctx.ort_variant_name = (rep or {}).get("variant")
        doc["ort_optimize"] = rep

    if opts.roofline:
        doc["roofline"] = measure_ceilings(threads, quick=opts.quick, device=device,
                                           budget_s=1.0 if opts.quick else 3.0)
    doc["image"], doc["runners"] = run_image(ctx, keys, batches, inputs, refs, budget, flops, peak)
    annotate_rows(doc["image"], flops, (doc.get("roofline") or {}).get("ceilings", {}))
    if opts.profile:
        doc["ort_profile"] = profile_image_graphs(ctx, inputs)
    if opts.text:
        doc["text"] = run_text(ctx, inputs, budget)
        text_flops = m.graphs["text"].flops if "text" in m.graphs else None
        if text_flops:
            annotate_text_rows(doc["text"], text_flops.per_item, (doc.get("roofline") or {}).get("ceilings", {}),
                               device)
    ceilings = (doc.get("roofline") or {}).get("ceilings", {})
    doc["headroom"] = headroom(doc["image"], ceilings) + headroom(doc.get("text") or [], ceilings, graph="text")
    if opts.scene:
        size = opts.scene_size or (512 if opts.quick else 1024)
        sb = opts.scene_batch or max([b for b in batches if b <= 8] or [batches[0]])
        doc["scene"] = run_scene_bench(ctx, opts, inputs, doc["image"], sb, size)
    doc["summary"] = summarize(doc)
    doc["seconds"] = round(time.perf_counter() - t_start, 1)
    doc["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    report.write_all(doc, out)
    return doc


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """Best backend per batch (by p50) and its ratio over eager FP32, among the rows whose
    agreement with eager passes the FP16 gate (cosine >= 0.999, argmax >= 0.995)."""
    best: dict[str, Any] = {}
    for r in doc.get("image", []):
        if r.get("status") != "ok":
            continue
        a = r.get("agreement", {})
        if a.get("cosine", 0) < 0.999 or a.get("argmax_agreement", 0) < 0.995:
            continue
        b = str(r["batch"])
        if b not in best or r["p50_ms"] < best[b]["p50_ms"]:
            best[b] = {"runner": r["runner"], "label": r["label"], "p50_ms": r["p50_ms"],
                       "speedup_vs_eager": r.get("speedup_vs_eager")}
    return {"best_by_batch": best}
