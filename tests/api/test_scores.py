"""Unlabelled pixels (min_score), score maps on disk (.npz, heat maps) and partial return_scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ovss.api.heatmaps import SHEET_ABOVE, colour_scale
from ovss.api.scores import reduce_scores
from ovss.api.segmenter import Segmenter
from ovss.data.io import read_label
from ovss.errors import OvssError
from ovss.models.base import ModelConfig, ResizeConfig, SegmentationModel


class RedModel(SegmentationModel):
    """K classes; class k scores ``red / 255 * (k + 1) / K`` (the last class wins, with the red level)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ModelConfig(
            templates="single",
            synonyms="first",
            test_resize=ResizeConfig(mode="none"),
            pixel_mean=(0.0, 0.0, 0.0),
            pixel_std=(1.0, 1.0, 1.0),
        )

    def encode_text(self, tokens):
        return torch.ones(tokens.shape[1], 2)

    def predict(self, images, text, image_size, output_size, **options):
        h, w = image_size
        red = images[:, :1, :h, :w] / 255  # (B, 1, h, w)
        k = text.shape[0]
        weights = torch.arange(1, k + 1, dtype=red.dtype).view(1, k, 1, 1) / k
        return red * weights


def _photo(h: int = 24, w: int = 40) -> np.ndarray:
    """Red rising from 0 (left) to 255 (right)."""
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.linspace(0, 255, w).round().astype(np.uint8)[None, :]
    return image


def _classes(k: int) -> str:
    return "; ".join(f"c{i}" for i in range(k))


def test_min_score_leaves_weak_pixels_unlabelled(tmp_path):
    seg = Segmenter(RedModel())
    image = _photo()
    full = seg.predict(image, _classes(3))
    result = seg.predict(image, _classes(3), min_score=0.5)
    weak = full.confidence < 0.5
    assert 0 < weak.mean() < 1
    assert np.array_equal(result.label_map, np.where(weak, 255, full.label_map))
    assert result.unlabelled_value == 255 and result.unlabelled_fraction == pytest.approx(weak.mean())
    assert result.fractions.sum() + result.unlabelled_fraction == pytest.approx(1.0)
    paths = result.save(tmp_path, "x")
    assert np.array_equal(read_label(paths["label"]), result.label_map)  # 8-bit, 255 = unlabelled
    record = json.loads(paths["json"].read_text())["unlabelled"]
    assert record == {"value": 255, "min_score": 0.5, "fraction": round(float(weak.mean()), 6)}
    overlay = np.asarray(result.overlay(legend=False))
    assert np.array_equal(overlay[weak], image[weak]) and not np.array_equal(overlay[~weak], image[~weak])
    assert "unlabelled" not in json.loads(full.save(tmp_path, "y", ("json",))["json"].read_text())


def test_min_score_above_255_classes_is_65535_in_a_16_bit_png(tmp_path):
    seg = Segmenter(RedModel())
    result = seg.predict(_photo(), _classes(256), min_score=0.5)  # 256 classes: 255 is a class
    assert result.unlabelled_value == 65535 and set(np.unique(result.label_map)) == {255, 65535}
    path = result.save(tmp_path, "x", ("label",))["label"]
    assert np.array_equal(read_label(path), result.label_map)
    from PIL import Image

    with Image.open(path) as png:
        assert png.mode == "I;16"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "x", True])
def test_bad_min_score_is_one_line(bad):
    seg = Segmenter(RedModel())
    with pytest.raises(OvssError, match=r"^min_score must be a finite number \(e.g. 0.3\), got"):
        seg.predict(_photo(), "a; b", min_score=bad)


def test_return_scores_for_chosen_classes_only():
    seg = Segmenter(RedModel(), block_mb=0.001)  # many blocks
    image = _photo(30, 50)
    full = seg.predict(image, _classes(5), return_scores=True)
    some = seg.predict(image, _classes(5), return_scores=[3, 1])
    assert some.scores.shape == (2, 30, 50) and some.score_classes == [3, 1]
    assert np.array_equal(some.scores, full.scores[[3, 1]])
    assert np.array_equal(some.label_map, full.label_map)
    with pytest.raises(OvssError, match="class index 5 is out of range for 5 classes"):
        seg.predict(image, return_scores=[5])


