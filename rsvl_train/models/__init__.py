"""Model architectures. Each model module has a ``build(config, pretrained=None, *, warn_random=True)``;
:mod:`rsvl_train.factory` maps architecture names to them (the models never import the factory)."""

from . import cadformer, tsmnet  # noqa: F401
