"""SegmentationResult: what save() writes (each output, bit depth, JSON record) in bounded memory."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from ovss.api.result import SegmentationResult
from ovss.api.visualize import overlay, overlay_bands
from ovss.data.io import read_label


def _result(h: int, w: int, k: int, seed: int = 0, **extra) -> SegmentationResult:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, k, (h, w))
    counts = np.bincount(label.ravel(), minlength=k)
    return SegmentationResult(
        label_map=label,
        class_names=[f"class {i}" for i in range(k)],
        confidence=rng.random((h, w), dtype=np.float32),
        class_scores=rng.random(k, dtype=np.float32),
        fractions=counts / label.size,
        image=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        model="m",
        **extra,
    )


def test_save_writes_each_requested_output(tmp_path):
    result = _result(
        21, 34, 5, source="/data/a.jpg", vocabulary=[["c0"], ["c1", "one"], ["c2"], ["c3"], ["c4"]]
    )
    paths = result.save(tmp_path, "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a_label.png", "a_overlay.png"]
    assert np.array_equal(read_label(paths["label"]), result.label_map)
    with Image.open(paths["label"]) as label:
        assert label.mode == "P"  # palette PNG up to 256 classes
    with Image.open(paths["overlay"]) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(result.overlay()))
    data = json.loads(paths["json"].read_text())
    assert data["source"] == "/data/a.jpg" and data["vocabulary"][1] == ["c1", "one"]
    assert [c["name"] for c in data["classes"]] == result.class_names

    compact = tmp_path / "compact"
    assert set(result.save(compact, "a", outputs=("label",))) == {"label"}
    assert [p.name for p in compact.iterdir()] == ["a_label.png"]
    with pytest.raises(ValueError, match="unknown output"):
        result.save(compact, "a", outputs=("labels",))


@pytest.mark.parametrize("k", [256, 257, 300])
def test_label_png_is_palette_up_to_256_classes_and_16_bit_above(tmp_path, k):
    result = _result(9, 13, k)
    result.label_map[0, 0] = 3  # the bit depth depends on K, not on which classes occur
    result.label_map[result.label_map > 200] = 7
    path = result.save(tmp_path, "x", outputs=("label",))["label"]
    with Image.open(path) as image:
        assert image.mode == ("P" if k <= 256 else "I;16")
    assert np.array_equal(read_label(path), result.label_map)


@pytest.mark.parametrize("band_pixels", [1, 50, 10**6])
def test_overlay_bands_assemble_to_the_overlay(band_pixels):
    result = _result(40, 17, 30, seed=1)  # the legend (8 + 18 * 30 rows) is taller than the image
    result.label_map[:3] = -1  # unlabelled pixels keep the image colour
    width, height, bands = overlay_bands(
        result.image, result.label_map, result.class_names, result.fractions, band_pixels=band_pixels
    )
    stacked = np.concatenate(list(bands))
    whole = np.asarray(overlay(result.image, result.label_map, result.class_names, result.fractions))
    assert stacked.shape == (height, width, 3) == whole.shape and height == 8 + 18 * 30
    assert np.array_equal(stacked, whole)
    assert np.array_equal(stacked[:3, :17], result.image[:3])


def test_saving_a_large_result_stays_in_bounded_memory(tmp_path):
    result = _result(2000, 3000, 4)  # 6 MP: a float32 RGB copy alone would be 72 MB
    tracemalloc.start()
    try:
        result.save(tmp_path, "big")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20, f"saving took {peak / 2**20:.0f} MiB of numpy/Python memory"
    assert np.array_equal(read_label(tmp_path / "big_label.png"), result.label_map)
