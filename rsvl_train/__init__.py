"""rsvl_train: model definitions, registry, datasets, losses, metrics and training."""

from .factory import create_model, create_model_from_config, get_model_config, list_models

__all__ = ["create_model", "create_model_from_config", "get_model_config", "list_models"]
