"""rsvl_train: model definitions, registry, datasets, losses, metrics and training.

The model registry (:mod:`rsvl_train.factory`) needs torch and is imported on first use, so
that the torch-free parts (``rsvl_train.data.synthetic``) import without it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_model", "create_model_from_config", "get_model_config", "list_models"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import factory

        return getattr(factory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
