"""The Python API: :class:`Segmenter` (open-vocabulary semantic segmentation, TSMNet bundles)
and :class:`Referrer` (referring segmentation, CADFormer bundles).

    seg = Segmenter.load("bundles/tsmnet-tiny-fp16")           # backend="auto"
    seg.set_vocabulary(["water, lake, river", "building", "vegetation"])
    labels, probs = seg.predict(optical_uint8_chw, sar_db_chw)   # numpy in, numpy out
    seg.predict_raster("optical.tif", "sar.tif", out_dir="out/") # tiled GeoTIFF -> outputs

No torch is imported unless ``backend="torch"`` is asked for.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backends import Sessions, load_sessions
from .bundle import Bundle, BundleError
from .checks import check_array, preflight, sar_array_valid, with_array_limits
from .colours import class_palette
from .normalization import normalize_optical, normalize_sar
from .options import InputOptions, SceneOptions
from .postprocess import (
    DEFAULT_LOGIT_SCALE,
    LABEL_NODATA,
    LABEL_NODATA_U16,
    Scoring,
    label_array,
    softmax,
)
from .sensors import scaling_of
from .text import BundleTokenizer
from .tiling import TileGrid, blend_tiles, pad_to_tile
from .vocabulary import (
    VocabClass,
    VocabularyCache,
    VocabularyError,
    average_per_class,
    parse_vocabulary,
    prompts_for,
    text_signature,
    vocabulary_key,
    vocabulary_to_json,
)

log = logging.getLogger("rsvl.runtime")

#: Prompts encoded per text-graph call (bounded memory for big vocabularies).
TEXT_CHUNK = 256
#: ``predict``'s labels: uint8 with nodata ``LABEL_NODATA`` (255, as in labels.tif), uint16 with
#: ``LABEL_NODATA_U16`` above 255 classes (:mod:`rsvl_runtime.postprocess`).
__all__ = ["LABEL_NODATA", "LABEL_NODATA_U16", "TEXT_CHUNK", "Referrer", "Segmenter", "label_array",
           "open_bundle", "softmax"]

BundleArg = str | os.PathLike[str] | Bundle


def open_bundle(bundle: BundleArg, expect_digest: str | None = None) -> Bundle:
    """A verified :class:`Bundle` from a path (or an already loaded one).

    ``expect_digest`` pins the bundle: :meth:`Bundle.load` refuses a bundle whose digest differs.
    A loaded :class:`Bundle` given with ``expect_digest`` is re-opened from its folder so the same
    check applies. The one bundle opener of the API, ``rsvl-infer`` and batch runs.
    """
    if isinstance(bundle, Bundle):
        if expect_digest is None:
            return bundle
        bundle = bundle.root
    return Bundle.load(bundle, expect_digest=expect_digest)


class _BundleModel:
    """What Segmenter and Referrer share: the bundle, its sessions, tokenizer and batching."""

    task = "semantic"

    def __init__(self, bundle: Bundle, sessions: Sessions, batch: int | None = None) -> None:
        if bundle.task != self.task:
            other = "Referrer" if bundle.task == "referring" else "Segmenter"
            raise BundleError(f"{bundle.root} is a {bundle.task} bundle; load it with {other}.load")
        self.bundle = bundle
        self.sessions = sessions
        m = bundle.meta
        if not m.text.tokenizer:
            raise BundleError(f"{bundle.root}: the manifest names no tokenizer (text.tokenizer); re-export the bundle")
        self.tokenizer = BundleTokenizer(bundle.path(m.text.tokenizer), m.text.max_length, m.text.pad_id)
        self.tile = bundle.tile_size
        self.overlap = bundle.overlap
        self.batch = int(batch or min(8, m.limits.max_batch))
        # the serialised (JSON) specs: they also go into the resume signature and done.json
        self.modalities = bundle.manifest["modalities"]
        self.timings: dict[str, float] = {}
        self._warm: set[tuple[Any, ...]] = set()

    @classmethod
    def load(cls, bundle: BundleArg, backend: str = "auto", precision: str = "auto",
             batch: int | None = None, threads: int | None = None, *, expect_digest: str | None = None,
             **kwargs: Any):
        """Open (and verify) a bundle and load its graphs on ``backend``.

        ``expect_digest``: the bundle digest a deployment pins (``rsvl-infer --expect-digest``);
        a bundle with another digest is refused (:func:`open_bundle`).
        """
        b = open_bundle(bundle, expect_digest)
        return cls(b, load_sessions(b, backend, precision, threads), batch=batch, **kwargs)

    @property
    def backend(self) -> str:
        return self.sessions.backend

    def warm_up(self, tile: int | None = None) -> float:
        """Run one batch of zeros (the run's batch size, ``tile`` px) through the image graph
        before a scene, so that the engine's one-time work of the first calls (ONNX Runtime sizes
        its memory arena, a TensorRT context its buffers) is not counted in the scene's timings:
        the first two 256² batches of tsmnet-tiny took 0.37-0.48 s and 0.19-0.21 s on the 2-core
        CPU, a warm call 0.14 s. Needs the vocabulary (expression) set; once per shape. Returns
        its seconds (0 when already warm)."""
        t = int(tile or self.tile)
        key = (self.batch, t, self._warm_key())
        if key in self._warm:
            return 0.0
        t0 = time.perf_counter()
        zeros = {name: np.zeros((self.batch, bands, t, t), np.float32) for name, bands in (("optical", 3), ("sar", 1))}
        self.predict_logits(zeros["optical"], zeros["sar"] if self.task == "semantic" else None)
        self._warm.add(key)
        return time.perf_counter() - t0

    def _warm_key(self) -> Any:
        return None

    def scene_options(self, options: Mapping[str, Any], **fixed: Any) -> SceneOptions:
        """The frozen :class:`~rsvl_runtime.options.SceneOptions` of one ``predict_raster`` call,
        built once: the bundle's tile, overlap, batch and modality specs, ``fixed`` (vocabulary,
        task, report info) and the caller's ``options`` (``overlap``, ``bands``, ``nodata``,
        ``sar_units``, ``write_scores``, ``cog``, ``sar_check``, ``progress`` ...). ``tile`` is
        taken as given; :meth:`_check_tile` refuses one the image graph cannot run."""
        opts = dict(options)
        kwargs: dict[str, Any] = {"batch": self.batch, "optical_spec": self.modalities.get("optical"),
                                  "sar_spec": self.modalities.get("sar"), **fixed}
        clash = sorted(set(opts) & set(kwargs))
        if clash:
            raise TypeError(f"predict_raster() got option(s) the model sets itself: {', '.join(clash)}")
        tile = int(opts.pop("tile", None) or self.tile)
        overlap = opts.pop("overlap", None)
        if opts.get("pipeline") in (None, "auto"):  # CPU stages between the calls of a CPU engine
            opts["pipeline"] = "serial" if self.sessions.on_cpu else "overlap"
        return SceneOptions.from_kwargs(tile=tile, overlap=self.overlap if overlap is None else float(overlap),
                                        **kwargs, **opts)

    def _check_tile(self, tile: int) -> None:
        if tile != self.tile:
            raise ValueError(f"the bundle's image graph is fixed to {self.tile}px tiles; --tile {tile} needs a "
                             f"re-export with --tile {tile}")

    def info(self) -> dict[str, Any]:
        m = self.bundle.meta
        info = {"bundle": str(self.bundle.root), "model": m.model, "task": m.task, "backend": self.backend,
                "precision": self.sessions.precision, "tile": self.tile, "overlap": self.overlap,
                "bundle_sha256": self.bundle.digest[:16], "created": m.created}
        scale = getattr(self, "logit_scale", None)
        return {**info, "logit_scale": scale} if scale is not None else info


class Segmenter(_BundleModel):
    """Open-vocabulary semantic segmentation with a cached vocabulary.

    ``min_score``: the "unclassified" threshold of :meth:`predict` and the default of
    :meth:`predict_raster` (its ``min_score=`` option wins). None (the default): no threshold
    with two or more classes, 0.5 (cosine > 0) with one class — see
    :mod:`rsvl_runtime.postprocess`. The one-class score needs the image graph's logit scale
    ``tau``: the manifest's ``logit_scale``, else :data:`DEFAULT_LOGIT_SCALE`.
    """

    task = "semantic"

    def __init__(self, bundle: Bundle, sessions: Sessions, batch: int | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, min_score: float | None = None) -> None:
        super().__init__(bundle, sessions, batch)
        Scoring.of("semantic", 2, min_score)  # refuses a threshold outside 0..1
        self.min_score = min_score
        scale = bundle.meta.logit_scale
        self.logit_scale = float(scale) if isinstance(scale, (int, float)) and scale > 0 else None
        self._warned_scale = False
        self.cache = VocabularyCache(cache_dir)
        self.templates: list[str] = list(bundle.meta.text.prompt_templates)
        self.classes: list[VocabClass] = []
        self.text_emb: np.ndarray | None = None
        self._image_inputs = list(bundle.meta.graphs["image"].inputs)
        default = [dict(c) for c in bundle.meta.default_vocabulary]
        if default:
            self.set_vocabulary(default)

    # ---------------------------------------------------------------- vocabulary
    def set_vocabulary(self, classes: Iterable[Any] | str, templates: Sequence[str] | None = None
                       ) -> list[VocabClass]:
        """Set the classes (names with synonyms, see :func:`parse_vocabulary`); encodes them once
        with the text graph unless cached. Never needs a re-export."""
        vocab = parse_vocabulary(classes)
        fixed = self.bundle.meta.fixed_vocabulary_size
        if fixed and len(vocab) != fixed:
            raise VocabularyError(f"this bundle has a fixed-K 'paper' head with {fixed} classes; got {len(vocab)}. "
                                  "Export the open head to change the vocabulary")
        max_k = self.bundle.meta.limits.max_vocab
        if self.backend == "tensorrt" and max_k and len(vocab) > max_k:
            raise VocabularyError(f"{len(vocab)} classes exceed the engine profile's K ≤ {max_k}; re-export with "
                                  f"--max-vocab {len(vocab)}")
        if templates is not None:
            self.templates = list(templates)
        t0 = time.perf_counter()
        emb = self._bundle_cache(vocab)
        if emb is None:
            key = vocabulary_key(self.bundle.digest, vocab, self.templates)
            emb = self.cache.get_or_encode(key, vocab, lambda: self.encode(vocab), bundle_digest=self.bundle.digest,
                                           templates=self.templates,
                                           width=self.bundle.meta.embedding_dim or None)
        self.timings["vocabulary_s"] = time.perf_counter() - t0
        self.classes, self.text_emb = vocab, emb.astype(np.float32)
        return vocab

    def _warm_key(self) -> Any:
        return None if self.text_emb is None else self.text_emb.shape

    def vocabulary_info(self) -> list[dict[str, Any]]:
        """Per class: name, synonyms, colour and the prompts its embedding averages (the report)."""
        texts, owner = prompts_for(self.classes, self.templates)
        return [{**v, "prompts": [t for t, o in zip(texts, owner) if o == i]}
                for i, v in enumerate(vocabulary_to_json(self.classes))]

    def _bundle_cache(self, vocab: list[VocabClass]) -> np.ndarray | None:
        rel = self.bundle.meta.vocab_cache
        if not rel:
            return None
        with np.load(self.bundle.path(rel), allow_pickle=False) as z:
            if str(z["signature"]) == text_signature(vocab, self.templates):
                return z["text_emb"]
        return None

    def encode(self, vocab: Sequence[VocabClass]) -> np.ndarray:
        """Encode the vocabulary with the text graph: ``[K, D]`` L2-normalised class embeddings."""
        texts, owner = prompts_for(vocab, self.templates)
        parts = []
        for i in range(0, len(texts), TEXT_CHUNK):
            ids, mask = self.tokenizer(texts[i:i + TEXT_CHUNK])
            parts.append(self.sessions.text.run({"input_ids": ids, "attention_mask": mask})["text_emb"])
        return average_per_class(np.concatenate(parts), owner, len(vocab))

    # ---------------------------------------------------------------- engine
    def predict_logits(self, optical: np.ndarray | None, sar: np.ndarray | None) -> np.ndarray:
        """Normalised tiles ``[B,3,t,t]`` / ``[B,1,t,t]`` (either may be None) -> logits ``[B,K,t,t]``.

        This is the ``predict_fn`` the tiled scene runner calls. A missing modality is fed as zeros
        (the models were trained with modality dropout to zeros)."""
        if self.text_emb is None:
            raise VocabularyError("no vocabulary set: call set_vocabulary([...]) first")
        ref = optical if optical is not None else sar
        if ref is None:
            raise ValueError("predict needs at least one of optical or sar")
        b, _, h, w = ref.shape
        feeds: dict[str, np.ndarray] = {"text_emb": self.text_emb}
        for name, bands in (("optical", 3), ("sar", 1)):
            if name in self._image_inputs:
                x = optical if name == "optical" else sar
                feeds[name] = x.astype(np.float32) if x is not None else np.zeros((b, bands, h, w), np.float32)
        out = []
        for i in range(0, b, self.batch):  # the engine's batch limit
            sl = {k: (v[i:i + self.batch] if k != "text_emb" else v) for k, v in feeds.items()}
            out.append(self.sessions.image.run(sl)["logits"])
        return (out[0] if len(out) == 1 else np.concatenate(out)).astype(np.float32, copy=False)

    def _check_mode(self, has_optical: bool, has_sar: bool) -> None:
        if not has_optical and not has_sar:
            raise ValueError("no input: both optical and SAR are None; give an optical and/or a SAR image "
                             f"(this bundle supports {self.bundle.modes})")
        mode = "optical+sar" if has_optical and has_sar else ("optical" if has_optical else "sar")
        if mode not in self.bundle.modes:
            raise ValueError(f"this bundle supports {self.bundle.modes}, not {mode!r} input; "
                             + ("pass the SAR image (--sar)" if not has_sar else "pass the optical image"))

    # ---------------------------------------------------------------- numpy API
    def predict(self, optical: np.ndarray | None, sar: np.ndarray | None = None, sar_units: str | None = None,
                *, sar_check: bool = True, sensor: str | None = None, scale: float | None = None,
                offset: float | None = None, stretch: tuple[float, float] | None = None,
                nodata: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Tiled prediction on in-memory arrays.

        ``optical``: ``[3, H, W]`` (or ``[H, W, 3]``) digital numbers in the bundle's dtype (uint8, or
        uint16 when the bundle declares it); ``sar``: ``[1, H, W]`` or ``[H, W]`` float32/float64 in dB
        (or linear with ``sar_units="linear"``). The data types are checked as ``rsvl-infer`` checks
        rasters (:func:`rsvl_runtime.raster_io.check_input_dtype`); NaN/inf SAR pixels are nodata,
        and implausible SAR units are refused unless ``sar_check=False`` (see
        :mod:`rsvl_runtime.checks`). Returns ``labels [H, W]`` class ids (uint8, 255 = nodata; uint16
        when the ids do not fit below 255; K = "unclassified" below the ``min_score`` threshold) and
        ``probabilities [K, H, W]`` float32 scores (softmax; the mapped cosine for one class; 0 at
        nodata pixels), see :meth:`scoring`. ``sensor``/``scale``/``offset``/``stretch`` scale
        uint16/float optical arrays as ``rsvl-infer``'s flags do (:mod:`rsvl_runtime.sensors`; a
        preset's bands are not applied to arrays: select them first, e.g. ``arr[[3, 2, 1]]``);
        ``nodata`` is left out of the ``stretch`` percentiles.
        """
        self._check_mode(optical is not None, sar is not None)
        norm: dict[str, np.ndarray] = {}
        valid = None
        if optical is not None:
            scaling = scaling_of(InputOptions(sensor=sensor, scale=scale, offset=offset, stretch=stretch))
            opt = check_array(optical, "optical", self.modalities["optical"], scaling=scaling)
            norm["optical"] = normalize_optical(opt, self.modalities["optical"],
                                                with_array_limits(scaling, opt, nodata))
        if sar is not None:
            s = check_array(sar, "sar", self.modalities["sar"])
            valid = sar_array_valid(s, self.modalities["sar"], sar_units, sar_check=sar_check)
            with np.errstate(invalid="ignore"):
                norm["sar"] = normalize_sar(s, self.modalities["sar"], units=sar_units)
            norm["sar"][:, ~valid] = 0.0  # the normalised mean, as the raster path feeds nodata
        shapes = {v.shape[1:] for v in norm.values()}
        if len(shapes) != 1:
            raise ValueError(f"optical and SAR differ in size {sorted(shapes)}; co-register them first")
        h, w = shapes.pop()
        grid = TileGrid(h, w, self.tile, self.overlap)
        logits = blend_tiles(grid, len(self.classes), self._tile_logits(grid, norm))
        scoring = self.scoring()
        probs = scoring.scores(logits)
        return label_array(probs, valid, scoring.min_score), probs

    def scoring(self, min_score: float | None = None) -> Scoring:
        """How this vocabulary's logits become scores and labels (``min_score`` None: the
        constructor's)."""
        if len(self.classes) == 1 and self.logit_scale is None and not self._warned_scale:
            self._warned_scale = True
            log.warning("%s records no logit_scale; one-class scores assume tau = %.4g (1/0.07) — the default "
                        "threshold 0.5 (logit >= 0) does not depend on it, other thresholds and scores.tif do",
                        self.bundle.root, DEFAULT_LOGIT_SCALE)
        return Scoring.of("semantic", len(self.classes), self.min_score if min_score is None else min_score,
                          self.logit_scale)

    def _tile_logits(self, grid: TileGrid, norm: dict[str, np.ndarray]):
        tiles = list(grid.tiles())
        for i in range(0, len(tiles), self.batch):
            chunk = tiles[i:i + self.batch]
            batch = {k: np.stack([pad_to_tile(v[:, t.y:t.y + t.height, t.x:t.x + t.width], self.tile)
                                  for t in chunk]) for k, v in norm.items()}
            logits = self.predict_logits(batch.get("optical"), batch.get("sar"))
            yield from zip(chunk, logits)

    # ---------------------------------------------------------------- rasters
    def predict_raster(self, optical_path: str | os.PathLike[str] | None, sar_path: str | os.PathLike[str] | None = None,
                       out_dir: str | os.PathLike[str] = "rsvl_out", **options: Any):
        """Tiled inference over GeoTIFFs, streamed window by window; writes labels.tif, scores.tif,
        classes.json, preview.png and report.html atomically into ``out_dir``.

        The inputs are checked first (:func:`rsvl_runtime.checks.preflight`: georeferencing, data
        types, nodata share, SAR units); ``sar_check=False`` turns an implausible-SAR-units refusal
        into a warning. The other ``options`` are :class:`rsvl_runtime.options.SceneOptions`'s
        (:meth:`scene_options`).
        """
        from .scene import run_scene

        self._check_mode(optical_path is not None, sar_path is not None)
        if self.min_score is not None and options.get("min_score") is None:
            options = {**options, "min_score": self.min_score}
        self.scoring(options.get("min_score"))  # refuses a bad threshold, warns about a missing logit_scale
        opts = self.scene_options(options, class_names=[c.name for c in self.classes],
                                  colors=[c.color for c in self.classes], bundle_info=self.info(),
                                  vocabulary=self.vocabulary_info())
        preflight(optical_path, sar_path, opts.inputs)
        self._check_tile(opts.tile)
        opts = opts.replace(engine_timings={"engine_warmup_s": self.warm_up(opts.tile)})
        return run_scene(self.predict_logits, str(optical_path) if optical_path else None,
                         str(sar_path) if sar_path else None, Path(out_dir), opts)


