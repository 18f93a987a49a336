from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovss
from ovss.api.segmenter import Segmenter
from ovss.data.io import read_image, read_label
from ovss.errors import ImageReadError, OvssError, VocabularyError
from ovss.models.base import ModelConfig, ResizeConfig, SegmentationModel
from ovss.weights.registry import list_weights
from tests.conftest import noise_photo, segment_max_scores

TINY = [n for n in list_weights(include_test=True) if n.startswith("test-")]


class ColourModel(SegmentationModel):
    """Scores = the RGB channels of the valid image region resized to the output size (K = 3)."""

    def __init__(self, resize: ResizeConfig) -> None:
        super().__init__()
        self.config = ModelConfig(
            templates="single",
            synonyms="first",
            test_resize=resize,
            pixel_mean=(0.0, 0.0, 0.0),
            pixel_std=(1.0, 1.0, 1.0),
        )
        self.encoded = 0

    def encode_text(self, tokens):
        self.encoded += tokens.shape[1]
        return torch.ones(tokens.shape[1], 2)

    def predict(self, images, text, image_size, output_size, **options):
        h, w = image_size
        assert images.shape[-2] % 32 == 0 and images.shape[-1] % 32 == 0  # padded by the predictor
        valid = images[:, :, :h, :w]
        return F.interpolate(valid, size=tuple(output_size), mode="bilinear", align_corners=False)


