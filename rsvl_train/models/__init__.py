"""Model architectures; importing this package registers them with the factory."""

from . import cadformer, tsmnet  # noqa: F401
