from __future__ import annotations

import pytest

import ovss
from ovss.errors import (
    UnknownModelError,
)
from ovss.models.build import family_classes
from ovss.weights.registry import WEIGHTS, get_weight_spec, list_weights


def test_names_unique_and_well_formed():
    names = [s.name for s in WEIGHTS]
    assert len(names) == len(set(names))
    for spec in WEIGHTS:
        family_classes(spec.family)  # a family the model builder knows (UnknownModelError otherwise)
        assert spec.license and spec.origin and spec.description
        if spec.source_format == "random":
            assert spec.name.startswith("test-")
        else:  # every real checkpoint says where it comes from
            assert spec.downloadable or spec.manual_url


def test_public_list_hides_test_models():
    assert "san-vit-b16" in ovss.list_models()
    assert not any(n.startswith("test-") for n in ovss.list_models())
    assert "test-san-tiny" in list_weights(include_test=True)


def test_unknown_name_lists_known_names_and_suggests():
    with pytest.raises(UnknownModelError) as info:
        get_weight_spec("san-vit-b17")
    message = str(info.value)
    assert "did you mean 'san-vit-b16'" in message
    assert "catseg-vit-l14" in message and "sed-convnext-b" in message


def test_a_very_long_model_name_is_an_unknown_model_not_oserror():
    import ovss
    from ovss.errors import UnknownModelError

    with pytest.raises(UnknownModelError, match="unknown model"):
        ovss.load("x" * 400)


def test_an_empty_model_name_is_not_taken_for_the_current_folder():
    """ovss.load("") said "checkpoint file . is a folder"."""
    import ovss
    from ovss.errors import UnknownModelError

    with pytest.raises(UnknownModelError) as info:
        ovss.load("  ")
    assert str(info.value) == "no model given (an empty name); pass a name 'ovss models' lists or a file"


def test_stored_parameter_counts_are_those_of_the_architectures():
    """``WeightSpec.parameters`` (what ``ovss models`` shows without building anything) equals the count
    of the model its config builds on the meta device, for every registered entry."""
    import torch

    from ovss.models.build import build_model

    for spec in WEIGHTS:
        with torch.device("meta"):
            model = build_model(spec.config())
        assert spec.parameters == sum(p.numel() for p in model.parameters()), spec.name
