"""Optional matplotlib: off-screen figures written atomically, one line when it is missing, short names."""

from __future__ import annotations

import logging
import sys

import pytest

import ovss.plotting as plotting


def test_a_figure_is_rendered_off_screen_and_saved_as_png(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = plotting.new_figure(3, 2)
    ax = fig.add_subplot()
    ax.plot([0, 1], [1, 0])
    path = plotting.save_figure(fig, tmp_path / "sub.png", dpi=50)
    assert path == tmp_path / "sub.png"
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (150, 100)  # 3 x 2 inches at 50 dpi
    assert plt.get_fignums() == before  # pyplot's figure registry untouched
    assert [p.name for p in tmp_path.iterdir()] == ["sub.png"]  # no temporary file left


def test_missing_matplotlib_is_one_warning_per_process(monkeypatch, caplog):
    monkeypatch.setattr(plotting, "_warned", False)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with caplog.at_level(logging.WARNING, logger="ovss.plots"):
        assert plotting.new_figure(1, 1) is None
        assert plotting.new_figure(2, 2) is None
    assert [r.getMessage() for r in caplog.records] == [
        "plots skipped: matplotlib is not installed; install it with: pip install 'ovss[plots]'"
    ]


@pytest.mark.parametrize(
    ("name", "width", "expected"),
    [
        ("wall", 28, "wall"),
        ("building, edifice", 28, "building, edifice"),  # fits whole
        ("door, double door, sliding door", 28, "door"),  # too long: its first synonym
        ("a very long single class name here", 10, "a very lo…"),  # still too long: cut with an ellipsis
        (", leading comma", 28, ", leading comma"),
        ("abcdefghij, k", 10, "abcdefghij"),  # the first synonym is exactly the width
    ],
)
def test_shorten(name, width, expected):
    assert plotting.shorten(name, width) == expected
    assert len(plotting.shorten(name, width)) <= width
