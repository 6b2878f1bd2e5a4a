"""Paper training recipes: ``rsvl_train/recipes/<name>.json``, ``list_recipes()``, ``get_recipe(name)``.

A recipe names the model (+ model-config ``overrides``), the dataset kind (``--data PATH``
becomes ``KIND:PATH``; the datasets are not shipped) and the training settings, with the
source of each number under ``sources``. ``rsvl-train --recipe NAME --data PATH`` prints the
plan and runs it; flags given explicitly override the recipe (:func:`apply_recipe`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any

__all__ = ["RECIPE_DIR", "Recipe", "UnknownRecipeError", "apply_recipe", "get_recipe", "list_recipes"]

RECIPE_DIR = Path(__file__).parent / "recipes"

#: Recipe keys that are training settings (``TrainConfig`` fields of the same name).
SETTINGS = ("epochs", "iterations", "batch_size", "tile", "optimizer", "lr", "weight_decay", "backbone_lr_mult",
            "schedule", "poly_power", "min_lr", "warmup_iters", "warmup_ratio", "loss_weights", "modality_dropout")
_META = ("description", "model", "overrides", "data_kind", "sources")


class UnknownRecipeError(ValueError):
    """A recipe name that does not exist (the message lists the valid names)."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One recipe file, checked: ``settings`` holds only :data:`SETTINGS` keys."""

    name: str
    description: str
    model: str
    data_kind: str
    overrides: dict[str, Any]
    settings: dict[str, Any]
    sources: dict[str, str]

    def data_spec(self, data: str | None) -> str:
        """``--data`` for this recipe: a bare ``PATH`` becomes ``KIND:PATH``; ``KIND:PATH`` stays."""
        if not data:
            raise ValueError(f"--recipe {self.name} needs --data PATH (the {self.data_kind} dataset folder; "
                             "the datasets are not shipped)")
        kind, sep, _ = data.partition(":")
        if sep and kind.lower() in ("synthetic", "synthetic-referring", "yeseg", "swjtu", "rrsis", "rrsisd", "rrsishr"):
            return data
        return f"{self.data_kind}:{data}"


def list_recipes() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def get_recipe(name: str) -> Recipe:
    """Load and check ``recipes/<name>.json``; an unknown name or key raises with the valid ones."""
    path = RECIPE_DIR / f"{name}.json"
    if not path.is_file():
        close = difflib.get_close_matches(name, list_recipes(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownRecipeError(f"--recipe {name!r}: no such recipe.{hint} Available: {', '.join(list_recipes())}")
    raw = json.loads(path.read_text(encoding="utf-8"))
    unknown = sorted(set(raw) - set(SETTINGS) - set(_META))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; a recipe holds {', '.join(_META + SETTINGS)}")
    return Recipe(name=name, description=str(raw.get("description", "")), model=str(raw["model"]),
                  data_kind=str(raw["data_kind"]), overrides=dict(raw.get("overrides", {})),
                  settings={k: copy.deepcopy(raw[k]) for k in SETTINGS if k in raw},
                  sources=dict(raw.get("sources", {})))


def apply_recipe(recipe: Recipe, explicit: dict[str, Any]) -> dict[str, Any]:
    """``TrainConfig`` keyword arguments: the recipe's, then the ``explicit`` (user-given) ones on top.

    ``explicit`` holds only what the user gave (``None``-free); its ``overrides`` merge over the
    recipe's model overrides.
    """
    kw: dict[str, Any] = {"model": recipe.model, "recipe": recipe.name, **copy.deepcopy(recipe.settings)}
    overrides = {**recipe.overrides, **explicit.get("overrides", {})}
    kw.update({k: v for k, v in explicit.items() if k != "overrides"})
    kw["overrides"] = overrides
    kw["data"] = recipe.data_spec(explicit.get("data"))
    kw.setdefault("out", f"runs/{recipe.name}")
    return kw
