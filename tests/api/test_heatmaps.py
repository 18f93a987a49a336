"""Score maps on disk: the heat colour ramp at known scores, the shared scale, file names, the .npz."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ovss.api.heatmaps import (
    SHEET_ABOVE,
    colour_scale,
    heat,
    heatmap_paths,
    score_range,
    slug,
    write_heatmaps,
    write_scores_npz,
)

# The documented ramp: black, purple, red, orange, pale yellow at 0, 1/4, 1/2, 3/4 and 1.
BLACK, PURPLE, RED, ORANGE, YELLOW = (0, 0, 0), (70, 15, 110), (185, 45, 80), (245, 130, 25), (252, 245, 170)


def test_the_ramp_passes_through_its_anchors():
    assert colour_scale(5).tolist() == [list(c) for c in (BLACK, PURPLE, RED, ORANGE, YELLOW)]
    lut = colour_scale()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert tuple(lut[0]) == BLACK and tuple(lut[255]) == YELLOW
    # entry 32 sits at 32/255 of the ramp: 0.50196 of the way from black to purple
    t = (32 / 255) / 0.25
    assert lut[32].tolist() == [round(t * c) for c in PURPLE]
    assert (np.diff(lut.astype(int).sum(axis=1)) >= 0).all()  # brighter as the score rises


@pytest.mark.parametrize(
    ("scores", "expected"),
    [([0.2, 0.9], (0.0, 1.0)), ([-2.5, 3.0], (-2.5, 3.0)), ([0.2, 1.5], (0.0, 1.5)),
     ([-0.5, 0.5], (-0.5, 1.0))],
)
def test_the_scale_is_0_to_1_unless_scores_leave_it(scores, expected):
    assert score_range(np.array(scores, np.float32)) == expected


def test_heat_pixels_at_known_scores():
    """70% heat colour + 30% of the photo's luma (0.299 R + 0.587 G + 0.114 B)."""
    photo = np.array([[[0, 0, 0], [255, 255, 255], [200, 100, 50], [200, 100, 50]]], np.uint8)
    scores = np.array([[0.0, 1.0, 1.0, 5.0]], np.float32)
    out = heat(scores, photo, 0.0, 1.0).astype(float)
    luma = 0.299 * 200 + 0.587 * 100 + 0.114 * 50
    expected = np.array([
        [0.7 * c for c in BLACK],
        [0.7 * c + 0.3 * 255 for c in YELLOW],
        [0.7 * c + 0.3 * luma for c in YELLOW],
        [0.7 * c + 0.3 * luma for c in YELLOW],  # above the scale: clipped to its top
    ])
    assert np.abs(out[0] - expected).max() <= 1
    # a wider scale moves the same score down the ramp: 1.0 on -1..3 is half way (red), 0.0 a quarter
    wide = heat(np.array([[1.0, 0.0]], np.float32), np.zeros((1, 2, 3), np.uint8), -1.0, 3.0).astype(float)
    assert np.abs(wide[0, 0] - [0.7 * c for c in RED]).max() <= 2
    assert np.abs(wide[0, 1] - [0.7 * c for c in PURPLE]).max() <= 2


@pytest.mark.parametrize(
    ("name", "expected"),
    [("traffic light", "traffic-light"), ("a/b..c", "a-b-c"), (" wall, brick ", "wall-brick"),
     ("!!", "class"), ("x" * 60, "x" * 40), ("chaise longue (é)", "chaise-longue")],
)
def test_slug(name, expected):
    assert slug(name) == expected


def test_one_file_per_class_up_to_the_limit_then_a_sheet(tmp_path):
    names = [f"c{i}" for i in range(SHEET_ABOVE)]
    paths = heatmap_paths(tmp_path, "img", names)
    assert [p.name for p in paths[:2]] == ["img_heatmap-0-c0.png", "img_heatmap-1-c1.png"]
    assert len(paths) == SHEET_ABOVE == 16
    assert heatmap_paths(tmp_path, "img", [*names, "one more"]) == [tmp_path / "img_heatmaps.png"]


def test_written_heat_maps_hold_the_ramp(tmp_path):
    scores = np.zeros((2, 5, 7), np.float32)
    scores[1] = 1.0
    scores[1, :, :3] = 0.0
    photo = np.zeros((5, 7, 3), np.uint8)
    paths = write_heatmaps(tmp_path, "x", scores, photo, ["zero", "half"])
    assert [p.name for p in paths] == ["x_heatmap-0-zero.png", "x_heatmap-1-half.png"]
    first = np.asarray(Image.open(paths[0]).convert("RGB"))
    second = np.asarray(Image.open(paths[1]).convert("RGB")).astype(float)
    assert first.shape == (5, 7, 3) and (first == 0).all()
    assert (second[:, :3] == 0).all() and np.abs(second[:, 3:] - [0.7 * c for c in YELLOW]).max() <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temp files


def test_a_sheet_for_many_classes(tmp_path):
    k = SHEET_ABOVE + 1
    scores = np.linspace(0, 1, k, dtype=np.float32)[:, None, None] * np.ones((k, 20, 30), np.float32)
    names = [f"c{i}" for i in range(k)]
    (path,) = write_heatmaps(tmp_path, "s", scores, np.zeros((20, 30, 3), np.uint8), names)
    sheet = np.asarray(Image.open(path).convert("RGB"))
    assert path.name == "s_heatmaps.png" and sheet.shape[1] <= 4096 + 8
    # every tile's colour is present: the brightest tile (score 1) gives the top of the ramp
    assert (np.abs(sheet.astype(int) - [round(0.7 * c) for c in YELLOW]).max(axis=-1) <= 1).sum() > 100


def test_scores_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.random((3, 9, 11), dtype=np.float32) * 4 - 1
    path = write_scores_npz(tmp_path / "s.npz", scores, ["cat", "dog", "traffic light"])
    with np.load(path) as data:  # no pickle
        assert sorted(data.files) == ["class_names", "scores"]
        assert data["scores"].dtype == np.float16 and data["scores"].shape == (3, 9, 11)
        assert np.array_equal(data["scores"], scores.astype(np.float16))
        assert data["class_names"].tolist() == ["cat", "dog", "traffic light"]
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]