def test_scores_npz_round_trip(tmp_path):
    seg = Segmenter(RedModel())
    result = seg.predict(_photo(), _classes(3), return_scores=True)
    path = result.save(tmp_path, "x", ("scores",))["scores"]
    with np.load(path) as data:  # no pickle needed
        assert data["scores"].dtype == np.float16 and data["scores"].shape == (3, 24, 40)
        assert np.array_equal(data["scores"], result.scores.astype(np.float16))
        assert data["class_names"].tolist() == ["c0", "c1", "c2"]
    with pytest.raises(ValueError, match=r"need the whole score map: predict\(..., return_scores=True\)"):
        seg.predict(_photo(), _classes(3)).save(tmp_path, "y", ("heatmaps",))


def test_heat_maps_one_per_class_then_a_sheet(tmp_path):
    from PIL import Image

    seg = Segmenter(RedModel())
    result = seg.predict(_photo(), _classes(3), return_scores=True)
    saved = result.save(tmp_path, "x", ("heatmaps",))["heatmaps"]
    files = sorted(p.name for p in tmp_path.glob("x_heatmap*"))
    assert files == ["x_heatmap-0-c0.png", "x_heatmap-1-c1.png", "x_heatmap-2-c2.png"]
    assert [p.name for p in saved] == files  # save() lists every heat-map file
    heat = np.asarray(Image.open(tmp_path / "x_heatmap-2-c2.png").convert("RGB")).astype(int)
    assert heat.shape == (24, 40, 3)
    lut = colour_scale().astype(int)
    # Score 0 (left) is the dark end over a black photo; score 1 (right) the bright end.
    assert np.abs(heat[0, 0] - 0.7 * lut[0]).max() <= 1
    assert heat[0, -1].sum() > 400 and heat[0, 0].sum() < 10
    many = seg.predict(_photo(), _classes(SHEET_ABOVE + 1), return_scores=True)
    (path,) = many.save(tmp_path, "m", ("heatmaps",))["heatmaps"]
    assert path.name == "m_heatmaps.png" and not list(tmp_path.glob("m_heatmap-*"))
    sheet = np.asarray(Image.open(path).convert("RGB"))
    assert sheet.shape[1] <= 4096 + 8 and sheet.shape[0] > 5 * 24  # 5 rows of tiles
    assert (sheet.astype(int).sum(-1) > 400).sum() > 100  # bright tiles


def test_scores_on_disk_match_and_leave_no_file(tmp_path):
    seg = Segmenter(RedModel(), block_mb=0.001)
    image = _photo(30, 50)
    memory = seg.predict(image, _classes(4), return_scores=True)
    seg.scores_dir = tmp_path
    results = list(
        seg.predict_batch([image, image[:, ::-1].copy()], _classes(4), batch_size=2, return_scores=True)
    )
    disk = results[0].scores
    assert isinstance(disk, np.memmap) and disk.dtype == np.float16 and disk.shape == (4, 30, 50)
    assert np.array_equal(disk, memory.scores.astype(np.float16))
    assert np.array_equal(results[1].scores, memory.scores[:, :, ::-1].astype(np.float16))
    assert np.array_equal(results[0].label_map, memory.label_map)
    path = results[0].save(tmp_path, "x", ("scores", "heatmaps"))["scores"]
    with np.load(path) as data:
        assert np.array_equal(data["scores"], disk)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "x_heatmap-0-c0.png",
        "x_heatmap-1-c1.png",
        "x_heatmap-2-c2.png",
        "x_heatmap-3-c3.png",
        "x_scores.npz",
    ]  # the temporary file of the maps has no name


@pytest.mark.parametrize("split", [(7, 3), (2, 50), (50, 1)])
def test_reduce_scores_over_blocks_equals_whole_map_reductions(split):
    kc, rc = split  # classes and rows per block
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (2, 9, 11, 5), generator=gen).float() / 4  # many ties across classes
    blocks = [
        (k0, r0, scores[:, k0 : k0 + kc, r0 : r0 + rc])
        for r0 in range(0, 11, rc)
        for k0 in range(0, 9, kc)
    ]
    reduced = reduce_scores(blocks, tuple(scores.shape), keep_scores=True)
    value, label = scores.max(dim=1)  # ties: the first class
    assert torch.equal(reduced.labels, label) and torch.equal(reduced.confidence, value)
    assert torch.equal(reduced.class_scores, scores.amax(dim=(2, 3)))
    assert torch.equal(reduced.scores, scores)
    assert reduce_scores(blocks, tuple(scores.shape)).scores is None
