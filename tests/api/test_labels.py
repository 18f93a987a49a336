"""Class names on regions: text size, the interior point of a region, which classes get a name, the stamp."""

from __future__ import annotations

import numpy as np
import pytest

from ovss.api.labels import MIN_INSIDE, Stamp, font_size, interior_point, label_stamps, render, text_box


@pytest.mark.parametrize(
    ("height", "width", "size"),
    [(480, 640, 24), (640, 480, 24), (300, 1000, 15), (100, 100, 12), (4000, 6000, 128)],
)
def test_font_size_is_a_twentieth_of_the_short_side_within_12_to_128(height, width, size):
    assert font_size(height, width) == size


def test_interior_point_of_a_square_is_its_centre_and_the_largest_region_wins():
    mask = np.zeros((20, 30), bool)
    mask[5:14, 3:12] = True  # 9 x 9 square, centre (9, 7)
    mask[0:3, 25:28] = True  # a smaller, separate region
    (r, c), region = interior_point(mask)
    assert (r, c) == (9, 7)
    expected = np.zeros_like(mask)
    expected[5:14, 3:12] = True
    assert np.array_equal(region, expected)
    assert interior_point(np.zeros((4, 4), bool)) is None


def test_interior_point_counts_the_image_edge_as_border_and_centres_bands():
    full = np.ones((11, 11), bool)
    assert interior_point(full)[0] == (5, 5)
    band = np.zeros((20, 41), bool)
    band[8:11, :] = True  # 3 rows across the whole width: every middle-row point is 2 px from the border
    assert interior_point(band)[0] == (9, 20)
    diagonal = np.eye(6, dtype=bool)  # 4-connected: six separate one-pixel regions
    (r, c), region = interior_point(diagonal)
    assert region.sum() == 1 and region[r, c]


def _two_halves(h: int, w: int) -> np.ndarray:
    labels = np.zeros((h, w), np.int64)
    labels[:, w // 2 :] = 1
    return labels


def test_names_sit_on_their_own_region_largest_class_first():
    labels = _two_halves(200, 300)
    labels[:, 250:] = 2  # class 1 keeps 100 columns, class 2 takes 50
    stamps = label_stamps(labels, ["left", "middle", "right"], size=16)
    assert [s.name for s in stamps] == ["left", "middle", "right"]
    for k, stamp in enumerate(stamps):
        h, w = stamp.alpha.shape
        box = labels[stamp.top : stamp.top + h, stamp.left : stamp.left + w]
        assert (box == k).mean() >= MIN_INSIDE  # the text box lies on the region
    assert abs(stamps[0].centre[0] - 100) <= 2 and abs(stamps[0].centre[1] - 75) <= 2  # region centre


def test_too_small_regions_unlabelled_pixels_and_blank_names_get_no_stamp():
    labels = np.full((120, 160), 255, np.int64)  # unlabelled everywhere ...
    labels[10:110, 10:150] = 0  # ... but one large region
    labels[50:56, 60:66] = 1  # a 6 x 6 speck: no name fits
    labels[0:2, 0:2] = 7  # a value outside [0, K): unlabelled
    assert [s.name for s in label_stamps(labels, ["wall", "speck"], size=14)] == ["wall"]
    assert label_stamps(labels, ["  ", "speck"], size=14) == []


def test_the_minimum_area_is_the_text_box():
    """A region exactly as large as the text box gets the name; one 30% smaller does not."""
    x0, y0, x1, y1 = text_box("abc", 14)
    th, tw = y1 - y0, x1 - x0
    fits = np.ones((th + 40, tw + 40), np.int64)
    fits[20 : 20 + th, 20 : 20 + tw] = 0
    assert "abc" in {s.name for s in label_stamps(fits, ["abc", "ground"], size=14)}
    small = np.ones_like(fits)
    small[20 : 20 + th, 20 : 20 + int(tw * 0.7)] = 0
    assert all(s.name != "abc" for s in label_stamps(small, ["abc", "ground"], size=14))


def test_large_images_place_names_from_the_reduced_grid():
    labels = _two_halves(1200, 1600)  # above GRID: regions found on a 384 x 512 copy
    stamps = {s.name: s for s in label_stamps(labels, ["sea", "sand"])}
    assert set(stamps) == {"sea", "sand"}
    assert abs(stamps["sea"].centre[1] - 400) <= 8 and abs(stamps["sand"].centre[1] - 1200) <= 8
    assert all(abs(s.centre[0] - 600) <= 8 for s in stamps.values())


def test_render_is_white_text_with_a_black_outline():
    rgb, alpha = render("Wall", 24)
    x0, y0, x1, y1 = text_box("Wall", 24)
    assert rgb.shape == (y1 - y0, x1 - x0, 3) and alpha.shape == rgb.shape[:2]
    opaque = rgb[alpha > 0.99]
    white = np.all(opaque == 255, axis=-1).sum()
    black = np.all(opaque == 0, axis=-1).sum()
    assert white > 20 and black > 20 and 0 < alpha.mean() < 1


def test_paste_blends_by_coverage_and_clips_to_the_band():
    rgb = np.full((2, 2, 3), 200, np.uint8)
    alpha = np.array([[1.0, 0.5], [0.0, 0.25]], np.float32)
    stamp = Stamp("x", top=3, left=1, rgb=rgb, alpha=alpha)
    band = np.full((2, 4, 3), 100, np.uint8)  # image rows 2..3: only the stamp's first row falls in it
    stamp.paste(band, row0=2)
    assert band[1, 1:3, 0].tolist() == [200, 150]  # 1.0 * 200; 0.5 * 200 + 0.5 * 100
    assert (band[0] == 100).all() and (band[1, [0, 3]] == 100).all()
    lower = np.full((2, 4, 3), 100, np.uint8)  # rows 4..5: the stamp's second row
    stamp.paste(lower, row0=4)
    assert lower[0, 1:3, 0].tolist() == [100, 125]  # 0.0 -> untouched; 0.25 * 200 + 0.75 * 100
    assert stamp.centre == (4, 2)
