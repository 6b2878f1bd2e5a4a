"""Class polygons of a finished run (``--vector gpkg|geojson``). Not written yet."""

from __future__ import annotations

from .finished import FinishedRun


def write_vectors(run: FinishedRun) -> None:
    raise NotImplementedError("--vector is not implemented yet")