def _halves(h: int, w: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2, 0] = 255  # left red -> class 0
    img[:, w // 2 :, 2] = 255  # right blue -> class 2
    return img


@pytest.mark.parametrize(
    "resize", [ResizeConfig(size=64), ResizeConfig(mode="fixed", size=96), ResizeConfig(mode="none")]
)
def test_geometry_resize_pad_crop_back_to_original(resize):
    seg = Segmenter(ColourModel(resize))
    img = _halves(45, 70)
    result = seg.predict(img, "red; green; blue")
    assert result.label_map.shape == (45, 70)
    assert (result.label_map[:, :30] == 0).all() and (result.label_map[:, 40:] == 2).all()
    assert result.class_names == ["red", "green", "blue"]
    assert result.fractions.sum() == pytest.approx(1.0)
    assert result.fractions[1] == 0


def test_vocabulary_is_embedded_once_and_batches_match():
    model = ColourModel(ResizeConfig(size=64))
    seg = Segmenter(model)
    imgs = [_halves(40, 60), _halves(40, 60), _halves(30, 50)]
    one = [r.label_map for r in seg.predict_batch(imgs, "a; b; c")]
    assert model.encoded == 3
    two = [r.label_map for r in seg.predict_batch(imgs, "a; b; c", batch_size=2)]
    assert model.encoded == 3  # same vocabulary: nothing re-embedded
    assert [m.shape for m in two] == [(40, 60), (40, 60), (30, 50)]
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    seg.predict(imgs[0], "a; b; d")
    assert model.encoded == 4  # only the new class


def test_no_vocabulary_and_bad_inputs(tmp_path):
    seg = Segmenter(ColourModel(ResizeConfig(size=64)))
    with pytest.raises(OvssError, match="no vocabulary"):
        seg.predict(_halves(10, 10))
    with pytest.raises(VocabularyError, match="empty"):
        seg.predict(_halves(10, 10), " ; ")
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(ImageReadError, match="notes.jpg"):
        seg.predict(bad, "a; b; c")
    with pytest.raises(OvssError, match="unknown dtype"):
        Segmenter(ColourModel(ResizeConfig()), dtype="int8")


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_end_to_end_on_real_photos(name, data_dir, tmp_path):
    seg = ovss.load(name)
    photos = sorted((data_dir / "voc").glob("*.jpg"))
    results = list(seg.predict_batch(photos, "person; bottle; sofa, couch; bus; car; background"))
    assert len(results) == len(photos)
    for photo, result in zip(photos, results):
        h, w = read_image(photo).shape[:2]
        assert result.label_map.shape == (h, w) and result.confidence.shape == (h, w)
        assert result.label_map.min() >= 0 and result.label_map.max() < 6
        assert result.model == name
    full = seg.predict(photos[0], return_scores=True)
    assert full.scores.shape == (6, *full.label_map.shape)
    np.testing.assert_array_equal(full.scores.argmax(0), full.label_map)
    np.testing.assert_allclose(full.class_scores, full.scores.reshape(6, -1).max(1), rtol=1e-6)
    paths = full.save(tmp_path, "x")
    np.testing.assert_array_equal(read_label(paths["label"]), full.label_map)
    summary = json.loads(paths["json"].read_text())
    assert [c["name"] for c in summary["classes"]] == ["person", "bottle", "sofa", "bus", "car", "background"]
    assert summary["height"] == full.label_map.shape[0]
    overlay = full.overlay()
    assert overlay.height == full.label_map.shape[0] and overlay.width >= full.label_map.shape[1]


@pytest.mark.parametrize("name", TINY)
def test_bf16_runs_close_to_fp32(name, data_dir):
    photo = data_dir / "voc" / "2011_000025.jpg"
    classes = "bus; car; road; sky; person"
    ref = ovss.load(name, dtype="fp32").predict(photo, classes, return_scores=True)
    fast = ovss.load(name, dtype="bf16").predict(photo, classes, return_scores=True)
    assert fast.scores.shape == ref.scores.shape and np.isfinite(fast.scores).all()
    rel = np.linalg.norm(fast.scores - ref.scores) / np.linalg.norm(ref.scores)
    # measured 0.001-0.013; 0.036 for test-san-tiny.mmseg, whose cv2-resized input puts this random
    # network in a more sensitive regime (the same weights on the PIL-resized input: 0.013)
    assert rel < (0.05 if name == "test-san-tiny.mmseg" else 0.03)
    # Labels: random tiny weights leave most pixels near a tie, so agreement is asked where fp32's
    # top-2 margin exceeds 2 % of the score range (measured: every such pixel agrees, all models).
    top2 = np.sort(ref.scores, axis=0)[-2:]
    clear = top2[1] - top2[0] > 0.02 * (ref.scores.max() - ref.scores.min())
    assert clear.any() and np.array_equal(fast.label_map[clear], ref.label_map[clear])


def test_cli_dtype_defaults_auto_for_segment_fp32_for_eval(monkeypatch, tmp_path, capsys):
    """segment (and the demo) resolve --dtype auto and record the dtype used; eval stays exact by default."""
    import ovss.cpu as module
    from ovss.cli.main import main

    monkeypatch.setattr(module, "native_bf16_cpu", lambda: True)
    photo = noise_photo(tmp_path / "photo.png", 40, 48, seed=4)
    out = tmp_path / "out"
    segment_max_scores([str(photo), "--model", "test-san-tiny", "--classes", "cat; sky"], out)
    run = out / ".ovss-segment" / "settings.json"  # the settings a re-run must match
    assert json.loads(run.read_text())["settings"]["dtype"] == "bf16"
    for command, default in (("segment", "auto"), ("demo", "auto"), ("eval", "fp32")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert f"(default: {default})" in " ".join(capsys.readouterr().out.split()), command


def test_result_dataclass_is_plain():
    assert {f.name for f in dataclasses.fields(ovss.SegmentationResult)} >= {
        "label_map",
        "class_names",
        "fractions",
        "class_scores",
        "scores",
    }


class PredictOnly(SegmentationModel):
    """A model without ``predict_blocks``: the Segmenter reduces ``predict``'s whole map."""

    def __init__(self, model: SegmentationModel) -> None:
        super().__init__()
        self.inner, self.config = model, model.config

    def preprocess_size(self, height, width, **options):
        return self.inner.preprocess_size(height, width, **options)

    def input_protocol(self, **options):
        return self.inner.input_protocol(**options)

    def encode_text(self, tokens):
        return self.inner.encode_text(tokens)

    def predict(self, images, text, image_size, output_size, **options):
        return self.inner.predict(images, text, image_size, output_size, **options)


@pytest.mark.parametrize("name", TINY)
def test_blocked_scores_give_the_results_of_the_whole_map(name, data_dir):
    photo, classes = data_dir / "voc" / "2011_000025.jpg", "bus; car; road; sky; person; tree; building"
    blocked = ovss.load(name)
    blocked.block_mb = 0.01  # a few rows or classes per block
    whole = Segmenter(PredictOnly(blocked.model))
    a = blocked.predict(photo, classes, return_scores=True)
    b = whole.predict(photo, classes, return_scores=True)
    np.testing.assert_array_equal(a.label_map, b.label_map)
    np.testing.assert_array_equal(a.confidence, b.confidence)
    np.testing.assert_array_equal(a.class_scores, b.class_scores)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.scores.std() > 0 and len(np.unique(a.confidence)) > 100
    lean = blocked.predict(photo, return_scores=False)
    assert lean.scores is None
    np.testing.assert_array_equal(lean.label_map, a.label_map)


def test_block_budget_and_precomputed_embeddings_are_checked():
    with pytest.raises(OvssError, match="block_mb"):
        Segmenter(ColourModel(ResizeConfig(size=64)), block_mb=0)
    model = ColourModel(ResizeConfig(size=64))
    seg = Segmenter(model)
    seg.set_vocabulary("red; green; blue", embeddings=torch.zeros(3, 2))
    assert model.encoded == 0 and seg.text_embeddings.shape == (3, 2)
    assert (seg.predict(_halves(40, 60)).label_map[:, :20] == 0).all()
    with pytest.raises(OvssError, match="3 classes"):
        seg.set_vocabulary("red; green; blue", embeddings=torch.zeros(2, 2))


def test_segment_cli_catseg_defaults_to_whole_eval_keeps_slide(tmp_path):
    """``ovss segment`` runs CAT-Seg whole-image unless told; the model (and ovss eval) default is slide."""
    photo = noise_photo(tmp_path / "photo.png", seed=3)
    base = [str(photo), "--model", "test-catseg-tiny", "--classes", "cat; grass; sky"]

    def max_scores(out: str, *flags: str) -> list[float]:
        return segment_max_scores([*base, *flags], tmp_path / out)

    whole, slide = max_scores("w", "--inference", "whole"), max_scores("s", "--inference", "slide")
    assert max_scores("d") == whole != slide
    assert ovss.load("test-catseg-tiny").model.config.inference == "slide"  # eval's official protocol
