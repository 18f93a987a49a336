"""Family name -> config and model classes; a config -> its family and a fresh model."""

from __future__ import annotations

import pytest
import torch

from ovss.errors import UnknownModelError
from ovss.models.base import ModelConfig
from ovss.models.build import build_model, family_classes, family_of
from ovss.models.catseg import CATSeg, CATSegConfig, catseg_tiny
from ovss.models.catseg_v1 import CATSegV1, CATSegV1Config, catseg_v1_tiny
from ovss.models.san import SAN, SANConfig, san_tiny
from ovss.models.sed import SED, SEDConfig, sed_tiny

FAMILIES = {
    "san": (SANConfig, SAN, san_tiny),
    "catseg": (CATSegConfig, CATSeg, catseg_tiny),
    "sed": (SEDConfig, SED, sed_tiny),
    "catseg_v1": (CATSegV1Config, CATSegV1, catseg_v1_tiny),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_builds_its_model_in_eval_mode_on_the_cpu(family):
    config_class, model_class, tiny = FAMILIES[family]
    assert family_classes(family) == (config_class, model_class)
    config = tiny()
    assert family_of(config) == family
    torch.manual_seed(0)
    model = build_model(config)
    assert type(model) is model_class and model.config == config and not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_unknown_family_and_unregistered_config_are_one_line():
    with pytest.raises(UnknownModelError) as info:
        family_classes("segformer")
    assert str(info.value) == "unknown model family 'segformer'; known: san, catseg, sed, catseg_v1"
    with pytest.raises(UnknownModelError) as info:
        family_of(ModelConfig())
    assert str(info.value) == "ModelConfig is not a registered model config"
