"""Map a model family name to its config and module classes (explicit, lazily imported)."""

from __future__ import annotations

from ovss.errors import UnknownModelError
from ovss.models.base import ModelConfig, SegmentationModel

FAMILIES = ("san", "catseg", "sed", "catseg_v1")


def family_classes(family: str) -> tuple[type[ModelConfig], type[SegmentationModel]]:
    """(config class, model class) of ``family``."""
    if family == "san":
        from ovss.models.san import SAN, SANConfig

        return SANConfig, SAN
    if family == "catseg":
        from ovss.models.catseg import CATSeg, CATSegConfig

        return CATSegConfig, CATSeg
    if family == "sed":
        from ovss.models.sed import SED, SEDConfig

        return SEDConfig, SED
    if family == "catseg_v1":
        from ovss.models.catseg_v1 import CATSegV1, CATSegV1Config

        return CATSegV1Config, CATSegV1
    raise UnknownModelError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")


def family_of(config: ModelConfig) -> str:
    """Family name of a model config instance."""
    for family in FAMILIES:
        if isinstance(config, family_classes(family)[0]):
            return family
    raise UnknownModelError(f"{type(config).__name__} is not a registered model config")


def build_model(config: ModelConfig) -> SegmentationModel:
    """Instantiate the model of ``config`` (random init, float32, CPU, eval mode)."""
    _, model_cls = family_classes(family_of(config))
    return model_cls(config).eval()
