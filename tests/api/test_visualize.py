"""Labelled overlays and palettes: real renderings checked as images (sizes, colours, text pixels)."""

from __future__ import annotations

import numpy as np
import pytest

from ovss.api.labels import label_stamps
from ovss.api.palettes import class_colours
from ovss.api.visualize import overlay, overlay_bands
from ovss.errors import ConfigError

NAMES = ["sky", "grass", "road", "speck"]


def _scene(h: int = 240, w: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """A grey photo and a label map: sky (top-left), grass (right half), a road band at the bottom,
    a 6x6 speck and an unlabelled (255) block inside the sky."""
    labels = np.zeros((h, w), dtype=np.int64)
    labels[:, w // 2 :] = 1
    labels[h - 50 :, :] = 2
    labels[10:16, 10:16] = 3
    labels[80:120, 60:100] = 255
    return np.full((h, w, 3), 128, dtype=np.uint8), labels


def _white_and_black(pixels: np.ndarray) -> tuple[int, int]:
    """Near-white and near-black pixels: text and outline (no blend of grey 128 reaches either)."""
    return int(np.all(pixels >= 220, axis=-1).sum()), int(np.all(pixels <= 40, axis=-1).sum())


def test_labelled_overlay_writes_names_on_large_regions_only():
    image, labels = _scene()
    out = np.asarray(overlay(image, labels, NAMES, opacity=0.6, palette="hues"))
    plain = np.asarray(overlay(image, labels, NAMES, opacity=0.6, palette="hues", labels=False))
    assert out.shape[0] == 240 and out.shape[1] > 320  # the legend stays, at the right
    stamps = {s.name: s for s in label_stamps(labels, NAMES)}
    assert set(stamps) == {"sky", "grass", "road"}  # the 6x6 speck cannot hold its name
    colours = class_colours(NAMES, "hues").astype(np.float64)
    for name, stamp in stamps.items():
        k = NAMES.index(name)
        (r, c), (h, w) = stamp.centre, stamp.alpha.shape
        assert labels[r, c] == k  # the name sits on its own region
        box = out[stamp.top : stamp.top + h, stamp.left : stamp.left + w]
        white, black = _white_and_black(box)
        assert white > 10 and black > 10  # white text with a black outline
        assert _white_and_black(plain[stamp.top : stamp.top + h, stamp.left : stamp.left + w]) == (0, 0)
        expected = 0.4 * 128 + 0.6 * colours[k]  # away from the text: the blended class colour
        assert np.abs(out[stamp.top - 3, c] - expected).max() <= 1
    road = stamps["road"]
    assert abs(road.centre[1] - 160) <= 8  # a band gets its name in the middle, not at one end
    # The speck's and the unlabelled block's pixels are untouched by text.
    assert np.array_equal(out[10:16, 10:16], plain[10:16, 10:16])
    assert np.array_equal(out[80:120, 60:100, :], image[80:120, 60:100])  # unlabelled: the photo


def test_legend_lists_unlabelled_pixels():
    image, labels = _scene()
    with_gap = np.asarray(overlay(image, labels, NAMES, labels=False))
    labels[labels == 255] = 0
    full = np.asarray(overlay(image, labels, NAMES, labels=False))
    assert with_gap.shape[0] == full.shape[0] and with_gap.shape[1] >= full.shape[1]
    legend_rows = 8 + 18 * 5  # four classes + "unlabelled"
    assert with_gap[legend_rows - 12 : legend_rows, 320:].min() < 100  # a fifth legend line is drawn
    assert full[legend_rows - 12 : legend_rows, 320:].min() == 255


@pytest.mark.parametrize("band_pixels", [1000, 10**6])
def test_bands_with_names_assemble_to_the_overlay(band_pixels):
    image, labels = _scene()
    width, height, bands = overlay_bands(image, labels, NAMES, band_pixels=band_pixels)
    stacked = np.concatenate(list(bands))
    assert stacked.shape == (height, width, 3)
    assert np.array_equal(stacked, np.asarray(overlay(image, labels, NAMES)))


@pytest.mark.parametrize("opacity", [-0.1, 1.5, float("nan"), "x"])
def test_bad_opacity_is_one_line(opacity):
    image, labels = _scene(20, 20)
    with pytest.raises(ConfigError, match=r"^opacity must be a number from 0 \(image only\) to 1"):
        overlay(image, labels, NAMES, opacity=opacity)


def test_opacity_zero_and_one():
    image, labels = _scene(20, 30)
    labels[:] = 0
    labels[:, 15:] = 1
    colours = class_colours(NAMES)
    zero = np.asarray(overlay(image, labels, NAMES, opacity=0.0, legend=False, labels=False))
    one = np.asarray(overlay(image, labels, NAMES, opacity=1.0, legend=False, labels=False))
    assert np.array_equal(zero, image)
    assert np.array_equal(one[0, 0], colours[0]) and np.array_equal(one[0, -1], colours[1])
