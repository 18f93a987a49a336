"""Palettes and class colours: stable per name, distinct within a vocabulary, palette files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ovss.api.palettes import class_colours, get_palette
from ovss.errors import ConfigError


def test_colours_are_stable_per_class_name():
    a = class_colours(["cat", "dog", "wall"])
    b = class_colours(["wall", "tree", "cat", "sky", "dog"])
    assert np.array_equal(a[0], b[2]) and np.array_equal(a[1], b[4]) and np.array_equal(a[2], b[0])
    assert np.array_equal(class_colours(["Cat"]), class_colours(["cat"]))
    many = class_colours([f"class {i}" for i in range(200)])
    assert len({tuple(c) for c in many}) == 200  # one vocabulary: distinct colours while the table lasts
    voc = class_colours(["person", "car", "quokka"], "voc")
    assert voc[0].tolist() == [192, 128, 128] and voc[1].tolist() == [128, 128, 128]  # VOC colours


def test_palette_files(tmp_path):
    table = tmp_path / "table.json"
    table.write_text(json.dumps([[255, 0, 0], "#00ff00"]))
    assert sorted(map(tuple, class_colours(["a", "b"], table).tolist())) == [(0, 255, 0), (255, 0, 0)]
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps({"Cat": "#102030", "dog": [1, 2, 3]}))
    colours = class_colours(["cat", "dog", "wall"], str(fixed))
    assert colours[:2].tolist() == [[16, 32, 48], [1, 2, 3]]
    assert colours[2].tolist() == class_colours(["wall"]).tolist()[0]  # others: the default table


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2", r"is not valid JSON \("),
        ("[]", "holds no colours; write a list of colours or an object"),
        (
            "[[0, 0, 300]]",
            r"colour 0 is \[0, 0, 300\]; a colour is \[r, g, b\] with 0..255 each or '#rrggbb'",
        ),
        ('{"cat": "#12345"}', r"'cat' is \"#12345\"; a colour is"),
        ('"red"', "holds no colours"),
    ],
)
def test_bad_palette_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        get_palette(path)
    assert "\n" not in str(info.value)


def test_unknown_palette_names_the_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"^unknown palette 'ade'; use one of default, voc, hues or a JSON"):
        get_palette("ade")
    with pytest.raises(ConfigError, match=r"palette file .*missing.json does not exist; check the path"):
        get_palette(str(tmp_path / "missing.json"))
