"""What a finished scene run hands the writers of its summary files.

:class:`FinishedRun` is built once the rasters are closed (:meth:`rsvl_runtime.scene.SceneRun._finish`)
and passed to each writer of the output folder's summary files: the report
(:mod:`rsvl_runtime.report`), the class polygons (:mod:`rsvl_runtime.vectors`) and the STAC
item (:mod:`rsvl_runtime.stac`). It holds paths inside the output stage (the temporary folder
the run is built in), not the final folder: the writers read the rasters from there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .classes import ClassStats
    from .options import SceneOptions
    from .outputs import OutputStage
    from .reading import Sources


@dataclass
class FinishedRun:
    """One finished scene run: where its rasters are, its classes, statistics and timings.

    ``stage``: the output stage (``stage.path(name)`` is a committed-to-be file's temporary
    path). ``raster_name``: ``labels.tif`` or ``mask.tif``. ``class_table``: the rows of
    classes.json. ``palette``: one RGB colour per class id of ``class_table``. ``inputs``:
    per modality ``{"path", "sha256", ...}``. ``raster``: size, CRS, transform, task, tiling.
    ``timings``: the run's timings (they go to done.json); the writers add theirs
    (:func:`rsvl_runtime.vectors.write_vectors`: ``vector_polygons``, ``vector_dropped``,
    ``vectors_s``), and the STAC item reads the polygon count from there.
    """

    title: str
    task: str
    out_dir: Path
    stage: OutputStage
    raster_name: str
    class_table: list[dict[str, Any]]
    stats: ClassStats
    palette: Sequence[Sequence[int]]
    crs: str | None
    transform: Any
    width: int
    height: int
    options: SceneOptions
    sources: Sources
    raster: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    thumbnail: Any = None  # raw values [C, h, w] of the reference input, decimated while reading

    @property
    def labels_path(self) -> Path:
        """labels.tif (or mask.tif) in the stage."""
        return self.stage.path(self.raster_name)

    def staged(self, name: str) -> Path | None:
        """The staged path of output ``name`` (None when this run does not write it)."""
        return self.stage.path(name) if name in self.stage else None

    @property
    def bundle_info(self) -> Mapping[str, Any] | None:
        return self.options.bundle_info

    @property
    def vocabulary(self) -> Sequence[Mapping[str, Any]] | None:
        """Per class ``{"name", "synonyms", "color", "prompts"}`` when the caller gave them."""
        return self.options.vocabulary
