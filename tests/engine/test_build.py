"""Starting points of a run: pretrained CLIP file, whole-model weights, random."""

from __future__ import annotations

import pytest
import torch

from ovss.engine.build import build_training_model, resolve_file
from ovss.engine.recipes import load_config
from ovss.errors import ConfigError
from ovss.models.build import build_model
from ovss.weights.modelfile import save_model_file
from ovss.weights.registry import get_weight_spec


@pytest.mark.parametrize("name", ["test-san-tiny", "test-catseg-tiny"])
def test_clip_weights_from_an_openai_layout_file(tmp_path, name):
    torch.manual_seed(1)
    source = build_model(get_weight_spec(name).config()).clip
    # OpenAI layout: visual.* as is, the text tower at the top level (CAT-Seg: split q/k/v, as stored)
    state = {(k[len("text."):] if k.startswith("text.") else k): v for k, v in source.state_dict().items()}
    torch.save(state, tmp_path / "clip.pt")
    section = load_config("tiny-" + name.split("-")[1]).model.override(
        f'clip_weights="{tmp_path / "clip.pt"}"', "random_init=false"
    )
    torch.manual_seed(2)
    model, _ = build_training_model(section)
    for key, value in source.state_dict().items():
        assert torch.equal(model.clip.state_dict()[key], value), key
    assert model.training and any(p.requires_grad for p in model.clip.parameters())


def test_whole_model_weights_and_family_check(tmp_path):
    torch.manual_seed(0)
    model, family = build_training_model(load_config("tiny-sed").model)
    path = save_model_file(tmp_path / "sed.safetensors", model.state_dict(), model.config, family)
    loaded, _ = build_training_model(load_config("tiny-sed").model.override(f'weights="{path}"'))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ConfigError, match="holds a sed model"):
        build_training_model(load_config("tiny-san").model.override(f'weights="{path}"'))


def test_resolve_file():
    assert str(resolve_file("~/x.pt")).endswith("x.pt") and "~" not in str(resolve_file("~/x.pt"))
    with pytest.raises(ConfigError, match="hf://OWNER/REPO/FILE"):
        resolve_file("hf://only-repo")
