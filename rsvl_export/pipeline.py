"""``rsvl-export``'s pipeline: model -> text/image ONNX graphs -> FP16 variant -> parity ->
TensorRT engines -> bundle. Each step logs its time; the bundle is assembled in a temporary
folder beside ``--out`` and renamed into place only when complete (an interrupted export never
leaves a bundle that looks valid).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rsvl_runtime.bundle import FORMAT_VERSION, write_manifest
from rsvl_runtime.vocabulary import average_per_class, parse_vocabulary, prompts_for, text_signature

from .wrappers import GraphSpec, graph_specs

log = logging.getLogger("rsvl.export")

#: Extra class names for parity at a vocabulary larger than the default one.
EXTRA_NAMES = ["river", "lake", "forest", "grassland", "parking lot", "bridge", "railway", "greenhouse",
               "harbor", "airport runway", "sand", "wetland", "snow", "cloud", "shadow", "orchard",
               "industrial area", "residential area", "highway", "pond"]


@dataclass
class ExportOptions:
    model: str = "tsmnet-tiny"
    checkpoint: str | None = None
    checkpoint_format: str = "rsvl"  # "rsvl" (rsvl-train) | "official" (the paper authors' release)
    pretrained: str | Sequence[str] | None = None  # local pretrained backbone/text weights (open_clip, timm, HF)
    out: str | None = None
    tile: int | None = None
    overlap: float = 0.25
    max_batch: int = 32
    max_vocab: int = 256
    precision: str = "fp16"  # "fp32" | "fp16"
    engine: str = "auto"  # "auto" | "tensorrt" | "tensorrt-rtx" | "none"
    engine_targets: tuple[str, ...] | None = None  # TensorRT-RTX compute capabilities ("8.6", ...)
    engine_workspace_gb: float | None = None  # builder workspace limit (None: the library's default)
    opset: int = 18
    modalities: tuple[str, ...] = ("optical", "sar")
    allow_parity_failure: bool = False
    include_weights: bool = True
    parity_batches: tuple[int, int] = (1, 3)
    parity_vocabs: tuple[int, int] = (3, 20)
    timing_cache: str | None = None
    ort_optimize: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)


class StepTimer:
    """Logs ``[n/N] step ... seconds`` for every step and keeps the timings for the manifest.

    A step still running after ``heartbeat_s`` seconds logs ``[n/N] step: still running (30 s)``
    every ``heartbeat_s`` seconds (from a daemon thread), so a long ONNX export or engine build
    shows progress; ``-q`` hides these lines with the others.
    """

    #: Seconds between the "still running" lines of a long step (<= 0: none).
    heartbeat_s: float = 15.0

    def __init__(self, total: int, heartbeat_s: float | None = None) -> None:
        self.total = total
        self.n = 0
        self.timings: dict[str, float] = {}
        if heartbeat_s is not None:
            self.heartbeat_s = heartbeat_s

    def _beat(self, n: int, name: str, t0: float, stop: Any) -> None:
        while not stop.wait(self.heartbeat_s):
            log.info("[%d/%d] %s: still running (%.0f s)", n, self.total, name, time.perf_counter() - t0)

    @contextmanager
    def step(self, name: str, what: str) -> Iterator[None]:
        import threading

        self.n += 1
        log.info("[%d/%d] %s: %s", self.n, self.total, name, what)
        t0 = time.perf_counter()
        stop = threading.Event()
        beat = (threading.Thread(target=self._beat, args=(self.n, name, t0, stop), daemon=True,
                                 name=f"rsvl-export-{name}") if self.heartbeat_s > 0 else None)
        if beat is not None:
            beat.start()
        try:
            yield
        finally:
            stop.set()
            if beat is not None:
                beat.join()
        dt = time.perf_counter() - t0
        self.timings[name] = round(self.timings.get(name, 0.0) + dt, 3)
        log.info("[%d/%d] %s done in %.1f s", self.n, self.total, name, dt)


def load_model(opts: ExportOptions) -> tuple[nn.Module, dict[str, Any]]:
    """The model to export and a description of its weights (the manifest's ``weights`` entry).

    ``--checkpoint`` (``--checkpoint-format rsvl``: an rsvl-train checkpoint; ``official``: the
    TSMNet authors' release, :mod:`rsvl_train.official`) and its sha256; else ``--pretrained``
    local part weights (:func:`rsvl_train.weights_io.load_pretrained`; a str or a list of paths),
    each recorded with source, kind, path, sha256 and tensor count; else the registry default.
    """
    from rsvl_runtime.files import sha256_file
    from rsvl_train.checkpoint import (
        RANDOM_INIT_SEED,
        checkpoint_paths,
        load_checkpoint,
        load_default,
        read_checkpoint_config,
    )
    if opts.checkpoint_format not in ("rsvl", "official"):
        raise ValueError(f"--checkpoint-format {opts.checkpoint_format!r}: expected 'rsvl' or 'official'")
    pretrained = [opts.pretrained] if isinstance(opts.pretrained, str | os.PathLike) else list(opts.pretrained or [])
    if pretrained and opts.checkpoint:
        raise ValueError("--pretrained fills parts of an untrained model, --checkpoint holds the whole trained "
                         "model: give one of them")
    overrides = dict(opts.overrides)
    if opts.checkpoint_format == "official":
        if not opts.checkpoint:
            raise ValueError("--checkpoint-format official needs --checkpoint PATH (the authors' released .pth)")
        from rsvl_train.official import load_official_checkpoint

        if opts.tile:
            overrides["tile_size"] = int(opts.tile)
        model, report = load_official_checkpoint(opts.checkpoint, **overrides)
        log.info("%s", report.summary())
        return model, {"source": str(opts.checkpoint), "trained": True, "checkpoint_format": "official",
                       "sha256": sha256_file(opts.checkpoint)}
    if overrides.get("head") == "paper" and "num_classes" not in overrides:
        from rsvl_train.factory import get_model_config

        base = read_checkpoint_config(opts.checkpoint)["config"] if opts.checkpoint else get_model_config(opts.model)
        overrides["num_classes"] = base.get("num_classes") or len(base["classes"])
    if opts.tile:
        overrides["tile_size"] = int(opts.tile)  # sizes that depend on the tile (e.g. Swin's grid) follow it
    if opts.checkpoint:
        model = load_checkpoint(opts.checkpoint, **overrides)
        if model.config.get("name") not in (None, opts.model) and opts.model:
            log.info("checkpoint holds %s (not %s): exporting the checkpoint's model",
                     model.config.get("name"), opts.model)
        meta = read_checkpoint_config(opts.checkpoint).get("info", {})
        return model, {"source": str(opts.checkpoint), "trained": True, "metrics": meta.get("metrics", {}),
                       "checkpoint_format": "rsvl", "sha256": sha256_file(checkpoint_paths(opts.checkpoint)[0])}
    if pretrained:
        from rsvl_train.factory import create_model_from_config, get_model_config
        from rsvl_train.weights_io import load_pretrained, weights_file

        model = create_model_from_config(get_model_config(opts.model, **overrides)).eval()
        sources = [{**load_pretrained(model, p).to_dict(), "sha256": sha256_file(weights_file(p))} for p in pretrained]
        return model, {"source": "pretrained", "trained": False, "pretrained": sources}
    model, trained = load_default(opts.model, **overrides)
    if trained:
        return model, {"source": "registry-default", "trained": True}
    return model, {"source": "random-init", "trained": False, "seed": RANDOM_INIT_SEED}


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("rsvl", "torch", "onnx", "onnxruntime", "onnxscript", "onnxconverter-common", "timm",
                "open_clip_torch", "transformers", "tokenizers", "tensorrt", "tensorrt-rtx"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def parity_vocabulary(model: nn.Module, k: int) -> list[str]:
    names = [c["name"] for c in model.config.get("classes", [])]
    names += [n for n in EXTRA_NAMES if n not in names]
    return names[:k]


def synthetic_tiles(model: nn.Module, batch: int, tile: int, seed: int) -> dict[str, np.ndarray]:
    """Normalised synthetic tiles for ``model``'s modalities (float32 ``[batch, C, tile, tile]``),
    from the one generator, :func:`rsvl_train.data.synthetic.tiles.synthetic_tiles`."""
    from rsvl_train.data.synthetic.tiles import synthetic_tiles as generate

    return generate(model.config["preprocess"], batch, tile, seed)


class Exporter:
    """Runs the steps of one export."""

    def __init__(self, opts: ExportOptions) -> None:
        self.opts = opts
        self.timer = StepTimer(total=8 if opts.ort_optimize else 7)

    # ---------------------------------------------------------------- steps
    def run(self) -> Path:
        o = self.opts
        if o.engine != "none":  # a named flavour that cannot build fails before minutes of export, not after
            from rsvl_runtime.backends.tensorrt import choose_flavour

            choose_flavour(o.engine)
        with self.timer.step("load", f"model {o.model}" + (f" from {o.checkpoint}" if o.checkpoint else "")):
            model, weights = load_model(o)
        cfg = model.config
        task = cfg.get("task", "semantic")
        tile = int(o.tile or cfg.get("tile_size", 256))
        modalities = o.modalities if task == "semantic" else ("optical",)
        out = Path(o.out or f"bundles/{cfg.get('name', o.model)}-{o.precision}")
        work = out.parent / f".{out.name}.partial"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)

        try:
            return self._run(model, weights, cfg, task, tile, modalities, out, work)
        except ParityFailure:
            raise  # the partial folder keeps parity.json for the user to read
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    def _run(self, model: nn.Module, weights: dict[str, Any], cfg: dict[str, Any], task: str, tile: int,
             modalities: tuple[str, ...], out: Path, work: Path) -> Path:
        from . import onnx_export

        o = self.opts
        with self.timer.step("trace", "building export wrappers and example inputs"):
            specs = graph_specs(model, tile, modalities)
        graphs: dict[str, dict[str, Any]] = {}
        with self.timer.step("export", f"ONNX opset {o.opset} (dynamo exporter)"):
            for spec in specs:
                res = onnx_export.export_onnx(
                    spec.module, spec.example_inputs, spec.output_names, spec.dynamic_axes,
                    work / f"{spec.name}.onnx", opset=o.opset, dim_ranges=self._ranges(),
                    metadata={"rsvl_model": cfg.get("name", o.model), "rsvl_task": task, "rsvl_graph": spec.name})
                graphs[spec.name] = {"fp32": f"{spec.name}.onnx", "exporter": res.exporter,
                                     "inputs": res.inputs, "outputs": res.outputs,
                                     "export_seconds": round(res.seconds, 2), "bytes": res.bytes}
                log.info("  %s.onnx: %s exporter, %.1f MB, %.1f s", spec.name, res.exporter,
                         res.bytes / 2**20, res.seconds)
                self._count_flops(spec, graphs[spec.name])
        with self.timer.step("fp16", "FP16 image graph (LayerNorm/Softmax/reductions kept FP32)"
                             if o.precision == "fp16" else "skipped (--precision fp32)"):
            if o.precision == "fp16":
                from .fp16 import convert_fp16

                plan = cfg.get("export", {}).get("fp16_modules")
                kept = convert_fp16(work / "image.onnx", work / "image.fp16.onnx", fp16_modules=plan)
                graphs["image"]["fp16"] = "image.fp16.onnx"
                graphs["image"]["fp16_modules"] = plan or "all"
                graphs["image"]["fp32_ops"] = sorted(set(kept))
        with self.timer.step("parity", "ONNX Runtime vs PyTorch eager on synthetic tiles"):
            report = self._parity(model, specs, work, graphs)
            (work / "parity.json").write_text(report.to_json(), encoding="utf-8")
            failures = report.failures()
            if failures:
                msg = "parity gate failed: " + "; ".join(failures)
                if not o.allow_parity_failure:
                    raise ParityFailure(msg + f" (report kept in {work / 'parity.json'}; "
                                        "pass --allow-parity-failure to write the bundle anyway)")
                log.warning("%s (continuing: --allow-parity-failure)", msg)
            else:
                log.info("  parity: all %d checks pass", len(report.cases))
        if o.ort_optimize:
            with self.timer.step("ort-optimize", "ONNX Runtime CPU variant (fusions, INT8 where parity holds)"):
                self._ort_variant(model, work, graphs, task)
        with self.timer.step("build", f"TensorRT engines (--engine {o.engine})"):
            engines = self._engines(work, graphs)
        with self.timer.step("bundle", f"tokenizer, vocabulary cache, manifest -> {out}"):
            manifest = self._bundle(model, work, graphs, engines, tile, task, weights)
            if out.exists():
                shutil.rmtree(out)
            os.replace(work, out)
        log.info("bundle written: %s (%d files, %.1f MB)", out, len(manifest["files"]),
                 sum(f["bytes"] for f in manifest["files"].values()) / 2**20)
        return out

    def _ranges(self) -> dict[str, tuple[int, int]]:
        return {"B": (1, self.opts.max_batch), "K": (1, self.opts.max_vocab)}

    def _engines(self, work: Path, graphs: dict[str, Any]) -> list[dict[str, Any]]:
        from .engines import build_bundle_engines

        o = self.opts
        return build_bundle_engines(work, graphs, o.precision, o.engine, o.max_batch, o.max_vocab,
                                    targets=o.engine_targets, timing_cache=o.timing_cache,
                                    workspace_gb=o.engine_workspace_gb)

    @staticmethod
    def _count_flops(spec: GraphSpec, graph: dict[str, Any]) -> None:
        """``graphs[name]["flops"]``: FLOPs counted once on the export wrapper, per unit of the
        first input's axis 0 (per tile for the image graph, per prompt for the text graph)."""
        from .onnx_export import count_flops

        first = next(iter(spec.example_inputs))
        axis = spec.dynamic_axes.get(first, {}).get(0, "B")
        try:
            graph["flops"] = count_flops(spec.module, spec.example_inputs, per_axis=axis, per_input=first)
        except Exception as e:  # noqa: BLE001 - a counter gap must not fail the export; the bench then counts
            log.warning("  %s: FLOP count failed (%s: %s); the manifest has no flops for it",
                        spec.name, type(e).__name__, e)
            return
        log.info("  %s: %.3f GFLOP per %s (FlopCounterMode at %s)", spec.name, graph["flops"]["per_item"] / 1e9,
                 "tile" if axis == "B" and spec.name == "image" else f"{axis} item", graph["flops"]["shapes"])

    def _ort_variant(self, model: nn.Module, work: Path, graphs: dict[str, Any], task: str) -> None:
        """``image.ort.onnx`` and ``text.ort.onnx``: the fastest ORT-CPU graphs that keep parity
        with ``image.onnx`` / ``text.onnx`` (fused attention/normalisation; INT8 where parity
        holds: for the text graph also on the image logits computed from its embeddings). Used
        by the runtime on the CPU provider only (they hold CPU-specific contrib/INT8 ops). What
        shipped, its fused-op counts and the CPU it was validated on (model name, VNNI) go into
        the manifest's ``ort_report`` and ``parity.json`` (``meta.ort_variants``); each variant
        is gated against its source graph, which itself passed the gates against eager."""
        import json

        from .ort_optimize import model_kind_for, optimize_for_ort, whole_graph_plans

        text_feeds, image_feeds = self._ort_check_inputs(model, graphs, task)
        downstream = self._text_downstream(work, graphs, image_feeds, task)
        summary: dict[str, Any] = {}
        for name, feeds, kind, check, plans in (("image", image_feeds, "logits", None, None),
                                                ("text", text_feeds, "embeddings", downstream, whole_graph_plans())):
            dst = f"{name}.ort.onnx"
            rep = optimize_for_ort(work / graphs[name]["fp32"], work / dst, model_kind_for(model.config)
                                   if name == "image" else "bert", feeds, output_kind=kind, downstream=check,
                                   plans=plans)
            graphs[name]["ort"] = dst
            graphs[name]["ort_report"] = {k: rep[k] for k in ("variant", "parity", "speedup", "cpu", "cpu_flags",
                                                              "fused_ops", "weights", "reduce_range") if k in rep}
            summary[name] = {"file": dst, "variant": rep.get("variant"), "fused_ops": rep.get("fused_ops"),
                             "fusion_rules": (rep.get("fusion") or {}).get("rules"), "cpu": rep.get("cpu"),
                             "parity_vs_source": rep.get("parity"),
                             "int8_attempts": [{k: a.get(k) for k in ("name", "nodes", "result", "fp32_groups",
                                                                     "parity") if k in a}
                                               for a in rep.get("attempts", [])]}
            log.info("  %s: %s, fused ops %s, %.2fx faster than %s here", dst, rep.get("variant"),
                     rep.get("fused_ops"), float(rep.get("speedup") or 1.0), graphs[name]["fp32"])
        parity_file = work / "parity.json"
        if parity_file.is_file():
            doc = json.loads(parity_file.read_text(encoding="utf-8"))
            doc.setdefault("meta", {})["ort_variants"] = summary
            parity_file.write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")

    @staticmethod
    def _text_downstream(work: Path, graphs: dict[str, Any], image_feeds: list[dict[str, np.ndarray]],
                         task: str) -> Any:
        """The check of an INT8 text graph beyond its embeddings' cosine: ``image.onnx``'s logits
        from its outputs at the first text check input must pass the INT8 logits gate against
        those from ``text.onnx``'s (:func:`rsvl_export.ort_optimize.logits_downstream`)."""
        from .ort_optimize import logits_downstream

        names = list(graphs["text"]["outputs"])  # the graph's output order

        def feeds_for(outputs: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
            by_name = dict(zip(names, outputs))
            out = []
            for f in image_feeds:
                b = next(v for k, v in f.items() if k not in by_name).shape[0]
                # semantic: the whole vocabulary per tile; referring: expression i % n for tile i
                sel = [i % len(outputs[0]) for i in range(b)]
                out.append({k: (by_name[k] if task == "semantic" else by_name[k][sel]) if k in by_name else v
                            for k, v in f.items()})
            return out

        return logits_downstream(work / graphs["image"]["fp32"], feeds_for)

    @staticmethod
    def _ort_check_inputs(model: nn.Module, graphs: dict[str, Any], task: str
                          ) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
        """Parity inputs of the ORT variants: text feeds at two vocabulary sizes, image feeds at
        B = 1, 2 and 4 (:data:`~rsvl_export.ort_optimize.CHECK_BATCHES`: seven synthetic tiles,
        the real text features; the INT8 gates pool them)."""
        from .ort_optimize import CHECK_BATCHES

        tile = graphs["image"]["inputs"]["optical"]["shape"][-1]
        names = list(graphs["image"]["inputs"])
        texts = parity_vocabulary(model, 7) if task == "semantic" else REFERRING_EXAMPLES[:2]
        ids, mask = model.tokenize(texts)
        text_feeds = [{"input_ids": ids, "attention_mask": mask}]
        more = parity_vocabulary(model, 20) if task == "semantic" else REFERRING_EXAMPLES[:5]
        ids2, mask2 = model.tokenize(more)
        text_feeds.append({"input_ids": ids2, "attention_mask": mask2})
        with torch.no_grad():
            out = model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask))
        image_feeds = []
        for b in CHECK_BATCHES:
            tiles = synthetic_tiles(model, b, tile, seed=300 + b)
            if task == "semantic":
                extra = {"text_emb": out.numpy()}
            else:
                words, sentence = (o.numpy() for o in out)
                sel = [i % len(texts) for i in range(b)]
                extra = {"word_feats": words[sel], "sentence_emb": sentence[sel], "attention_mask": mask[sel]}
            image_feeds.append({n: (extra[n] if n in extra else tiles[n]) for n in names})
        return text_feeds, image_feeds

    # ---------------------------------------------------------------- parity
    def _parity(self, model: nn.Module, specs: list[GraphSpec], work: Path, graphs: dict[str, Any]):
        from .parity import ParityReport, compare, ort_session

        o = self.opts
        report = ParityReport()
        text_spec, image_spec = specs
        text_sess = ort_session(work / graphs["text"]["fp32"])
        image_sessions = {"fp32": ort_session(work / graphs["image"]["fp32"])}
        if "fp16" in graphs["image"]:
            image_sessions["fp16"] = ort_session(work / graphs["image"]["fp16"])
        image_inputs = list(graphs["image"]["inputs"])
        task = model.config.get("task", "semantic")
        tile = next(iter(image_spec.example_inputs.values())).shape[-1]
        fixed_k = ((model.config.get("num_classes") or len(model.config.get("classes", [])))
                   if model.config.get("head") == "paper" else None)
        for k in ((int(fixed_k),) if fixed_k else o.parity_vocabs):
            if task == "semantic" and fixed_k:
                ids, mask = model.tokenize(model.prompts([c["name"] for c in model.config["classes"]])[:k])
            elif task == "semantic":
                ids, mask = model.tokenize(parity_vocabulary(model, k))
            else:
                ids, mask = model.tokenize(REFERRING_EXAMPLES[:k] if k <= len(REFERRING_EXAMPLES) else
                                           [REFERRING_EXAMPLES[i % len(REFERRING_EXAMPLES)] for i in range(k)])
            with torch.no_grad():
                ref_text = text_spec.module(torch.from_numpy(ids), torch.from_numpy(mask))
            ref_text = [ref_text] if torch.is_tensor(ref_text) else list(ref_text)
            got_text = text_sess.run(None, {"input_ids": ids, "attention_mask": mask})
            for name, r, g in zip(graphs["text"]["outputs"], ref_text, got_text):
                report.add(compare(r.numpy(), g, kind="embedding"), graph="text", precision="fp32",
                           batch=k, vocab=k, output=name)
            for b in o.parity_batches:
                tiles = synthetic_tiles(model, b, tile, seed=100 + b)
                if task == "semantic":
                    feeds = {"text_emb": ref_text[0].numpy(), **{n: tiles[n] for n in ("optical", "sar")
                                                                 if n in image_inputs}}
                else:
                    # one expression per tile: repeat the first b (text batch = image batch)
                    sel = [i % k for i in range(b)]
                    feeds = {"optical": tiles["optical"], "word_feats": ref_text[0].numpy()[sel],
                             "sentence_emb": ref_text[1].numpy()[sel], "attention_mask": mask[sel]}
                with torch.no_grad():
                    ref = image_spec.module(*[torch.from_numpy(feeds[n]) for n in image_inputs]).numpy()
                for prec, sess in image_sessions.items():
                    got = sess.run(None, {n: feeds[n] for n in image_inputs})[0]
                    report.add(compare(ref, got, kind="logits", precision=prec), graph="image", precision=prec,
                               batch=b, vocab=k, output="logits")
        return report

    # ---------------------------------------------------------------- bundle
    def _bundle(self, model: nn.Module, work: Path, graphs: dict[str, Any], engines: list[dict[str, Any]],
                tile: int, task: str, weights: dict[str, Any]) -> dict[str, Any]:
        """Write the tokenizer, the vocabulary cache and the weights into ``work``, then the
        manifest: built as a typed :class:`rsvl_runtime.manifest.Manifest` and sealed by
        ``write_manifest``. Returns the written (serialised) manifest."""
        from rsvl_runtime.manifest import (
            EngineEntry,
            GraphEntry,
            Limits,
            Manifest,
            ModalitySpec,
            TextSpec,
            TileSpec,
            WeightsEntry,
        )

        cfg = model.config
        o = self.opts
        (work / "tokenizer.json").write_text(model.tokenizer_json(), encoding="utf-8")
        text_cfg = cfg.get("text", {})
        templates = list(text_cfg.get("templates", ["{}"])) if task == "semantic" else []
        classes = cfg.get("classes", [])
        vocab_cache = None
        if task == "semantic" and classes:
            vocab_cache = "vocab_cache.npz"
            write_vocab_cache(work / vocab_cache, work / graphs["text"]["fp32"], model, classes, templates)
        if o.include_weights:
            from rsvl_train.checkpoint import save_checkpoint

            save_checkpoint(model, work / "weights", {"model": cfg.get("name", o.model), **weights})
        pre = cfg["preprocess"]
        modalities = {m: pre[m] for m in (o.modalities if task == "semantic" else ("optical",)) if m in pre}
        modes = ["optical+sar", "optical", "sar"] if set(modalities) == {"optical", "sar"} else ["optical"]
        modes = [m for m in modes if m in cfg.get("modes", modes)]
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            model=cfg.get("name", o.model),
            architecture=cfg.get("architecture"),
            task=task,
            head=cfg.get("head", "open"),
            fixed_vocabulary_size=(cfg.get("num_classes") or len(classes)) if cfg.get("head") == "paper" else None,
            logit_scale=float(model.tau.detach()) if hasattr(model, "tau") else None,
            modalities={m: ModalitySpec.from_dict(spec, f"modalities.{m}") for m, spec in modalities.items()},
            modes=tuple(modes),
            tile=TileSpec(size=tile, overlap=o.overlap),
            embedding_dim=int(cfg.get("embed_dim", 0)),
            text=TextSpec(tokenizer="tokenizer.json", max_length=int(text_cfg.get("max_length", 16)),
                          pad_id=int(text_cfg.get("pad_id", 0)), templates=tuple(templates),
                          encoder=text_cfg.get("encoder")),
            default_vocabulary=tuple(classes),
            graphs={name: GraphEntry.from_dict(g, f"graphs.{name}") for name, g in graphs.items()},
            precision=o.precision,
            opset=o.opset,
            engines=tuple(EngineEntry.from_dict(e, f"engines[{i}]") for i, e in enumerate(engines)),
            vocab_cache=vocab_cache,
            parity="parity.json",
            weights=WeightsEntry.from_dict({"file": "weights.safetensors" if o.include_weights else None, **weights}),
            limits=Limits(max_batch=o.max_batch, max_vocab=o.max_vocab),
            export_timings=dict(self.timer.timings),
            versions=_versions(),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            files={},  # filled by write_manifest
        )
        return write_manifest(work, manifest)


class ParityFailure(RuntimeError):
    """A parity gate failed and --allow-parity-failure was not given."""


REFERRING_EXAMPLES = [
    "the largest water body in the north-east", "the building closest to the road",
    "the road crossing the image from west to east", "the farmland in the south-west",
    "the small pond near the centre", "the bare soil patch at the bottom",
]


def write_vocab_cache(path: Path, text_onnx: Path, model: nn.Module, classes: list[dict[str, Any]],
                      templates: list[str]) -> None:
    """Default-vocabulary embeddings computed by the exported text graph, exactly as the runtime
    would compute them (same tokenizer, same prompt averaging)."""
    from .parity import ort_session

    vocab = parse_vocabulary(classes)
    texts, owner = prompts_for(vocab, templates)
    ids, mask = model.tokenize(texts)
    emb = ort_session(text_onnx).run(None, {"input_ids": ids, "attention_mask": mask})[0]
    text_emb = average_per_class(emb, owner, len(vocab))
    np.savez(path, text_emb=text_emb, signature=np.asarray(text_signature(vocab, templates)))


def export_bundle(opts: ExportOptions) -> Path:
    return Exporter(opts).run()
