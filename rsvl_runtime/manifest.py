"""The typed bundle manifest: what ``manifest.json`` holds, with one default per field.

:class:`Manifest` is the parsed form of a bundle's ``manifest.json`` (see
``rsvl_runtime/bundle.py`` for the checks made on load and the seal). The export builds a
:class:`Manifest` (``rsvl_export/pipeline.py``), :func:`rsvl_runtime.bundle.write_manifest` seals
and writes :meth:`Manifest.to_dict`, and :meth:`rsvl_runtime.bundle.Bundle.load` parses the file
back with :meth:`Manifest.from_dict` (exposed as ``Bundle.meta``).

Layout (format version 2)::

    Manifest
      format_version, model, architecture, task, head, fixed_vocabulary_size
      modalities      {name: ModalitySpec}      bands, dtype, scale, units, mean, std
      modes           ("optical+sar", "optical", "sar")
      tile            TileSpec                  size, overlap
      embedding_dim
      text            TextSpec                  tokenizer, max_length, pad_id, templates, encoder
      default_vocabulary  ({"name": ..., "synonyms": [...], "color": [r, g, b]}, ...)
      graphs          {name: GraphEntry}        fp32, fp16, ort, exporter, inputs, outputs, ort_report,
                                                flops (FlopCount: total, per_item, item_axis, items; optional)
                                                inputs/outputs: {name: TensorSpec}  dtype, shape
      precision, opset
      engines         (EngineEntry, ...)        graph, file, flavour, version, precision, targets,
                                                built_on, profiles, sha256, bytes
      vocab_cache, parity
      weights         WeightsEntry              file, source, trained
      limits          Limits                    max_batch, max_vocab
      export_timings, versions, created
      files           {path: FileEntry}         sha256, bytes
      manifest_sha256

Every class keeps the keys it does not model in ``extra`` (e.g. a graph's ``export_seconds``,
an engine's ``build_seconds``), so :meth:`Manifest.to_dict` gives back exactly the dictionary a
current export wrote and the ``manifest_sha256`` seal stays stable.

**Format versions.** Version 1 engine entries could carry the first TensorRT keys
(``tensorrt_version``, ``compute_capability``, ``gpu``, no ``flavour``); version 2 engine entries
always use ``flavour``/``version``/``targets``/``built_on`` (what
``rsvl_runtime/backends/tensorrt/build.py`` writes), and a version-2 ``to_dict`` writes every
top-level key. :meth:`Manifest.from_dict` runs an older manifest through the chain
:data:`UPGRADES` (``upgrade_v1_to_v2``, ...) before parsing it, as Raster Vision's bundle config
upgrader does. The upgrade works on the parsed form only: ``Bundle.manifest`` keeps the dictionary
as it is on disk, so the seal of an old bundle still checks.

Torch-free and stdlib-only (no pydantic): ``rsvl_runtime`` must import on a bare runtime install.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: The format version a current export writes.
FORMAT_VERSION = 2
#: Format versions :meth:`Manifest.from_dict` reads (older ones through :data:`UPGRADES`).
SUPPORTED_VERSIONS = (1, 2)
#: Keys of ``manifest["graphs"][name]`` whose values are file paths.
GRAPH_FILE_KEYS = ("fp32", "fp16", "ort")
TASKS = ("semantic", "referring")

_FIX = "the bundle is corrupt or hand-edited: re-export it with `rsvl-export`"


class BundleError(ValueError):
    """A bundle is missing, corrupt or incompatible. The message names the file and the fix."""


# ----------------------------------------------------------------------------- field readers
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "number": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "list": (lambda v: isinstance(v, list | tuple), "a list"),
}


class _Fields:
    """Reads the keys of one manifest object, raising :class:`BundleError` that names the dotted
    key (``tile.size``, ``graphs.image.inputs``) for a missing or ill-typed value."""

    def __init__(self, d: Any, where: str, source: str) -> None:
        self.where, self.source = where, source
        if not isinstance(d, dict):
            raise self._error(where or "manifest", d, "an object")
        self.d: dict[str, Any] = d
        self.used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _error(self, key: str, value: Any, want: str) -> BundleError:
        return BundleError(f"{self.source}: manifest key {key!r} is {value!r} ({type(value).__name__}), "
                           f"expected {want}; {_FIX}")

    def _check(self, key: str, value: Any, kind: str) -> Any:
        ok, want = _KINDS[kind]
        if not ok(value):
            raise self._error(self._key(key), value, want)
        return value

    def req(self, key: str, kind: str) -> Any:
        """A required value of ``kind``."""
        self.used.add(key)
        if key not in self.d:
            raise BundleError(f"{self.source}: manifest lacks the key {self._key(key)!r}; {_FIX}")
        return self._check(key, self.d[key], kind)

    def opt(self, key: str, kind: str, default: Any) -> Any:
        """An optional value of ``kind``; ``default`` when the key is absent. An explicit null is
        accepted only where ``default`` is None."""
        self.used.add(key)
        if key not in self.d or (self.d[key] is None and default is None):
            return default
        return self._check(key, self.d[key], kind)

    def strs(self, key: str, default: tuple[str, ...] | None = ()) -> tuple[str, ...] | None:
        """An optional list of strings, as a tuple."""
        v = self.opt(key, "list", None)
        if v is None:
            return default
        for i, item in enumerate(v):
            if not isinstance(item, str):
                raise self._error(f"{self._key(key)}[{i}]", item, "a string")
        return tuple(v)

    def numbers(self, key: str) -> tuple[float, ...]:
        """An optional list of numbers, as a tuple (values kept as written: 255 stays an int)."""
        v = self.opt(key, "list", None) or ()
        for i, item in enumerate(v):
            if not _KINDS["number"][0](item):
                raise self._error(f"{self._key(key)}[{i}]", item, "a number")
        return tuple(v)

    def objects(self, key: str, required: bool = False) -> dict[str, Any]:
        """An object whose values are parsed by the caller (``{name: spec}``)."""
        return dict(self.req(key, "dict") if required else (self.opt(key, "dict", None) or {}))

    def sub(self, key: str) -> str:
        return self._key(key)

    def extra(self) -> dict[str, Any]:
        """The keys this class does not model, kept verbatim for the round trip."""
        return {k: copy.deepcopy(v) for k, v in self.d.items() if k not in self.used}


def _plain(v: Any) -> Any:
    """A JSON-ready deep copy: tuples become lists, mappings dicts."""
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def _drop_none(d: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """``d`` without the ``keys`` whose value is None (keys that are written only when set)."""
    return {k: v for k, v in d.items() if not (k in keys and v is None)}


# ----------------------------------------------------------------------------- nested types
@dataclass(frozen=True)
class ModalitySpec:
    """One input modality's bands and normalisation (``modalities.optical`` / ``modalities.sar``);
    the rule is ``rsvl_runtime/normalization.py``'s.

    Defaults: ``bands``/``mean``/``std`` empty (``normalization.band_stats`` refuses a spec
    without one statistic per band). ``dtype``, ``scale``, ``offset`` and ``units`` are None when
    absent and are then not written back; the value a reader uses then comes from one property
    each: :attr:`optical_dtype` ``"uint8"``, :attr:`optical_scale` ``255.0``,
    :attr:`optical_offset` ``0.0``, :attr:`sar_units` ``"db"``. Optical values become
    ``dn / scale + offset`` before ``(x - mean) / std`` (a bundle trained on reflectance declares
    e.g. ``dtype`` ``"uint16"``, ``scale`` 10000 and, for data with an additive offset, ``offset``).
    """

    bands: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    dtype: str | None = None
    scale: float | None = None
    units: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    offset: float | None = None

    #: What :attr:`optical_dtype`, :attr:`optical_scale`, :attr:`sar_units` give for an absent key.
    DEFAULT_DTYPE = "uint8"
    DEFAULT_SCALE = 255.0
    DEFAULT_UNITS = "db"

    @property
    def optical_dtype(self) -> str:
        """The digital-number type optical inputs must have (``"uint8"`` when not declared)."""
        return self.dtype or self.DEFAULT_DTYPE

    @property
    def optical_scale(self) -> float:
        """Optical digital numbers are divided by this before ``(x - mean) / std`` (255.0)."""
        return self.DEFAULT_SCALE if self.scale is None else self.scale

    @property
    def optical_offset(self) -> float:
        """Added to ``dn / scale`` before ``(x - mean) / std`` (0.0 when not declared)."""
        return 0.0 if self.offset is None else self.offset

    @property
    def sar_units(self) -> str:
        """The units SAR values are in when the caller does not say (``"db"``)."""
        return (self.units or self.DEFAULT_UNITS).lower()

    @classmethod
    def from_dict(cls, d: Any, where: str = "modality", source: str = "modality spec") -> ModalitySpec:
        f = _Fields(d, where, source)
        return cls(bands=f.strs("bands") or (), mean=f.numbers("mean"), std=f.numbers("std"),
                   dtype=f.opt("dtype", "str", None), scale=f.opt("scale", "number", None),
                   units=f.opt("units", "str", None), offset=f.opt("offset", "number", None),
                   extra=f.extra())

    @classmethod
    def coerce(cls, spec: ModalitySpec | Mapping[str, Any] | None) -> ModalitySpec:
        """``spec`` as a :class:`ModalitySpec` (a plain dict, e.g. a model config's ``preprocess``
        entry, is parsed; None is the empty spec)."""
        if isinstance(spec, ModalitySpec):
            return spec
        return cls.from_dict(dict(spec or {}))

    def to_dict(self) -> dict[str, Any]:
        d = {"bands": list(self.bands), "dtype": self.dtype, "scale": self.scale, "offset": self.offset,
             "units": self.units, "mean": list(self.mean), "std": list(self.std)}
        return {**_drop_none(d, ("dtype", "scale", "offset", "units")), **_plain(self.extra)}


@dataclass(frozen=True)
class TileSpec:
    """``tile``: the image graph's square tile ``size`` in pixels (required) and the scene
    runner's ``overlap`` fraction between neighbouring tiles (default 0.25)."""

    size: int
    overlap: float = 0.25
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str = "tile", source: str = "manifest") -> TileSpec:
        f = _Fields(d, where, source)
        size = f.req("size", "int")
        overlap = f.opt("overlap", "number", 0.25)
        if size < 1 or not 0 <= overlap < 1:
            raise BundleError(f"{source}: manifest key {where!r} is {d!r}: a tile needs size >= 1 and "
                              f"0 <= overlap < 1; {_FIX}")
        return cls(size=size, overlap=overlap, extra=f.extra())

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "overlap": self.overlap, **_plain(self.extra)}


