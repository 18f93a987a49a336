"""Prompt template sets: counts, order and the formatting of a class name."""

from __future__ import annotations

import pytest

from ovss.errors import VocabularyError
from ovss.vocab.templates import IMAGENET, TEMPLATE_SETS, VILD, get_templates


def test_template_sets():
    assert len(VILD) == 14 and len(IMAGENET) == 80 and len(set(IMAGENET)) == 80
    assert VILD[0] == "a photo of a {}." and VILD[1] == "This is a photo of a {}"
    assert get_templates("catseg") == ("A photo of a {} in the scene",)
    assert all(t.count("{}") == 1 for ts in TEMPLATE_SETS.values() for t in ts)
    with pytest.raises(VocabularyError, match="unknown template set 'foo'"):
        get_templates("foo")


# san.md section 1.8: the 14 "vild" templates, exact strings (note the inconsistent trailing periods).
SPEC_VILD = (
    "a photo of a {}.", "This is a photo of a {}", "There is a {} in the scene",
    "There is the {} in the scene", "a photo of a {} in the scene", "a photo of a small {}.",
    "a photo of a medium {}.", "a photo of a large {}.", "This is a photo of a small {}.",
    "This is a photo of a medium {}.", "This is a photo of a large {}.", "There is a small {} in the scene.",
    "There is a medium {} in the scene.", "There is a large {} in the scene.",
)


def test_vild_is_sans_set_in_the_specs_order():
    assert get_templates("vild") == SPEC_VILD


def test_imagenet_is_the_official_sed_set_in_its_channel_order():
    """The 80 templates recorded from the official SED code (parity fixture sed_a) in the same order:
    SED has one cost channel per template (catseg_sed.md 2.3-2.4)."""
    import json

    from tests.conftest import needs, parity_dir

    config = json.loads(needs(parity_dir() / "sed_a" / "config.json").read_text())
    assert get_templates("imagenet") == tuple(config["templates"])


def test_class_names_are_inserted_verbatim():
    """san.md Appendix A: a synonym list is ONE class string ("a photo of a road, route."); catseg_sed.md
    1.2.3: CAT-Seg CVPR's single template "A photo of a {} in the scene"."""
    assert get_templates("vild")[0].format("road, route") == "a photo of a road, route."
    assert get_templates("catseg")[0].format("wall-brick") == "A photo of a wall-brick in the scene"
    assert get_templates("single") == ("a photo of a {}.",)
    first_two = [t.format("x") for t in get_templates("imagenet")[:2]]
    assert first_two == ["a bad photo of a x.", "a photo of many x."]


def test_unknown_set_is_one_line_naming_the_sets():
    with pytest.raises(VocabularyError) as info:
        get_templates("clip")
    expected = "unknown template set 'clip'; choose one of ['catseg', 'imagenet', 'single', 'vild']"
    assert str(info.value) == expected
