"""CLIP module, named architectures (published parameter counts) and the official checkpoint shapes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ovss.errors import ConfigError, UnknownModelError
from ovss.towers.clip import CLIP, CLIP_CONFIGS, ClipConfig, build_clip, clip_config
from ovss.towers.convnext import ConvNeXt
from ovss.towers.text import TextConfig
from ovss.towers.vit import VisionConfig, VisionTransformer
from ovss.weights.build import load_strict, mismatches
from ovss.weights.formats import open_clip, openai_clip
from tests.conftest import relative_error, strip_prefix
from tests.parity._common import meta_state_dict, read_manifest
from tests.towers._clip_reference import RefCLIP, randomize_


def _meta(name: str, **kw) -> CLIP:
    with torch.device("meta"):
        return build_clip(name, **kw)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("name", "total"),
    [
        ("ViT-B-16", 149_620_737),  # OpenAI ViT-B/16 (149.6M)
        ("ViT-L-14", 427_616_513),  # OpenAI ViT-L/14 (427.6M)
        ("ViT-L-14-336", 427_944_193),  # OpenAI ViT-L/14@336px (427.9M)
    ],
)
def test_published_parameter_counts(name, total):
    model = _meta(name)
    assert _count(model) == total
    assert isinstance(model.visual, VisionTransformer)
    # the split-q/k/v layout has exactly the same number of parameters
    assert _count(_meta(name, split_qkv=True)) == total


def test_convnext_towers_match_sed_manifest_counts():
    # param_counts_by_group of the official SED ConvNeXt-L manifest
    model = _meta("ConvNeXt-L-d-320")
    assert isinstance(model.visual, ConvNeXt)
    assert _count(model.visual) == 199_770_816
    assert _count(model.text) + model.logit_scale.numel() == 152_001_793


def _manifest(name: str) -> dict[str, torch.Tensor]:
    return strip_prefix(meta_state_dict(read_manifest(name)), "sem_seg_head.predictor.clip_model.")


@pytest.mark.parametrize(
    ("manifest", "arch", "fmt", "split"),
    [
        ("manifest_catseg_vit_b16.json", "ViT-B-16", openai_clip, True),
        ("manifest_catseg_vit_l14_336.json", "ViT-L-14-336", openai_clip, True),
        ("manifest_sed_convnext_b.json", "ConvNeXt-B-w-320", open_clip, None),
        ("manifest_sed_convnext_l.json", "ConvNeXt-L-d-320", open_clip, None),
    ],
)
def test_official_full_size_checkpoint_shapes_fit(manifest, arch, fmt, split):
    """Every CLIP key of the official full-size checkpoints converts and fits, shape for shape."""
    sd = fmt.convert(_manifest(manifest))
    assert sd, "no CLIP keys found in the manifest"
    model = _meta(arch, split_qkv=split)
    assert mismatches(model, sd) == ([], [], [])
    # and the packed layout of the same weights fits the packed model
    if split:
        assert mismatches(_meta(arch), fmt.convert(_manifest(manifest), split_qkv=False)) == ([], [], [])


def _tiny() -> ClipConfig:
    return ClipConfig(
        embed_dim=16,
        vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=4, output_dim=16),
        text=TextConfig(context_length=12, vocab_size=50, width=24, heads=3, layers=2, output_dim=16),
    )


def test_encode_and_forward_match_the_reference_clip():
    """Embeddings, their unit-norm versions and the zero-shot logits (``exp(logit_scale)`` times the
    cosine similarity) against the straightforward reference CLIP carrying the same weights."""
    ref = randomize_(RefCLIP(dict(image_size=32, patch=8, width=32, layers=2, heads=4, out_dim=16),
                             dict(context=12, vocab=50, width=24, layers=2, heads=3, out_dim=16)), 5).eval()
    with torch.no_grad():
        ref.logit_scale.fill_(2.5)
    model = load_strict(CLIP(_tiny()), openai_clip.convert(dict(ref.state_dict())), "reference").eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = torch.zeros(3, 12, dtype=torch.long)
    tokens[:, 0], tokens[0, 3], tokens[1, 5], tokens[2, 1] = 47, 49, 49, 49
    with torch.no_grad():
        ref_img, ref_txt = ref.encode_image(images), ref.encode_text(tokens)
        ref_logits = math.exp(2.5) * F.cosine_similarity(ref_img[:, None], ref_txt[None], dim=-1)
        assert relative_error(model.encode_image(images), ref_img) < 1e-5
        assert relative_error(model.encode_text(tokens), ref_txt) < 1e-5
        unit = model.encode_text(tokens, normalize=True)
        assert relative_error(unit, ref_txt / torch.linalg.vector_norm(ref_txt, dim=-1, keepdim=True)) < 1e-5
        logits = model(images, tokens)
    assert logits.shape == (2, 3) and relative_error(logits, ref_logits) < 1e-5
    assert abs(CLIP(_tiny()).logit_scale.exp().item() - 1 / 0.07) < 1e-3  # OpenAI's initial temperature


def test_config_validation_and_presets():
    cfg = clip_config("ViT-L-14-336")
    assert cfg.vision.image_size == 336 and cfg.image_size == 336
    assert ClipConfig.from_json(cfg.to_json()) == cfg
    assert clip_config("ConvNeXt-B-w-320").image_size == 320
    assert clip_config("ConvNeXt-B-w-320").text.act == "gelu"
    assert cfg.vision.act == "quick_gelu"
    # 0..255 statistics used by SAN / CAT-Seg / SED configs
    assert [round(v, 3) for v in cfg.mean_255] == [122.771, 116.746, 104.094]
    assert [round(v, 3) for v in cfg.std_255] == [68.501, 66.632, 70.323]
    names = {"ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ConvNeXt-B-w-320", "ConvNeXt-L-d-320"}
    assert set(CLIP_CONFIGS) == names
    for name in names:
        assert ClipConfig.from_json(clip_config(name).to_json()) == clip_config(name)
    with pytest.raises(ConfigError, match="exactly one image tower"):
        ClipConfig(text=TextConfig())
    with pytest.raises(ConfigError, match="embed_dim"):
        ClipConfig(embed_dim=640, vision=VisionConfig(), text=TextConfig())
    with pytest.raises(UnknownModelError, match="ViT-B-16"):
        build_clip("ViT-B-32")
