"""CAT-Seg v1 model: inference protocols, batching, padding, config validation, cv2 resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovss.errors import ConfigError
from ovss.layers.cv2_resize import cv2_resize_linear, mmcv_rescale_size
from ovss.models.catseg_v1 import CATSegV1, CATSegV1Config, catseg_v1_tiny, catseg_v1_tiny_mmseg
from ovss.towers.swin import SwinConfig
from tests.conftest import needs, parity_dir


def _small(base=catseg_v1_tiny, **changes) -> CATSegV1:
    """Tiny v1 at a 64 px input with one bottleneck per stage (fast)."""
    sets = [
        "clip_resolution=64",
        "backbone_resolution=64",
        "resnet.depths=[1,1,1]",
        "slide_size=160",
        "slide_crop=96",
        "slide_stride=64",
        "pooling_test=[2,2]",
        "mmseg_scale=[256,128]",
    ]
    torch.manual_seed(0)
    return CATSegV1(base().override(*sets, *[f"{k}={v}" for k, v in changes.items()])).eval()


def _text(model: CATSegV1, k: int = 3) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.nn.functional.normalize(torch.randn(k, 80, model.config.clip.embed_dim), dim=-1)


def test_batched_prediction_equals_one_image_at_a_time() -> None:
    for base, mode in ((catseg_v1_tiny, "whole"), (catseg_v1_tiny, "slide"), (catseg_v1_tiny_mmseg, "mmseg")):
        model = _small(base)
        text = _text(model)
        torch.manual_seed(2)
        images = torch.rand(2, 3, 64, 96) * 255
        both = model.predict(images, text, (64, 96), (40, 60), inference=mode)
        for i in range(2):
            one = model.predict(images[i : i + 1], text, (64, 96), (40, 60), inference=mode)
            torch.testing.assert_close(both[i : i + 1], one, rtol=1e-4, atol=1e-5)
        assert both.shape == (2, 3, 40, 60)
        if mode != "mmseg":
            assert float(both.min()) >= 0.0 and float(both.max()) <= 1.0  # sigmoid probabilities


def test_whole_mode_ignores_what_lies_in_the_padding() -> None:
    model = _small()
    text = _text(model)
    torch.manual_seed(3)
    images = torch.rand(1, 3, 64, 96) * 255
    a = model.predict(images, text, (50, 80), (50, 80), inference="whole")
    noisy = images.clone()
    noisy[..., 50:, :] = 255.0
    noisy[..., 80:] = 0.0
    b = model.predict(noisy, text, (50, 80), (50, 80), inference="whole")
    torch.testing.assert_close(a, b)


def test_slide_grids() -> None:
    model = CATSegV1.__new__(CATSegV1)
    assert model.slide_corners(640, 640, 384, 256) == [(0, 0), (0, 256), (256, 0), (256, 256)]
    # the catsegmm_a fixture's boxes (512 x 717, crop = stride = 384): last row/column on the border
    assert model.slide_corners(512, 717, 384, 384) == [(0, 0), (0, 333), (128, 0), (128, 333)]
    assert model.slide_corners(300, 300, 384, 384) == [(0, 0)]
    assert mmcv_rescale_size(120, 168, (2048, 512)) == (512, 717)


def test_training_forward_and_trainable_rule() -> None:
    model = _small().train()
    out = model(torch.rand(2, 3, 64, 64) * 255, _text(model, 4))
    assert out.shape == (2, 4, 16, 16)
    trainable = {n for n, _ in model.trainable_parameters()}
    assert "clip.visual.positional_embedding" in trainable
    assert "clip.visual.transformer.resblocks.0.attn.in_proj_weight" in trainable
    assert "clip.visual.transformer.resblocks.0.mlp.c_fc.weight" not in trainable
    assert not any(n.startswith("clip.text.") for n in trainable)
    assert "backbone.res2.0.conv1.weight" in trainable
    frozen = _small(backbone_lr_mult=0.0)
    assert not any(n.startswith("backbone.") for n, _ in frozen.trainable_parameters())


def test_wrong_text_and_bad_configs_are_refused() -> None:
    model = _small()
    with pytest.raises(ConfigError, match="P=80"):
        model.predict(torch.zeros(1, 3, 64, 64), torch.zeros(3, 1, 32), (64, 64), (64, 64))
    with pytest.raises(ConfigError, match="inference"):
        model.predict(torch.zeros(1, 3, 64, 64), _text(model), (64, 64), (64, 64), inference="tiles")
    with pytest.raises(ConfigError, match="exactly one guidance backbone"):
        CATSegV1Config(swin=SwinConfig())
    with pytest.raises(ConfigError, match="packed in_proj"):
        catseg_v1_tiny().override("clip.vision.split_qkv=true")
    with pytest.raises(ConfigError, match="backbone_resolution"):
        catseg_v1_tiny().override("backbone_resolution=512")
    cfg = catseg_v1_tiny_mmseg()
    assert CATSegV1Config.from_json(cfg.to_json()) == cfg


def test_option_and_text_errors_name_each_model() -> None:
    """The text check and the inference= parser are shared with CAT-Seg; messages stay per model."""
    from ovss.models.catseg import CATSeg, catseg_tiny

    cases = (
        (_small(), "CAT-Seg v1", "['whole', 'slide', 'mmseg']", "whole, slide or mmseg", "P=80",
         "'imagenet'"),
        (CATSeg(catseg_tiny()), "CAT-Seg", "['whole', 'slide']", "whole or slide", "P=1", "'catseg'"),
    )
    for model, label, modes, choices, p, templates in cases:
        with pytest.raises(ConfigError) as err:
            model.preprocess_size(64, 64, tiles=2)
        expected = f"unknown {label} option(s) ['tiles']; the only one is inference= ({choices})"
        assert str(err.value) == expected
        with pytest.raises(ConfigError) as err:
            model.preprocess_size(64, 64, inference="tiles")
        assert str(err.value) == f"{label} inference='tiles' is not one of {modes}"
        with pytest.raises(ConfigError) as err:
            model.predict(torch.zeros(1, 3, 64, 64), torch.zeros(3, 2, 32), (64, 64), (64, 64))
        expected = (
            f"{label} text must be (K, {p}, E) from encode_text, got (3, 2, 32); "
            f"embed the vocabulary with templates={templates}"
        )
        assert str(err.value) == expected


def test_cv2_resize_reproduces_the_mmseg_fixture_input() -> None:
    folder = parity_dir() / "catsegmm_a"
    needs(folder / "input.npy")
    from PIL import Image

    rgb = torch.from_numpy(np.asarray(Image.open(folder / "input.png").convert("RGB")).copy()).permute(
        2, 0, 1
    )
    ref = torch.from_numpy(np.load(folder / "input.npy"))[0]
    out = cv2_resize_linear(rgb, (512, 717))
    assert torch.equal(out, ref)
    float_bilinear = torch.nn.functional.interpolate(rgb[None].float(), (512, 717), mode="bilinear")[0]
    assert not torch.equal(float_bilinear.round(), ref)  # the fixed-point arithmetic matters
    assert torch.equal(cv2_resize_linear(rgb, (120, 168)), rgb.float())
    flat = torch.full((3, 7, 9), 77, dtype=torch.uint8)
    assert torch.equal(cv2_resize_linear(flat, (20, 31)), torch.full((3, 20, 31), 77.0))


def test_official_slide_is_the_fold_average_of_crops_and_the_global_view() -> None:
    model = _small()
    text = _text(model)
    torch.manual_seed(4)
    image = torch.rand(1, 3, 70, 90) * 255
    got = model.predict(image, text, (70, 90), (70, 90), inference="slide")
    c = model.config
    resize = lambda x, s: torch.nn.functional.interpolate(x, size=s, mode="bilinear")  # noqa: E731
    canvas = resize(image, (160, 160))
    total, count = torch.zeros(1, 3, 160, 160), torch.zeros(1, 1, 160, 160)
    with torch.no_grad():
        for y in (0, 64):
            for x in (0, 64):
                logits = model.logits(
                    *model.inputs(canvas[..., y : y + 96, x : x + 96]), text, c.pooling_test
                )
                total[..., y : y + 96, x : x + 96] += resize(logits, (96, 96)).sigmoid()
                count[..., y : y + 96, x : x + 96] += 1
        glob = model.logits(*model.inputs(resize(image, (96, 96))), text, c.pooling_test)
        glob = resize(resize(glob, (96, 96)).sigmoid(), (160, 160))
    expected = resize((total / count + glob) / 2, (70, 90))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_class_chunks_give_the_same_scores() -> None:
    from ovss.layers.resize import assemble_blocks

    model = _small(catseg_v1_tiny_mmseg)
    text = _text(model, 5)
    image = torch.rand(1, 3, 50, 70) * 255
    for mode in ("whole", "slide", "mmseg"):
        full = model.predict(image, text, (50, 70), (30, 40), inference=mode)
        blocks = list(model.predict_blocks(image, text, (50, 70), (30, 40), max_elements=1, inference=mode))
        assert len(blocks) == 5  # one class per block
        assert torch.equal(assemble_blocks(blocks, (1, 5, 30, 40), torch.float32, "cpu"), full)  # bit for bit
