"""Map a model family name to its config and module classes (read from the family registry)."""

from __future__ import annotations

from ovss.models.base import ModelConfig, SegmentationModel
from ovss.models.family import family_for_config, get_family


def family_classes(family: str) -> tuple[type[ModelConfig], type[SegmentationModel]]:
    """(config class, model class) of ``family``.

    Raises:
        UnknownModelError: no family of that name.
    """
    descriptor = get_family(family)
    return descriptor.config_class, descriptor.model_class


def family_of(config: ModelConfig) -> str:
    """Family name of a model config instance."""
    return family_for_config(config).name


def build_model(config: ModelConfig) -> SegmentationModel:
    """Instantiate the model of ``config`` (random init, float32, CPU, eval mode)."""
    return family_for_config(config).model_class(config).eval()
