"""The STAC item ``item.json`` of a finished run. Not written yet."""

from __future__ import annotations

from .finished import FinishedRun


def write_stac_item(run: FinishedRun) -> None:
    """Placeholder until the STAC item lands: writes nothing."""
