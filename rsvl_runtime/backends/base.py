"""What every inference backend offers: named numpy inputs in, named numpy outputs out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class BackendError(RuntimeError):
    """A backend is unavailable or cannot run the given graph; the message says what to install."""


class Session(Protocol):
    """One loaded graph. ``run`` takes and returns float32/int64 numpy arrays by name."""

    name: str
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass
class Sessions:
    """The text and image graph of a bundle, loaded on one backend. ``on_cpu``: the image
    graph computes on the CPU (then the scene runner's CPU stages run between its calls,
    :mod:`rsvl_runtime.parallel`)."""

    text: Session
    image: Session
    backend: str
    precision: str
    on_cpu: bool = True
