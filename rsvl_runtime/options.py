"""The options of one scene run, built once and frozen.

:class:`SceneOptions` is what :func:`rsvl_runtime.scene.run_scene` runs with: the vocabulary
(class names, colours), the task, the tiling, the outputs and, in :class:`InputOptions`, how
the input rasters are read and checked. :class:`~rsvl_runtime.segmenter.Segmenter` and
:class:`~rsvl_runtime.segmenter.Referrer` build it from their bundle and the caller's
``predict_raster`` options (:meth:`SceneOptions.from_kwargs`); the flat keyword names are the
ones ``run_scene`` has always taken (``bands=``, ``nodata=``, ``write_scores=`` ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

NodataArg = float | Mapping[str, float | None] | None
TASKS = ("semantic", "referring")


def _int_tuple(v: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if v is None else tuple(int(b) for b in v)


@dataclass(frozen=True)
class InputOptions:
    """How the input rasters are read and checked (:mod:`rsvl_runtime.checks`,
    :mod:`rsvl_runtime.reading`).

    ``optical_spec``/``sar_spec``: the bundle's modality specs (:mod:`rsvl_runtime.normalization`;
    None: the bundle has no such input). ``bands``/``sar_bands``: 1-based raster bands in the
    bundle's band order (None: the raster's own). ``nodata``: value for rasters that declare
    none (a float, or ``{"optical": v, "sar": v}``). ``sar_units``: ``"db"``/``"linear"`` (None:
    the bundle's). ``sar_check=False`` turns an implausible-SAR-units refusal into a warning.
    ``sensor``: a preset of bands and scaling for a known product (``rsvl_runtime.sensors``;
    ``--bands``/``--scale``/``--offset`` given win over it). ``scale``/``offset``: optical values
    become ``value * scale + offset`` (e.g. 0.0001 for Sentinel-2 L2A reflectance), in place of
    the bundle's ``value / spec.scale + spec.offset``; an ``offset`` needs a ``scale`` (or a
    sensor). ``stretch``: ``(low, high)`` percentiles (0 <= low < high <= 100) mapped to 0..1,
    computed once per scene from a decimated read (:class:`rsvl_runtime.normalization.OpticalScaling`).
    Any of the four lets the optical raster be uint16/int16/float (not only the bundle's dtype).
    Impossible values are a ValueError naming the flag.
    """

    optical_spec: Mapping[str, Any] | None = None
    sar_spec: Mapping[str, Any] | None = None
    sar_units: str | None = None
    bands: tuple[int, ...] | None = None
    sar_bands: tuple[int, ...] | None = None
    nodata: NodataArg = None
    sar_check: bool = True
    sensor: str | None = None
    scale: float | None = None
    offset: float | None = None
    stretch: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", _int_tuple(self.bands))
        object.__setattr__(self, "sar_bands", _int_tuple(self.sar_bands))
        self._check_scaling()

    def _check_scaling(self) -> None:
        import math

        from .sensors import get_preset

        if self.sensor is not None:
            object.__setattr__(self, "sensor", get_preset(self.sensor).name)
        for flag, v in (("--scale", self.scale), ("--offset", self.offset)):
            if v is not None and not math.isfinite(float(v)):
                raise ValueError(f"{flag} {v}: give a finite number")
        if self.scale is not None and float(self.scale) == 0:
            raise ValueError("--scale 0 maps every optical value to the offset; give the product's scale "
                             "factor, e.g. --scale 0.0001 for Sentinel-2 L2A")
        if self.offset is not None and self.scale is None and self.sensor is None:
            raise ValueError(f"--offset {self.offset} needs --scale (values become value * scale + offset), "
                             "e.g. --scale 2.75e-05 --offset -0.2 for Landsat C2 L2, or a --sensor preset")
        if self.stretch is not None:
            st = tuple(float(v) for v in self.stretch)
            if len(st) != 2 or not 0 <= st[0] < st[1] <= 100:
                raise ValueError(f"--stretch {self.stretch}: need two percentiles 0 <= low < high <= 100, "
                                 "e.g. --stretch p2,p98")
            object.__setattr__(self, "stretch", st)

    def nodata_for(self, modality: str) -> float | None:
        """The nodata override of one modality (None: use the raster's)."""
        return nodata_for(self.nodata, modality)

    def spec(self, modality: str) -> Mapping[str, Any] | None:
        return self.optical_spec if modality == "optical" else self.sar_spec

    def bands_of(self, modality: str) -> tuple[int, ...] | None:
        return self.bands if modality == "optical" else self.sar_bands


def nodata_for(nodata: NodataArg, modality: str) -> float | None:
    """``nodata`` (a float or ``{"optical": v, "sar": v}``) for one modality."""
    if isinstance(nodata, Mapping):
        v = nodata.get(modality)
        return None if v is None else float(v)
    return None if nodata is None else float(nodata)


_INPUT_FIELDS = frozenset(f.name for f in fields(InputOptions))


#: How a scene run schedules its CPU stages against the engine (:attr:`SceneOptions.pipeline`).
PIPELINES = ("auto", "serial", "overlap")


@dataclass(frozen=True)
class SceneOptions:
    """Everything a scene run needs besides ``predict_fn`` and the paths.

    ``class_names``/``colors``: the vocabulary (K names; missing colours are chosen by meaning).
    ``tile``/``overlap``/``batch``: tiling and tiles per ``predict_fn`` call. ``task``:
    ``"semantic"`` (labels.tif + scores.tif) or ``"referring"`` (mask.tif, K = 2 or a single
    target logit). ``write_scores``: write scores.tif. ``cog``: rewrite the rasters with the COG
    driver (None: when available). ``window``: blending window (:mod:`rsvl_runtime.tiling`).
    ``pipeline``: how the CPU stages (read, normalise, blend, scores, write) run against the
    engine (:data:`PIPELINES`): ``"serial"`` between engine calls, each split over ``workers``
    threads — best when the engine itself runs on the CPU, whose cores it already keeps busy;
    ``"overlap"``: in a reader and a writer thread beside the engine — best when the engine runs on
    a GPU; ``"auto"``: serial (a :class:`~rsvl_runtime.segmenter.Segmenter` passes ``overlap``
    for a GPU backend). ``workers``: threads of those stages (None: the CPUs of the process,
    :mod:`rsvl_runtime.parallel`).
    ``prefetch``: batches read ahead (overlap pipeline). ``hash_inputs``: sha256 of the inputs in the report.
    ``progress``: progress bar and summary line. ``gdal_cache_mb`` caps GDAL's block cache (GDAL
    reads it once per process, so it applies when this is the first GDAL use; otherwise set
    ``GDAL_CACHEMAX`` in the environment); None keeps GDAL's default (5 % of RAM).
    ``bundle_info`` is shown in the report and is part of the resume signature.
    ``min_score``: pixels whose best class score is below it are labelled "unclassified" (id K,
    its own colour and row in classes.json; semantic task only, 0..1). Default None: no
    threshold for K >= 2 (every valid pixel gets its most likely class); 0.5 for a one-class
    vocabulary, whose score is the cosine mapped to 0..1 (see :mod:`rsvl_runtime.postprocess`).
    A thresholded vocabulary has at most 254 classes.
    ``vector``: also write class polygons (``"gpkg"`` or ``"geojson"``, :mod:`rsvl_runtime.vectors`);
    ``min_area_m2`` drops smaller polygons, ``simplify`` is a simplification tolerance in CRS units.
    ``vocabulary``: per class ``{"name", "synonyms", "color", "prompts"}`` for the report.
    ``stac``: write the STAC item ``item.json`` describing the run (:mod:`rsvl_runtime.stac`).
    ``engine_timings``: seconds the engine spent before the run (``engine_warmup_s``:
    :meth:`~rsvl_runtime.segmenter.Segmenter.warm_up`), recorded with the run's timings; not
    part of the resume signature and not counted in ``total_s``.
    """

    class_names: tuple[str, ...]
    tile: int
    overlap: float
    batch: int
    inputs: InputOptions = field(default_factory=InputOptions)
    colors: tuple[tuple[int, ...], ...] | None = None
    task: str = "semantic"
    write_scores: bool = True
    cog: bool | None = None
    window: str = "hann"
    pipeline: str = "auto"
    workers: int | None = None
    prefetch: int = 2
    hash_inputs: bool = True
    progress: bool = True
    gdal_cache_mb: int | None = 128
    bundle_info: Mapping[str, Any] | None = None
    min_score: float | None = None
    vector: str | None = None
    min_area_m2: float = 0.0
    simplify: float | None = None
    stac: bool = True
    vocabulary: tuple[Mapping[str, Any], ...] | None = None
    engine_timings: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.colors is not None:
            object.__setattr__(self, "colors", tuple(tuple(c) for c in self.colors))
        if self.vocabulary is not None:
            object.__setattr__(self, "vocabulary", tuple(dict(v) for v in self.vocabulary))

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SceneOptions:
        """Options from ``run_scene``'s flat keywords (``bands=``, ``nodata=``, ``sar_spec=`` ... go
        into :attr:`inputs`); an unknown keyword is a TypeError."""
        scene, inputs = _split(kwargs)
        return cls(**scene, inputs=InputOptions(**inputs))

    def replace(self, **kwargs: Any) -> SceneOptions:
        """A copy with some options changed (flat keywords, as :meth:`from_kwargs`)."""
        scene, inputs = _split(kwargs)
        return replace(self, **scene, inputs=replace(self.inputs, **inputs))

    def check(self) -> list[tuple[int, int, int]]:
        """Refuse impossible options; returns the palette: one RGB colour per label id (the
        classes, then "unclassified" when a threshold applies). Missing class colours are chosen
        by meaning (:func:`rsvl_runtime.colours.class_palette`)."""
        from .colours import UNCLASSIFIED_COLOR, class_palette
        from .postprocess import Scoring

        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        names = self.class_names
        if self.task == "referring" and len(names) != 2:
            raise ValueError(f"the referring task has 2 classes (background, target), got {list(names)}")
        if self.task == "referring" and self.min_score is not None:
            raise ValueError("min_score (--threshold) applies to semantic segmentation; the referring mask "
                             "has no 'unclassified' class: leave it unset")
        if not 1 <= len(names) <= 255:
            raise ValueError(f"need 1..255 classes (255 is the nodata label), got {len(names)}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.pipeline not in PIPELINES:
            raise ValueError(f"--pipeline must be one of {', '.join(PIPELINES)}, got {self.pipeline!r}")
        if self.workers is not None and (int(self.workers) != self.workers or self.workers < 1):
            raise ValueError(f"--workers must be a positive number of threads, got {self.workers!r}")
        if self.vector not in (None, "gpkg", "geojson"):
            raise ValueError(f"--vector must be gpkg or geojson, got {self.vector!r}")
        if self.min_area_m2 < 0:
            raise ValueError(f"--min-area must be >= 0 (m²), got {self.min_area_m2}")
        if self.simplify is not None and self.simplify <= 0:
            raise ValueError(f"--simplify must be > 0 (a tolerance in CRS units), got {self.simplify}")
        scoring = Scoring.of_options(self)
        if scoring.n_ids > 255:
            raise ValueError(f"{len(names)} classes plus 'unclassified' (min_score {self.min_score}) need "
                             f"{scoring.n_ids} label ids, but 255 is the nodata label: use at most 254 classes "
                             "with --threshold")
        phrases = [[n] for n in names]
        if self.vocabulary is not None and len(self.vocabulary) == len(names):
            phrases = [[n, *(v.get("synonyms") or [])] for n, v in zip(names, self.vocabulary)]
        palette = class_palette(phrases, list(self.colors or [])[:len(names)])
        if scoring.unclassified is not None:
            palette.append(UNCLASSIFIED_COLOR)
        return palette

    @property
    def tiling(self) -> dict[str, Any]:
        """``{"tile", "overlap", "batch"}`` (reports and the resume signature)."""
        return {"tile": self.tile, "overlap": self.overlap, "batch": self.batch}


_SCENE_FIELDS = frozenset(f.name for f in fields(SceneOptions)) - {"inputs"}


def _split(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    unknown = sorted(set(kwargs) - _SCENE_FIELDS - _INPUT_FIELDS)
    if unknown:
        raise TypeError(f"unknown scene option(s) {', '.join(map(repr, unknown))}; known: "
                        f"{', '.join(sorted(_SCENE_FIELDS | _INPUT_FIELDS))}")
    return ({k: v for k, v in kwargs.items() if k in _SCENE_FIELDS},
            {k: v for k, v in kwargs.items() if k in _INPUT_FIELDS})
