"""The model contract's defaults: test-time resize, CLIP statistics, blocks <-> predict, freezing, stages."""

from __future__ import annotations

import pytest
import torch

from ovss.errors import ConfigError
from ovss.models.base import (
    CLIP_MEAN_255,
    CLIP_STD_255,
    ModelConfig,
    ResizeConfig,
    SegmentationModel,
    check_stage_mode,
    features_nbytes,
)


@pytest.mark.parametrize(
    ("config", "size", "expected"),
    [
        (ResizeConfig(size=640), (480, 640), (640, 853)),  # 640 x 4/3 = 853.3
        (ResizeConfig(size=640), (640, 480), (853, 640)),
        (ResizeConfig(size=640, max_size=1000), (500, 2000), (250, 1000)),  # the long side capped
        (ResizeConfig(size=384), (300, 301), (384, 385)),  # 301 x 1.28 = 385.28
        (ResizeConfig(size=100), (3, 5), (100, 167)),  # 166.67 rounds up
        (ResizeConfig(mode="fixed", size=384), (480, 640), (384, 384)),
        (ResizeConfig(mode="none"), (123, 45), (123, 45)),
    ],
)
def test_test_resize_sizes_by_hand(config, size, expected):
    assert config.output_size(*size) == expected


@pytest.mark.parametrize("field", ["size=0", "max_size=-1"])
def test_resize_refuses_non_positive_sizes(field):
    with pytest.raises(ConfigError, match="ResizeConfig.size/max_size must be positive"):
        ResizeConfig().override(field)


def test_pixel_statistics_are_clips_on_the_0_255_scale():
    # OpenAI CLIP: mean (0.48145466, 0.4578275, 0.40821073), std (0.26862954, 0.26130258, 0.27577711)
    mean = [0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255]
    std = [0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255]
    assert pytest.approx(mean, abs=1e-6) == CLIP_MEAN_255 and pytest.approx(std, abs=1e-6) == CLIP_STD_255
    config = ModelConfig()
    assert config.pixel_mean == CLIP_MEAN_255 and config.size_divisibility == 32
    assert (config.templates, config.synonyms) == ("vild", "mean")


class _Ramp(SegmentationModel):
    """Score of class k at row r: k + r / 100 (a simple model: ``predict`` only), with two parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ModelConfig(test_resize=ResizeConfig(mode="none"))
        self.head = torch.nn.Linear(2, 2)
        self.body = torch.nn.Linear(2, 2)

    def is_trainable(self, name: str) -> bool:
        return name.startswith("head.")

    def predict(self, images, text, image_size, output_size, **options):
        b, k, (h, w) = images.shape[0], text.shape[0], output_size
        rows = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1) / 100
        classes = torch.arange(k, dtype=torch.float32).view(1, k, 1, 1)
        return (classes + rows).expand(b, k, h, w).to(images.dtype)


class _Banded(SegmentationModel):
    """The same map as :class:`_Ramp`, handed over by its text stage in bands of two rows."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ModelConfig()

    def image_stage(self, images, image_size, **options):
        return {"batch": images.shape[0]}

    def text_stage(self, features, text, image_size, output_size, max_elements=0, **options):
        b, k, (h, w) = features["batch"], text.shape[0], output_size
        for r0 in range(0, h, 2):
            r1 = min(h, r0 + 2)
            rows = torch.arange(r0, r1, dtype=torch.float32).view(1, 1, -1, 1) / 100
            yield 0, r0, (torch.arange(k, dtype=torch.float32).view(1, k, 1, 1) + rows).expand(b, k, -1, w)


def test_a_predict_only_model_is_one_block_and_a_staged_model_reassembles():
    images, text = torch.zeros(2, 3, 8, 8), torch.zeros(3, 4)
    ((k0, r0, block),) = list(_Ramp().predict_blocks(images, text, (8, 8), (5, 6)))
    assert (k0, r0) == (0, 0) and block.shape == (2, 3, 5, 6)
    assert block[1, 2, 4, 0] == pytest.approx(2.04)
    banded = _Banded()
    blocks = list(banded.predict_blocks(images, text, (8, 8), (5, 6)))
    assert [(k, r, b.shape[2]) for k, r, b in blocks] == [(0, 0, 2), (0, 2, 2), (0, 4, 1)]
    assembled = banded.predict(images.double(), text, (8, 8), (5, 6))
    assert assembled.dtype == torch.float64  # the dtype of the images
    torch.testing.assert_close(assembled.float(), _Ramp().predict(images, text, (8, 8), (5, 6)))


def test_a_model_with_neither_predict_nor_a_text_stage_names_itself():
    class Empty(SegmentationModel):
        pass

    with pytest.raises(NotImplementedError, match="^Empty must implement text_stage or predict$"):
        list(Empty().predict_blocks(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2), (4, 4), (4, 4)))


def test_the_default_stages_serve_a_predict_only_model():
    model, images, text = _Ramp(), torch.zeros(1, 3, 4, 4), torch.zeros(2, 3)
    features = model.image_stage(images, (4, 4))
    assert features == {"images": images} and features["images"] is images  # no work, the inputs kept
    ((k0, r0, block),) = list(model.text_stage(features, text, (4, 4), (3, 5)))
    assert (k0, r0) == (0, 0) and torch.equal(block, model.predict(images, text, (4, 4), (3, 5)))
    assert model.input_protocol() == "detectron2" and model.preprocess_size(480, 640) == (480, 640)
    assert _Banded().preprocess_size(480, 640) == (640, 853)  # the default short-side 640 resize


def test_freeze_follows_the_one_rule():
    model = _Ramp()
    assert model.freeze() is model
    assert {n: p.requires_grad for n, p in model.named_parameters()} == {
        "head.weight": True, "head.bias": True, "body.weight": False, "body.bias": False,
    }
    assert [n for n, _ in model.trainable_parameters()] == ["head.weight", "head.bias"]
    plain = _Banded()
    plain.layer = torch.nn.Linear(2, 2)  # the base rule trains nothing (an inference-only family)
    assert plain.freeze().trainable_parameters() == []
    assert not any(p.requires_grad for p in plain.parameters())


def test_stage_mode_and_feature_bytes():
    check_stage_mode("CAT-Seg", {"mode": "whole"}, "whole")
    with pytest.raises(ConfigError) as info:
        check_stage_mode("CAT-Seg", {"mode": "whole"}, "slide")
    assert str(info.value) == (
        "CAT-Seg image features of inference='whole' cannot finish inference='slide'; "
        "compute them with the same options"
    )
    features = {
        "a": torch.zeros(2, 3),  # 6 float32: 24 bytes
        "b": [torch.zeros(4, dtype=torch.float16), (torch.zeros(1, dtype=torch.int64), 7)],  # 8 + 8
        "c": {"d": torch.zeros(3, dtype=torch.uint8), "mode": "whole"},  # 3
    }
    assert features_nbytes(features) == 24 + 8 + 8 + 3
