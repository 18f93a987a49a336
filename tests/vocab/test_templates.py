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
