"""CAT-Seg v1 re-query: the image stage keeps the aggregator's image-only inputs (projected guidance and
the decoder's guidance terms), the text stage only does per-class work, with the same numbers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ovss.api.segmenter import Segmenter
from ovss.layers.resize import assemble_blocks
from ovss.models.catseg_aggregator import DECODER_CHUNK, cost_volume
from ovss.models.catseg_v1 import CATSegV1, catseg_v1_tiny, catseg_v1_tiny_mmseg
from ovss.towers.swin import SwinConfig
from tests.models.test_catseg_v1 import _small, _text


def _swin() -> CATSegV1:
    """Tiny v1 with a Swin guidance backbone (res2..res4 at strides 4..16, 16/32/64 channels)."""
    swin = SwinConfig(embed_dim=16, depths=(1, 1, 1), heads=(1, 2, 4), window=4)
    cfg = catseg_v1_tiny().override(
        "clip_resolution=64", "backbone_resolution=64", "slide_size=160", "slide_crop=96", "slide_stride=64"
    )
    torch.manual_seed(0)
    return CATSegV1(dataclasses.replace(cfg, resnet=None, swin=swin)).eval()


CASES = {  # name: (model builder, protocol)
    "resnet-whole": (lambda: _small(), "whole"),
    "resnet-slide": (lambda: _small(), "slide"),
    "mmseg": (lambda: _small(catseg_v1_tiny_mmseg), "mmseg"),
    "swin-whole": (_swin, "whole"),
    "swin-slide": (_swin, "slide"),
}


def _count_image_work(model: CATSegV1) -> list[int]:
    """Counts every call of an image-only module or of a decoder block's guidance term."""
    calls = [0]

    def hook(*_args: object) -> None:
        calls[0] += 1

    agg = model.aggregator
    for module in (model.backbone, model.clip.visual, agg.appearance_proj, *agg.decoder_guidance_proj):
        module.register_forward_hook(hook)
    for block in agg.up_blocks():
        inner = block.guidance_term

        def counted(g: torch.Tensor, inner=inner) -> torch.Tensor:
            calls[0] += 1
            return inner(g)

        block.guidance_term = counted
    return calls


@pytest.mark.parametrize("case", list(CASES))
def test_text_stage_does_only_per_class_work_and_matches_predict(case: str) -> None:
    build, mode = CASES[case]
    model = build()
    torch.manual_seed(5)
    images, size, out = torch.rand(1, 3, 64, 96) * 255, (60, 90), (30, 45)
    with torch.no_grad():
        features = model.image_stage(images, size, inference=mode)
    for net in features["nets"]:  # no raw backbone maps in the handle
        assert set(net) == {"image", "prepared"}
        assert set(net["prepared"]) == {"appearance", "decoder", "terms"}
    calls = _count_image_work(model)
    for k in (3, 5):
        text = _text(model, k)
        with torch.no_grad():
            blocks = list(model.text_stage(features, text, size, out, inference=mode))
        assert calls[0] == 0, f"{case}: the text stage reran image-only work"
        got = assemble_blocks(blocks, (1, k, *out), torch.float32, "cpu")
        fresh = model.predict(images, text, size, out, inference=mode)
        assert torch.equal(got, fresh)
        calls[0] = 0


def test_prepared_guidance_gives_the_numbers_of_the_per_chunk_guidance() -> None:
    """The former text stage projected res4/res3/res2 and took each decoder block's guidance term per
    chunk of classes; from the image stage's prepared inputs the logits are the same, bit for bit."""
    model = _small()
    agg = model.aggregator
    torch.manual_seed(6)
    k = DECODER_CHUNK + 4  # more than one chunk of classes in the decoder
    image = torch.randn(2, model.config.clip.embed_dim, 4, 4)
    text = _text(model, k).unsqueeze(0).expand(2, -1, -1, -1)
    res2, res3, res4 = (torch.randn(2, c, s, s) for c, s in zip(model.config.backbone_channels, (16, 8, 4)))
    with torch.no_grad():
        prepared = agg.image_guidance(res4, (res3, res2))
        got = agg(image, text, None, None, (2, 2), prepared)
        cost = agg.embed_cost(cost_volume(image, text))
        cost = agg.aggregate(cost, agg.appearance_proj(res4), text, (2, 2))
        decoder = [proj(g) for proj, g in zip(agg.decoder_guidance_proj, (res3, res2))]
        ref = agg.decode(cost, decoder, [None, None], DECODER_CHUNK, channels_last=False)
    assert got.shape == (2, k, 16, 16) and torch.equal(got, ref)
    assert torch.equal(agg(image, text, res4, (res3, res2), (2, 2)), ref)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_swin_handle_finishes_any_vocabulary_like_a_fresh_predict(mode: str) -> None:
    """Through the Segmenter: a handle of a Swin-guided v1 gives a fresh predict's scores, bit for bit."""
    image = np.random.default_rng(7).integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    seg = Segmenter(_swin())
    seg.model.config.test_resize = dataclasses.replace(seg.model.config.test_resize, size=64)
    fresh = Segmenter(_swin())
    fresh.model.config.test_resize = seg.model.config.test_resize
    handle = seg.encode_image(image, inference=mode)
    for classes in ("cat; sofa; wall", "dog; grass"):
        ours = seg.predict(handle, classes, return_scores=True)
        ref = fresh.predict(image, classes, return_scores=True, inference=mode)
        np.testing.assert_array_equal(ours.scores, ref.scores)
        np.testing.assert_array_equal(ours.label_map, ref.label_map)