class Referrer(_BundleModel):
    """Referring segmentation: one expression -> a binary mask."""

    task = "referring"

    def __init__(self, bundle: Bundle, sessions: Sessions, batch: int | None = None) -> None:
        super().__init__(bundle, sessions, batch)
        self._expr: str | None = None
        self._text: dict[str, np.ndarray] = {}

    def set_expression(self, expression: str) -> None:
        if not expression or not expression.strip():
            raise VocabularyError("the referring expression is empty: pass --refer \"the largest lake\"")
        if expression == self._expr:
            return
        ids, mask = self.tokenizer([expression.strip()])
        out = self.sessions.text.run({"input_ids": ids, "attention_mask": mask})
        self._text = {"word_feats": out["word_feats"], "sentence_emb": out["sentence_emb"], "attention_mask": mask}
        self._expr = expression

    def predict_logits(self, optical: np.ndarray | None, sar: np.ndarray | None = None) -> np.ndarray:
        if optical is None:
            raise ValueError("referring segmentation needs the optical image")
        if not self._text:
            raise VocabularyError("no expression set: call set_expression(...) or predict(image, expression)")
        out = []
        for i in range(0, optical.shape[0], self.batch):
            x = optical[i:i + self.batch].astype(np.float32)
            feeds = {"optical": x, **{k: np.repeat(v, x.shape[0], axis=0) for k, v in self._text.items()}}
            out.append(self.sessions.image.run(feeds)["logits"])
        return np.concatenate(out)

    def predict(self, image: np.ndarray, expression: str) -> tuple[np.ndarray, np.ndarray]:
        """``image [3,H,W]`` in the bundle's optical dtype (checked as ``rsvl-infer`` checks rasters)
        + expression -> (mask ``[H,W]`` uint8 0/1, probability ``[H,W]``)."""
        img = check_array(image, "optical", self.modalities["optical"], what="image array")
        self.set_expression(expression)
        x = normalize_optical(img, self.modalities["optical"])
        grid = TileGrid(x.shape[1], x.shape[2], self.tile, self.overlap)

        def tiles():
            all_tiles = list(grid.tiles())
            for i in range(0, len(all_tiles), self.batch):
                chunk = all_tiles[i:i + self.batch]
                batch = np.stack([pad_to_tile(x[:, t.y:t.y + t.height, t.x:t.x + t.width], self.tile) for t in chunk])
                yield from zip(chunk, self.predict_logits(batch))

        probs = softmax(blend_tiles(grid, 2, tiles()), axis=0)
        return (probs[1] > 0.5).astype(np.uint8), probs[1]

    def predict_raster(self, optical_path: str | os.PathLike[str], expression: str,
                       out_dir: str | os.PathLike[str] = "rsvl_out", **options: Any):
        """Referring segmentation over a GeoTIFF; writes mask.tif and the report."""
        from .scene import run_scene

        if optical_path is None:
            raise ValueError("referring segmentation needs the optical raster")
        opts = self.scene_options({k: v for k, v in options.items() if k != "tile"},  # the bundle's tile
                                  class_names=["background", expression],
                                  colors=class_palette([["background"], [expression]], [None, (255, 64, 64)]),
                                  sar_spec=None, task="referring",
                                  bundle_info={**self.info(), "expression": expression})
        preflight(optical_path, None, opts.inputs)
        self.set_expression(expression)
        opts = opts.replace(engine_timings={"engine_warmup_s": self.warm_up()})
        return run_scene(self.predict_logits, str(optical_path), None, Path(out_dir), opts)
