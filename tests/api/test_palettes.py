"""Palettes and class colours: stable per name, distinct within a vocabulary, palette files."""

from __future__ import annotations

import itertools
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


def _voc_colour_map() -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map, written out from its definition (bits of the index spread over the
    high bits of r, g, b: bit 0 -> r, 1 -> g, 2 -> b, then the next three one bit lower, ...)."""
    colours = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return colours


def test_default_table_is_the_voc_colour_map_without_black():
    from ovss.api.palettes import named_palette

    table = named_palette("default").table
    assert table.dtype == np.uint8 and table.shape == (255, 3)
    assert [tuple(int(v) for v in c) for c in table] == _voc_colour_map()[1:]
    assert get_palette() is named_palette("default") and get_palette(None) is named_palette("default")


def test_hues_are_64_distinct_saturated_colours():
    import colorsys

    table = get_palette("hues").table
    assert table.shape == (64, 3) and len({tuple(c) for c in table.tolist()}) == 64
    hsv = [colorsys.rgb_to_hsv(*(c / 255 for c in colour)) for colour in table.tolist()]
    assert all(abs(s - 0.85) < 0.01 for _, s, _ in hsv)  # saturated
    assert [round(v, 2) for _, _, v in hsv[:4]] == [0.95, 0.75, 0.95, 0.75]  # two brightness levels
    # consecutive hues a golden-angle step apart: 1 - 1/phi of the circle
    step = 1 - 2 / (1 + 5**0.5)
    for (h0, _, _), (h1, _, _) in itertools.pairwise(hsv):
        assert abs((h1 - h0 - step + 0.5) % 1.0 - 0.5) < 0.01


def _alone(name: str, palette) -> tuple[int, ...]:
    return tuple(class_colours([name], palette)[0].tolist())


def test_a_colliding_name_takes_the_next_free_entry_and_the_first_keeps_its_colour():
    from ovss.api.palettes import Palette

    two = Palette("two", np.array([[255, 0, 0], [0, 0, 255]], np.uint8))
    names = [f"n{i}" for i in range(12)]
    first, second = next((a, b) for a in names for b in names if a < b and _alone(a, two) == _alone(b, two))
    together = class_colours([first, second], two).tolist()
    assert tuple(together[0]) == _alone(first, two)  # the earlier name keeps its own colour
    assert together[1] != together[0] and sorted(together) == [[0, 0, 255], [255, 0, 0]]
    # once the table is used up, colours repeat rather than failing
    assert len(class_colours(names, two)) == 12


def test_a_hashed_name_never_takes_a_fixed_names_colour():
    person = (192, 128, 128)  # VOC's person
    rival = next(n for n in (f"thing {i}" for i in range(5000)) if _alone(n, "voc") == person)
    colours = class_colours(["person", rival], "voc").tolist()
    assert tuple(colours[0]) == person and tuple(colours[1]) != person


def test_colours_do_not_depend_on_the_process(tmp_path):
    """sha256 of the name, not Python's per-process string hash: another interpreter agrees."""
    import os
    import subprocess
    import sys

    names = ["cat", "dog", "traffic light"]
    code = (
        "import json; from ovss.api.palettes import class_colours; "
        f"print(json.dumps(class_colours({names!r}).tolist()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == class_colours(names).tolist()


def test_a_palette_file_without_the_json_suffix_and_a_palette_object(tmp_path):
    from ovss.api.palettes import Palette

    path = tmp_path / "colours.txt"
    path.write_text('["#0a0b0c"]')
    assert class_colours(["anything"], str(path)).tolist() == [[10, 11, 12]]
    custom = Palette("mine", np.array([[1, 2, 3]], np.uint8))
    assert get_palette(custom) is custom
