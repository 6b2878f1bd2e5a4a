"""Triton Python-backend model written by rsvl-export triton: raw tiles + vocabulary -> labels.

Runs rsvl_runtime's Segmenter on the bundle in ./bundle: the bundle's normalisation, the cached
vocabulary encoding and the same engine as rsvl_runtime, so each tile's labels equal
``Segmenter.predict(optical_tile, sar_tile)``. Requests batched by Triton's dynamic batcher are
grouped by vocabulary and run as one engine batch.

This file is the source of ``REPO/NAME/1/model.py`` (copied there by
``rsvl_export/triton.py``); inside a repository it finds the vendored ``rsvl_runtime`` next to
itself. Outside a Triton server ``triton_python_backend_utils`` is absent and ``pb_utils`` is
None: the module stays importable for tests, which set ``pb_utils`` to a stand-in.
"""

import json
import sys
from pathlib import Path

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside a Triton server (tests, tooling)
    pb_utils = None

HERE = Path(__file__).resolve().parent
if (HERE / "rsvl_runtime").is_dir() and str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the vendored copy of rsvl_runtime

from rsvl_runtime.normalization import normalize_optical, normalize_sar
from rsvl_runtime.segmenter import Segmenter, softmax
from rsvl_runtime.tiling import TileGrid, blend_tiles


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _mode(optical, sar):
    """The bundle mode ("optical", "sar", "optical+sar") that a request's inputs make."""
    if optical is not None and sar is not None:
        return "optical+sar"
    return "optical" if optical is not None else "sar"


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        bundle = Path(params.get("bundle") or "bundle")
        bundle = bundle if bundle.is_absolute() else version_dir / bundle
        threads = int(params["threads"]) if params.get("threads") else None
        self.seg = Segmenter.load(bundle, backend=params.get("backend") or "auto", threads=threads)
        self.default_vocab = list(self.seg.bundle.meta.default_vocabulary)
        self.modes = set(self.seg.bundle.modes)
        self.vocab_key = None
        self.t = self.seg.tile
        self.grid = TileGrid(self.t, self.t, self.t, self.seg.overlap)
        self.tile0 = next(iter(self.grid.tiles()))

    def _set_vocab(self, key):
        if key != self.vocab_key:
            self.seg.set_vocabulary(key if key else self.default_vocab)
            self.vocab_key = key

    def _labels(self, optical, sar):
        """The steps of Segmenter.predict for whole tiles, with one engine batch for all tiles."""
        mods = self.seg.modalities
        opt = normalize_optical(optical, mods["optical"]) if optical is not None else None
        sr = normalize_sar(sar, mods["sar"]) if sar is not None else None
        logits = self.seg.predict_logits(opt, sr)
        k = logits.shape[1]
        out = np.empty((logits.shape[0], self.t, self.t), np.uint8)
        for i in range(logits.shape[0]):
            blended = blend_tiles(self.grid, k, [(self.tile0, logits[i])])
            out[i] = softmax(blended, axis=0).argmax(0).astype(np.uint8)
        return out

    def _parse(self, request):
        """(vocabulary key, mode, optical, sar) of one request; ValueError for a bad request."""
        def get(name):
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        optical, sar, vocab = get("optical"), get("sar"), get("vocabulary")
        if optical is None and sar is None:
            raise ValueError("send at least one of the inputs optical, sar")
        mode = _mode(optical, sar)
        if mode not in self.modes:
            raise ValueError(f"this bundle supports {sorted(self.modes)}, not {mode!r} input")
        for name, x, c in (("optical", optical, 3), ("sar", sar, 1)):
            if x is not None and tuple(x.shape[1:]) != (c, self.t, self.t):
                raise ValueError(f"{name} must be [B, {c}, {self.t}, {self.t}], got {list(x.shape)}")
        if optical is not None and sar is not None and optical.shape[0] != sar.shape[0]:
            raise ValueError(f"optical and sar batch sizes differ ({optical.shape[0]} vs {sar.shape[0]})")
        keys = {_text(v).strip() for v in vocab.reshape(-1)} if vocab is not None else {""}
        if len(keys) > 1:
            raise ValueError("one vocabulary per request: every row of 'vocabulary' must be the same")
        return keys.pop(), mode, optical, sar

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        for i, request in enumerate(requests):
            try:
                key, mode, optical, sar = self._parse(request)
            except Exception as e:  # noqa: BLE001 - one bad request must not fail the others
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))
                continue
            groups.setdefault((key, mode), []).append((i, optical, sar))
        for (key, mode), items in groups.items():
            try:
                self._set_vocab(key)
                optical = np.concatenate([o for _, o, _ in items]) if "optical" in mode.split("+") else None
                sar = np.concatenate([s for _, _, s in items]) if "sar" in mode.split("+") else None
                labels = self._labels(optical, sar)
            except Exception as e:  # noqa: BLE001
                for i, _, _ in items:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(e).__name__}: {e}"))
                continue
            start = 0
            for i, o, s in items:
                n = (o if o is not None else s).shape[0]
                responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor("labels", labels[start:start + n])])
                start += n
        return responses

    def finalize(self):
        self.seg = None
