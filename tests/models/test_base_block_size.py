"""The block-size contract of ``SegmentationModel.predict_blocks`` (docs/architecture.md): a block's
values never depend on the block size. Every registered tiny model, in every inference mode, gives the
bit-identical score map under small budgets (blocks of 1, 2, 3, 5 classes or their rows) and under the
default ``BLOCK_ELEMENTS``."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ovss.models.base import BLOCK_ELEMENTS
from ovss.models.build import build_model
from ovss.vocab.templates import get_templates
from ovss.weights.registry import WEIGHTS
from tests.models._blocks import assemble

# faster geometry of the same code paths (small CLIP inputs and canvases)
_V1_SMALL = (
    "clip_resolution=64", "backbone_resolution=64", "resnet.depths=[1,1,1]", "slide_size=160",
    "slide_crop=96", "slide_stride=64", "pooling_test=[2,2]", "mmseg_scale=[256,128]",
)
OVERRIDES: dict[str, tuple[str, ...]] = {
    "san": (),
    "catseg": ("clip_resolution=192", "window_size=6"),
    "catseg_v1": _V1_SMALL,
    "sed": ("image_size=128",),
}
SED_OPTIONS = ({"fast": False}, {"fast": True, "topk": 2})
TINY = [spec for spec in WEIGHTS if spec.source_format == "random"]
K = 7  # classes; chunks of 3 of them hit F.interpolate's three-channel kernel


def _options(model: Any) -> list[dict[str, Any]]:
    modes = model.inference_modes
    return [{"inference": m} for m in modes] if modes else list(SED_OPTIONS)


def _model_and_text(spec: Any) -> tuple[Any, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(spec.config().override(*OVERRIDES[spec.family])).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # non-trivial values everywhere (some start at zero)
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        tokens = torch.randint(1, 1000, (len(get_templates(model.config.templates)), K, 8), generator=gen)
        tokens[..., 0], tokens[..., -1] = 49406, 49407
        return model, model.encode_text(tokens)


def test_every_tiny_family_is_covered() -> None:
    assert {spec.family for spec in TINY} == set(OVERRIDES)


@pytest.mark.parametrize("spec", TINY, ids=[spec.name for spec in TINY])
def test_block_values_never_depend_on_the_block_size(spec: Any) -> None:
    model, text = _model_and_text(spec)
    gen = torch.Generator().manual_seed(2)
    scale = 255.0 if model.config.pixel_std == (1.0, 1.0, 1.0) else 1.0  # CAT-Seg v1 takes 0..255 RGB
    images = torch.rand(1, 3, 64, 96, generator=gen) * scale
    # H0 + W0 > 128: F.interpolate's kernel then depends on the channel count (see resize_planes)
    image_size, output_size = (60, 90), (64, 96)
    unit = output_size[0] * output_size[1]  # one class of the map (B = 1)
    shape = (1, K, *output_size)
    for options in _options(model):
        with torch.no_grad():
            features = model.image_stage(images, image_size, **options)
            blocks = model.text_stage(features, text, image_size, output_size, BLOCK_ELEMENTS, **options)
            full = assemble(blocks, shape)
            for budget in (1, 2 * unit, 3 * unit, 5 * unit):
                blocks = list(model.text_stage(features, text, image_size, output_size, budget, **options))
                assert len(blocks) > 1, (options, budget)
                assert torch.equal(assemble(blocks, shape), full), (spec.name, options, budget)
