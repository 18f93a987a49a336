"""Training augmentations: sizes, crop constraint, colour round trip, flip/pad semantics."""

from __future__ import annotations

import numpy as np
import pytest

from ovss.data.augment import (
    AugmentConfig,
    augment,
    crop_window,
    hsv_to_rgb,
    pad_to,
    photometric_distort,
    resize,
    resize_shortest_edge,
    rgb_to_hsv,
)
from ovss.errors import ConfigError


def _pair(h: int = 60, w: int = 90):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = np.zeros((h, w), dtype=np.int64)
    label[:, w // 2 :] = 1
    label[: h // 4] = 255
    return image, label


def test_resize_shortest_edge_choice_and_cap():
    image, label = _pair(60, 90)
    rng = np.random.default_rng(1)
    sizes = {resize_shortest_edge(image, label, (30, 45), 1000, rng)[0].shape[:2] for _ in range(20)}
    assert sizes == {(30, 45), (45, 68)}  # 90 * 45 / 60 = 67.5 -> 68 (round half up)
    out, lab = resize_shortest_edge(image, label, (60,), 80, rng)  # long side capped at 80
    assert out.shape == (53, 80, 3) and lab.shape == (53, 80)


def test_label_resize_is_torch_nearest():
    label = np.arange(4, dtype=np.int64).reshape(1, 4).repeat(2, 0)
    _, lab = resize(np.zeros((2, 4, 3), np.uint8), label, (2, 6))
    # torch nearest: src = floor(dst * 4 / 6) -> 0 0 1 2 2 3
    assert lab[0].tolist() == [0, 0, 1, 2, 2, 3]
    assert set(np.unique(lab)) <= {0, 1, 2, 3}


def test_crop_window_plain_and_clipped():
    label = np.zeros((10, 20), dtype=np.int64)
    rng = np.random.default_rng(0)
    y0, x0, h, w = crop_window(label, 8, rng)
    assert (h, w) == (8, 8) and 0 <= y0 <= 2 and 0 <= x0 <= 12
    assert crop_window(label, 30, rng) == (0, 0, 10, 20)  # clipped to the image


def test_crop_window_category_constraint():
    # Class 1 fills the bottom-right 8x8 quarter of a 16x16 map; an 8x8 crop at (y0, x0) holds
    # y0 * x0 pixels of it and passes when 16 < y0 * x0 < 48 (P = 24/81 per try, 97% within 10 tries).
    label = np.zeros((16, 16), dtype=np.int64)
    label[8:, 8:] = 1

    def passes(window) -> bool:
        y0, x0, h, w = window
        values, counts = np.unique(label[y0 : y0 + h, x0 : x0 + w], return_counts=True)
        return len(values) > 1 and counts.max() < 0.75 * counts.sum()

    constrained = sum(passes(crop_window(label, 8, np.random.default_rng(s), 0.75)) for s in range(30))
    plain = sum(passes(crop_window(label, 8, np.random.default_rng(s))) for s in range(30))
    assert constrained >= 25 and plain <= 15


def test_crop_constraint_ignores_ignore_label():
    label = np.full((8, 8), 255, dtype=np.int64)
    label[:, :2] = 0
    label[:, 2:4] = 1
    # every 4x8 crop holds classes 0 and 1 in equal counts (ignore excluded) -> accepted at once
    rng = np.random.default_rng(0)
    assert crop_window(label, 8, rng, single_category_max_area=0.75) == (0, 0, 8, 8)


def test_hsv_round_trip_and_known_values():
    colours = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0], [128, 64, 32]]],
                       dtype=np.uint8)
    hsv = rgb_to_hsv(colours)
    assert hsv[0, :5].tolist() == [[0, 255, 255], [60, 255, 255], [120, 255, 255], [0, 0, 255], [0, 0, 0]]
    assert hsv[0, 5].tolist() == [10, 191, 128]  # OpenCV: H = 20 deg / 2, S = 255 * 96 / 128
    back = hsv_to_rgb(hsv).astype(int)
    assert np.abs(back - colours.astype(int)).max() <= 2
    rng = np.random.default_rng(0)
    many = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    error = np.abs(hsv_to_rgb(rgb_to_hsv(many)).astype(int) - many.astype(int))
    assert error.max() <= 5 and error.mean() < 0.5  # 8-bit HSV quantisation, as OpenCV's round trip


def test_photometric_distort_changes_colour_only_and_is_seeded():
    image, _ = _pair()
    a = photometric_distort(image, np.random.default_rng(5))
    b = photometric_distort(image, np.random.default_rng(5))
    assert a.dtype == np.uint8 and a.shape == image.shape
    np.testing.assert_array_equal(a, b)
    outs = [photometric_distort(image, np.random.default_rng(s)) for s in range(10)]
    changed = sum(not np.array_equal(out, image) for out in outs)
    assert changed >= 8  # P(no op at all) = 1/16


def test_pad_to_values():
    image = np.full((2, 3, 3), 7, dtype=np.uint8)
    label = np.ones((2, 3), dtype=np.int64)
    out, lab = pad_to(image, label, 4, 128, 255)
    assert out[:2, :3].min() == 7 and out[2:].min() == 128 and out[:, 3:].max() == 128
    assert lab[:2, :3].min() == 1 and (lab[2:] == 255).all() and (lab[:, 3:] == 255).all()


def test_augment_pipeline_shapes_flip_and_determinism():
    image, label = _pair(60, 90)
    cfg = AugmentConfig(min_sizes=(40,), max_size=200, crop_size=48, photometric=False)
    out, lab = augment(image, label, cfg, np.random.default_rng(3))
    assert out.shape == (48, 48, 3) and lab.shape == (48, 48) and lab.dtype == np.int64
    assert (lab[40:] == 255).all() and (out[40:] == 128).all()  # 40 x 60 resized, crop 40 x 48, padded
    again, lab2 = augment(image, label, cfg, np.random.default_rng(3))
    np.testing.assert_array_equal(out, again)
    np.testing.assert_array_equal(lab, lab2)
    # with flips the left/right class layout (class 0 left, class 1 right) appears both ways
    layouts = set()
    for s in range(12):
        _, lab = augment(image, label, cfg, np.random.default_rng(s))
        row = lab[30, :48]
        layouts.add(int(row[0]) < int(row[-1]) if row[0] != row[-1] else None)
    assert {True, False} <= layouts


def test_augment_config_validation():
    with pytest.raises(ConfigError, match="single_category_max_area"):
        AugmentConfig(single_category_max_area=0.0)
    with pytest.raises(ConfigError, match="min_sizes"):
        AugmentConfig(min_sizes=())
    assert AugmentConfig.from_json(AugmentConfig(min_sizes=(1, 2)).to_json()).min_sizes == (1, 2)