@dataclass(frozen=True)
class TextSpec:
    """``text``: the text graph's tokenizer and prompts.

    Defaults: ``tokenizer`` None (no tokenizer file), ``max_length`` 16, ``pad_id`` 0,
    ``templates`` empty (a referring bundle has none; :attr:`prompt_templates` then gives
    ``("{}",)``, the class name itself), ``encoder`` None."""

    tokenizer: str | None = None
    max_length: int = 16
    pad_id: int = 0
    templates: tuple[str, ...] = ()
    encoder: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def prompt_templates(self) -> tuple[str, ...]:
        """The templates class names are put into: :attr:`templates`, or ``("{}",)`` when empty."""
        return self.templates or ("{}",)

    @classmethod
    def from_dict(cls, d: Any, where: str = "text", source: str = "manifest") -> TextSpec:
        f = _Fields(d, where, source)
        return cls(tokenizer=f.opt("tokenizer", "str", None), max_length=f.opt("max_length", "int", 16),
                   pad_id=f.opt("pad_id", "int", 0), templates=f.strs("templates") or (),
                   encoder=f.opt("encoder", "str", None), extra=f.extra())

    def to_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "max_length": self.max_length, "pad_id": self.pad_id,
                "templates": list(self.templates), "encoder": self.encoder, **_plain(self.extra)}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: ``dtype`` (``"float32"``) and ``shape``, symbolic axes as
    strings (``["B", 3, 256, 256]``). Both required."""

    dtype: str
    shape: tuple[int | str, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str, source: str = "manifest") -> TensorSpec:
        f = _Fields(d, where, source)
        dtype = f.req("dtype", "str")
        shape = f.req("shape", "list")
        for i, dim in enumerate(shape):
            if not (isinstance(dim, str) or (isinstance(dim, int) and not isinstance(dim, bool))):
                raise f._error(f"{where}.shape[{i}]", dim, "an integer or an axis name")
        return cls(dtype=dtype, shape=tuple(shape), extra=f.extra())

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), **_plain(self.extra)}


def _tensors(f: _Fields, key: str) -> dict[str, TensorSpec]:
    return {n: TensorSpec.from_dict(v, f"{f.sub(key)}.{n}", f.source) for n, v in f.objects(key).items()}


@dataclass(frozen=True)
class FlopCount:
    """``graphs.<name>.flops`` (optional): the graph's FLOPs counted once at export
    (``rsvl_export.onnx_export.count_flops``) at the example shapes.

    ``total`` FLOPs of one call; ``per_item`` = total / ``items``, the unit of work being axis 0
    of ``item_axis`` (``B``: per tile for an image graph; ``K``: per prompt for a text graph).
    Other keys (``shapes``, ``counter``) stay in ``extra``."""

    total: int
    per_item: float
    item_axis: str = "B"
    items: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str, source: str = "manifest") -> FlopCount:
        f = _Fields(d, where, source)
        return cls(total=f.req("total", "int"), per_item=f.req("per_item", "number"),
                   item_axis=f.opt("item_axis", "str", "B"), items=f.opt("items", "int", 1), extra=f.extra())

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "per_item": self.per_item, "item_axis": self.item_axis, "items": self.items,
                **_plain(self.extra)}


@dataclass(frozen=True)
class GraphEntry:
    """``graphs.<name>`` (``text`` / ``image``): the ONNX files and the I/O signature.

    ``fp32`` is required; ``fp16`` and ``ort`` (the ONNX Runtime CPU variant) are None when the
    bundle has no such file and are then not written (readers test ``precision in graph``).
    ``exporter`` and ``ort_report`` are None when absent (not written); ``inputs``/``outputs``
    default to empty."""

    fp32: str
    fp16: str | None = None
    ort: str | None = None
    exporter: str | None = None
    inputs: Mapping[str, TensorSpec] = field(default_factory=dict)
    outputs: Mapping[str, TensorSpec] = field(default_factory=dict)
    ort_report: Mapping[str, Any] | None = None
    flops: FlopCount | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def file(self, precision: str) -> str | None:
        """The file of ``precision`` (``"fp32"`` | ``"fp16"`` | ``"ort"``), None when absent."""
        return getattr(self, precision) if precision in GRAPH_FILE_KEYS else None

    @property
    def precisions(self) -> list[str]:
        """The precisions this graph has a file for, in :data:`GRAPH_FILE_KEYS` order."""
        return [p for p in GRAPH_FILE_KEYS if self.file(p)]

    @classmethod
    def from_dict(cls, d: Any, where: str, source: str = "manifest") -> GraphEntry:
        f = _Fields(d, where, source)
        return cls(fp32=f.req("fp32", "str"), fp16=f.opt("fp16", "str", None), ort=f.opt("ort", "str", None),
                   exporter=f.opt("exporter", "str", None), inputs=_tensors(f, "inputs"),
                   outputs=_tensors(f, "outputs"), ort_report=f.opt("ort_report", "dict", None),
                   flops=(FlopCount.from_dict(fl, f.sub("flops"), source)
                          if (fl := f.opt("flops", "dict", None)) is not None else None), extra=f.extra())

    def to_dict(self) -> dict[str, Any]:
        d = {"fp32": self.fp32, "fp16": self.fp16, "ort": self.ort, "exporter": self.exporter,
             "inputs": {n: t.to_dict() for n, t in self.inputs.items()},
             "outputs": {n: t.to_dict() for n, t in self.outputs.items()},
             "ort_report": _plain(self.ort_report), "flops": self.flops.to_dict() if self.flops else None}
        return {**_drop_none(d, ("fp16", "ort", "exporter", "ort_report", "flops")), **_plain(self.extra)}


@dataclass(frozen=True)
class EngineEntry:
    """One ``engines[i]`` entry: a serialized TensorRT engine (written by
    ``rsvl_runtime/backends/tensorrt/build.py``'s ``EngineInfo.to_dict``).

    ``file`` is required. Defaults: ``graph`` ``"image"``, ``flavour`` ``"tensorrt"``,
    ``precision`` ``"fp16"``, ``version``/``built_on``/``sha256``/``bytes`` None (unknown),
    ``targets`` empty, ``profiles`` empty. Other keys (``onnx``, ``build_seconds``, ...) stay in
    ``extra``. :meth:`to_dict` is the mapping ``check_engine`` / ``TensorRTSession`` take."""

    file: str
    graph: str = "image"
    flavour: str = "tensorrt"
    version: str | None = None
    precision: str = "fp16"
    targets: tuple[str, ...] = ()
    built_on: str | None = None
    profiles: Mapping[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    bytes: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str = "engines[0]", source: str = "manifest") -> EngineEntry:
        f = _Fields(d, where, source)
        return cls(file=f.req("file", "str"), graph=f.opt("graph", "str", "image"),
                   flavour=f.opt("flavour", "str", "tensorrt"), version=f.opt("version", "str", None),
                   precision=f.opt("precision", "str", "fp16"), targets=f.strs("targets") or (),
                   built_on=f.opt("built_on", "str", None), profiles=f.objects("profiles"),
                   sha256=f.opt("sha256", "str", None), bytes=f.opt("bytes", "int", None), extra=f.extra())

    def to_dict(self) -> dict[str, Any]:
        return {"graph": self.graph, "file": self.file, "flavour": self.flavour, "version": self.version,
                "precision": self.precision, "targets": list(self.targets), "built_on": self.built_on,
                "profiles": _plain(self.profiles), "bytes": self.bytes, "sha256": self.sha256,
                **_plain(self.extra)}


@dataclass(frozen=True)
class PretrainedSource:
    """``weights.pretrained[i]``: a local pretrained file loaded into a model part at export
    (``rsvl-export --pretrained``): ``source`` (``open_clip``, ``openai``, ``timm``,
    ``huggingface``), ``kind`` (``clip``, ``swin``, ``bert``), ``path`` as given, ``sha256`` of the
    file (of the weights file inside a HuggingFace folder) and ``tensors`` loaded."""

    source: str
    kind: str
    path: str
    sha256: str | None = None
    tensors: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str = "weights.pretrained[]", source: str = "manifest") -> PretrainedSource:
        f = _Fields(d, where, source)
        return cls(source=f.req("source", "str"), kind=f.req("kind", "str"), path=f.req("path", "str"),
                   sha256=f.opt("sha256", "str", None), tensors=f.opt("tensors", "int", None), extra=f.extra())

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "path": self.path, "sha256": self.sha256,
                "tensors": self.tensors, **_plain(self.extra)}


@dataclass(frozen=True)
class WeightsEntry:
    """``weights``: the PyTorch weights shipped for the torch backend. Defaults: ``file`` None
    (exported with ``--no-weights``), ``source`` None, ``trained`` None (unknown); optional (absent
    in older manifests, written only when set): ``sha256`` of the ``--checkpoint`` file the weights
    came from, its ``checkpoint_format`` (``rsvl`` | ``official``) and ``pretrained``
    (:class:`PretrainedSource` list); other keys (``metrics``) in ``extra``."""

    file: str | None = None
    source: str | None = None
    trained: bool | None = None
    sha256: str | None = None
    checkpoint_format: str | None = None
    pretrained: tuple[PretrainedSource, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str = "weights", source: str = "manifest") -> WeightsEntry:
        f = _Fields(d, where, source)
        pre = f.opt("pretrained", "list", None) or []
        return cls(file=f.opt("file", "str", None), source=f.opt("source", "str", None),
                   trained=f.opt("trained", "bool", None), sha256=f.opt("sha256", "str", None),
                   checkpoint_format=f.opt("checkpoint_format", "str", None),
                   pretrained=tuple(PretrainedSource.from_dict(p, f"{where}.pretrained[{i}]", source)
                                    for i, p in enumerate(pre)),
                   extra=f.extra())

    def to_dict(self) -> dict[str, Any]:
        optional = {"sha256": self.sha256, "checkpoint_format": self.checkpoint_format,
                    "pretrained": [p.to_dict() for p in self.pretrained] or None}
        return {"file": self.file, "source": self.source, "trained": self.trained,
                **{k: v for k, v in optional.items() if v is not None}, **_plain(self.extra)}


@dataclass(frozen=True)
class Limits:
    """``limits``: the largest batch of tiles (``max_batch``, default **32**) and the largest
    vocabulary (``max_vocab``, default **256**) the bundle was exported for; the TensorRT engine
    profiles end there (``rsvl_export/engines.py``). The defaults are ``rsvl-export``'s
    (``ExportOptions`` in ``rsvl_export/pipeline.py``): a bundle without the key was exported with
    them. (Before the typed manifest, readers fell back to 32, 8, 0 or None.) How many tiles the
    runtime *runs* per batch is its own choice, at most ``max_batch``."""

    max_batch: int = 32
    max_vocab: int = 256
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str = "limits", source: str = "manifest") -> Limits:
        f = _Fields(d, where, source)
        limits = cls(max_batch=f.opt("max_batch", "int", 32), max_vocab=f.opt("max_vocab", "int", 256),
                     extra=f.extra())
        if limits.max_batch < 1 or limits.max_vocab < 1:
            raise BundleError(f"{source}: manifest key {where!r} is {d!r}: limits must be >= 1; {_FIX}")
        return limits

    def to_dict(self) -> dict[str, Any]:
        return {"max_batch": self.max_batch, "max_vocab": self.max_vocab, **_plain(self.extra)}


@dataclass(frozen=True)
class FileEntry:
    """``files[path]``: a bundle file's ``sha256`` (hex) and size in ``bytes``; both required
    (written by ``write_manifest``)."""

    sha256: str
    bytes: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str, source: str = "manifest") -> FileEntry:
        f = _Fields(d, where, source)
        return cls(sha256=f.req("sha256", "str"), bytes=f.req("bytes", "int"), extra=f.extra())

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "bytes": self.bytes, **_plain(self.extra)}


# ----------------------------------------------------------------------------- upgrades
def upgrade_v1_to_v2(d: dict[str, Any]) -> dict[str, Any]:
    """Format 1 -> 2: engine entries written with the first TensorRT keys get the current ones
    (``tensorrt_version`` -> ``version``, ``compute_capability`` -> ``targets``, ``gpu`` ->
    ``built_on``, ``flavour`` ``"tensorrt"``), as ``check_engine`` in
    ``rsvl_runtime/backends/tensorrt/validity.py`` has always read them. Nothing else changed."""
    out = copy.deepcopy(d)
    engines = out.get("engines")
    if isinstance(engines, list):
        for e in engines:
            if not isinstance(e, dict):
                continue
            if "tensorrt_version" in e:
                e.setdefault("version", e.pop("tensorrt_version"))
            if "compute_capability" in e:
                cc = e.pop("compute_capability")
                e.setdefault("targets", [str(cc)] if cc else [])
            if "gpu" in e:
                e.setdefault("built_on", e.pop("gpu"))
            e.setdefault("flavour", "tensorrt")
    out["format_version"] = 2
    return out


#: ``{version: upgrade}``: each function takes a manifest of that version to the next one.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: upgrade_v1_to_v2}


def upgrade(d: dict[str, Any], source: str = "manifest") -> dict[str, Any]:
    """``d`` brought to :data:`FORMAT_VERSION` through :data:`UPGRADES` (a copy; ``d`` is not
    changed). A missing, unknown or newer version is refused with the fix."""
    version = d.get("format_version")
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        raise BundleError(f"{source}: bundle format version {version!r} is not supported by this runtime "
                          f"(reads {', '.join(map(str, SUPPORTED_VERSIONS))}; writes {FORMAT_VERSION}); "
                          "re-export with this rsvl version")
    while version < FORMAT_VERSION:
        d = UPGRADES[version](d)
        version += 1
    return d


# ----------------------------------------------------------------------------- the manifest
@dataclass(frozen=True)
class Manifest:
    """A bundle's ``manifest.json``, typed (see the module docstring for the layout).

    Required: ``model``, ``task`` (``"semantic"`` | ``"referring"``), ``modalities``, ``tile``,
    ``text``, ``graphs``, ``files`` (the export passes ``{}``: ``write_manifest`` fills it).
    Defaults of the optional fields (one each):

    ======================  ===========================================================
    format_version          :data:`FORMAT_VERSION` (older ones are upgraded on read)
    architecture            None
    head                    ``"open"`` (K free; ``"paper"``: K fixed)
    fixed_vocabulary_size   None (open vocabulary)
    logit_scale             None (the image graph's tau in ``logits = tau * cos``; unknown)
    modes                   ``("optical+sar",)``
    embedding_dim           None (unknown: the vocabulary cache width is not checked)
    default_vocabulary      empty
    precision               ``"fp16"`` (what ``rebuild-engine`` builds)
    opset                   None
    engines                 empty (no TensorRT engine)
    vocab_cache, parity     None (no such file)
    weights                 :class:`WeightsEntry` () (no weights file)
    limits                  :class:`Limits` (): ``max_batch`` 32, ``max_vocab`` 256
    export_timings          empty
    versions                empty
    created                 None
    manifest_sha256         None (not sealed yet: ``write_manifest`` seals it)
    ======================  ===========================================================

    Unknown top-level keys stay in ``extra``. :meth:`to_dict` writes every field (and ``extra``),
    ``manifest_sha256`` only when set; ``from_dict(m.to_dict()) == m``, and for a manifest a
    current export wrote ``to_dict(from_dict(d)) == d``.
    """

    model: str
    task: str
    modalities: Mapping[str, ModalitySpec]
    tile: TileSpec
    text: TextSpec
    graphs: Mapping[str, GraphEntry]
    files: Mapping[str, FileEntry]
    format_version: int = FORMAT_VERSION
    architecture: str | None = None
    head: str = "open"
    fixed_vocabulary_size: int | None = None
    logit_scale: float | None = None
    modes: tuple[str, ...] = ("optical+sar",)
    embedding_dim: int | None = None
    default_vocabulary: tuple[Mapping[str, Any], ...] = ()
    precision: str = "fp16"
    opset: int | None = None
    engines: tuple[EngineEntry, ...] = ()
    vocab_cache: str | None = None
    parity: str | None = None
    weights: WeightsEntry = field(default_factory=WeightsEntry)
    limits: Limits = field(default_factory=Limits)
    export_timings: Mapping[str, float] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    created: str | None = None
    manifest_sha256: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_dict(cls, d: Any, source: str = "manifest") -> Manifest:
        """Parse (and first upgrade, see :func:`upgrade`) a manifest dictionary. ``source`` names
        it in errors (the ``manifest.json`` path). Raises :class:`BundleError` naming the key of
        the first missing required or ill-typed value."""
        if not isinstance(d, dict):
            raise BundleError(f"{source} is not a JSON object; {_FIX}")
        f = _Fields(upgrade(d, source), "", source)
        f.used.add("format_version")
        task = f.req("task", "str")
        if task not in TASKS:
            raise BundleError(f"{source}: manifest key 'task' is {task!r}, expected one of {TASKS}; {_FIX}")
        return cls(
            model=f.req("model", "str"), task=task,
            modalities={n: ModalitySpec.from_dict(v, f"modalities.{n}", source)
                        for n, v in f.objects("modalities", required=True).items()},
            tile=TileSpec.from_dict(f.req("tile", "dict"), "tile", source),
            text=TextSpec.from_dict(f.req("text", "dict"), "text", source),
            graphs={n: GraphEntry.from_dict(v, f"graphs.{n}", source)
                    for n, v in f.objects("graphs", required=True).items()},
            files={p: FileEntry.from_dict(v, f"files[{p!r}]", source)
                   for p, v in f.objects("files", required=True).items()},
            **_optional_fields(f))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``write_manifest`` seals and writes (key order as the export writes it)."""
        d: dict[str, Any] = {
            "format_version": self.format_version, "model": self.model, "architecture": self.architecture,
            "task": self.task, "head": self.head, "fixed_vocabulary_size": self.fixed_vocabulary_size,
            **({"logit_scale": self.logit_scale} if self.logit_scale is not None else {}),
            "modalities": {n: s.to_dict() for n, s in self.modalities.items()}, "modes": list(self.modes),
            "tile": self.tile.to_dict(), "embedding_dim": self.embedding_dim, "text": self.text.to_dict(),
            "default_vocabulary": _plain(self.default_vocabulary),
            "graphs": {n: g.to_dict() for n, g in self.graphs.items()},
            "precision": self.precision, "opset": self.opset, "engines": [e.to_dict() for e in self.engines],
            "vocab_cache": self.vocab_cache, "parity": self.parity, "weights": self.weights.to_dict(),
            "limits": self.limits.to_dict(), "export_timings": _plain(self.export_timings),
            "versions": _plain(self.versions), "created": self.created, **_plain(self.extra),
            "files": {p: e.to_dict() for p, e in self.files.items()},
        }
        if self.manifest_sha256 is not None:
            d["manifest_sha256"] = self.manifest_sha256
        return d

    # ------------------------------------------------------------------ lookups
    def engine(self, graph: str) -> EngineEntry | None:
        """The engine entry of ``graph`` (``"image"`` | ``"text"``), or None."""
        return next((e for e in self.engines if e.graph == graph), None)

    def graph(self, name: str) -> GraphEntry | None:
        """``graphs[name]``, or None."""
        return self.graphs.get(name)

    @property
    def class_names(self) -> list[str]:
        """The names of the default vocabulary's classes."""
        return [str(c.get("name")) for c in self.default_vocabulary]


def _optional_fields(f: _Fields) -> dict[str, Any]:
    """The optional top-level fields of :class:`Manifest` (defaults in its docstring)."""
    default_vocab = f.opt("default_vocabulary", "list", None) or []
    for i, c in enumerate(default_vocab):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise f._error(f"default_vocabulary[{i}]", c, 'an object with a string "name"')
    out: dict[str, Any] = {
        "architecture": f.opt("architecture", "str", None), "head": f.opt("head", "str", "open"),
        "fixed_vocabulary_size": f.opt("fixed_vocabulary_size", "int", None),
        "logit_scale": f.opt("logit_scale", "number", None),
        "modes": f.strs("modes", None) or ("optical+sar",), "embedding_dim": f.opt("embedding_dim", "int", None),
        "default_vocabulary": tuple(copy.deepcopy(default_vocab)), "precision": f.opt("precision", "str", "fp16"),
        "opset": f.opt("opset", "int", None),
        "engines": tuple(EngineEntry.from_dict(e, f"engines[{i}]", f.source)
                         for i, e in enumerate(f.opt("engines", "list", None) or [])),
        "vocab_cache": f.opt("vocab_cache", "str", None), "parity": f.opt("parity", "str", None),
        "weights": WeightsEntry.from_dict(f.opt("weights", "dict", None) or {}, "weights", f.source),
        "limits": Limits.from_dict(f.opt("limits", "dict", None) or {}, "limits", f.source),
        "export_timings": copy.deepcopy(f.objects("export_timings")),
        "versions": copy.deepcopy(f.objects("versions")),
        "created": f.opt("created", "str", None), "manifest_sha256": f.opt("manifest_sha256", "str", None),
    }
    out["extra"] = f.extra()  # last: every modelled key has been read
    return out


__all__ = [
    "FORMAT_VERSION", "GRAPH_FILE_KEYS", "SUPPORTED_VERSIONS", "UPGRADES", "BundleError", "EngineEntry",
    "FileEntry", "GraphEntry", "Limits", "Manifest", "ModalitySpec", "PretrainedSource", "TensorSpec", "TextSpec", "TileSpec",
    "WeightsEntry", "upgrade", "upgrade_v1_to_v2",
]
