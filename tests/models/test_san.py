"""SAN model: config, attention-bias mask, recognition, forward/predict contract, freezing, dtypes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ovss.errors import ConfigError
from ovss.models.san import SAN, SANConfig, _downsample, san_tiny, san_vit_b16, san_vit_l14
from ovss.towers.clip import convnext_b_w_320
from tests.models._blocks import check_blocks


@pytest.fixture(scope="module")
def model() -> SAN:
    torch.manual_seed(0)
    m = SAN(san_tiny()).eval()
    with torch.no_grad():  # make the decoder outputs non-trivial
        for p in m.side.parameters():
            p.mul_(3.0) if p.ndim > 1 else p.add_(0.1 * torch.randn_like(p))
    return m


def _tokens(p: int, k: int, length: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 49000, (p, k, length), generator=g)
    tokens[..., 0] = 49406
    tokens[..., -1] = 49407  # EOT = largest id
    return tokens


# ------------------------------------------------------------------------------------------ config
def test_builders_match_official_configs():
    b, l14 = san_vit_b16(), san_vit_l14()
    assert b == SANConfig()
    v = b.clip.vision
    assert (v.width, v.layers, v.image_size, b.clip.embed_dim) == (768, 12, 224, 512)
    assert (b.split, b.clip_resolution, b.attn_bias_heads) == (9, 0.5, 12)
    assert b.fusion_map == ((0, 0), (3, 1), (6, 2), (9, 3))
    assert (l14.clip.vision.patch_size, l14.clip.vision.image_size, l14.clip.vision.layers) == (14, 336, 24)
    assert (l14.split, l14.clip_resolution, l14.attn_bias_heads) == (18, 0.7, 16)
    assert l14.fusion_map == ((0, 0), (6, 1), (12, 2), (18, 3))
    for cfg in (b, l14):
        assert (cfg.side_width, cfg.side_depth, cfg.side_heads, cfg.num_queries) == (240, 8, 6, 100)
        assert (cfg.deep_supervision, cfg.embed_channels, cfg.mlp_channels) == ((7, 8), 256, 256)
        assert (cfg.templates, cfg.size_divisibility) == ("vild", 32)
        assert cfg.synonyms == "verbatim" and cfg.test_resize.size == 640
        assert SANConfig.from_json(cfg.to_json()) == cfg
    assert san_tiny().override("split=4").split == 4


@pytest.mark.parametrize(
    "override,field",
    [("split=5", "split"), ("split=0", "split"), ("attn_bias_heads=3", "attn_bias_heads"),
     ("attn_bias_layers=3", "attn_bias_layers"), ("fusion_map=[[4, 0]]", "fusion_map"),
     ("fusion_map=[[0, 1], [1, 1]]", "fusion_map"), ("deep_supervision=[4, 3]", "deep_supervision"),
     ("deep_supervision=[5]", "deep_supervision"), ("side_width=50", "side_width"),
     ("clip_resolution=0", "clip_resolution"), ("num_queries=0", "num_queries")],
)
def test_config_validation_names_the_field(override, field):
    with pytest.raises(ConfigError, match=field):
        san_tiny().override(override)


def test_config_refuses_convnext_clip():
    with pytest.raises(ConfigError, match="ViT"):
        SANConfig(clip=convnext_b_w_320())


# ------------------------------------------------------------------------------- attention bias
def test_rec_attn_mask_blocks(model):
    q, grid = 10, (2, 3)
    bias = torch.randn(2, 4, q, 4, 6)
    mask = model.rec_attn_mask(bias, grid, torch.float64)
    t = q + 1 + 6
    assert mask.shape == (2, 4, t, t) and mask.dtype == torch.float64
    pooled = F.adaptive_max_pool2d(bias.flatten(1, 2), grid).reshape(2, 4, q, 6).double()
    eye = torch.eye(q, dtype=torch.bool)
    assert (mask[:, :, :q, :q][:, :, eye] == 0).all() and (mask[:, :, :q, :q][:, :, ~eye] == -100).all()
    assert (mask[:, :, :q, q] == -100).all()
    assert torch.equal(mask[:, :, :q, q + 1 :], pooled)
    assert (mask[:, :, q:, :q] == -100).all() and (mask[:, :, q:, q:] == 0).all()
    one_head = model.rec_attn_mask(bias[:, :1], grid, torch.float32)  # NUM_HEADS = 1 is broadcast
    assert one_head.shape == (2, 4, t, t) and torch.equal(one_head[:, 3], one_head[:, 0])


def test_recognition_keeps_clip_path_and_queries_independent(model):
    torch.manual_seed(1)
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        records, grid = model.clip_features(images)
        tokens = records[model.config.split]
        bias = 3 * torch.randn(1, 4, 10, 4, 6)
        regions = model.recognize(tokens, [bias], grid)
        assert regions.shape == (1, 10, 32)
        torch.testing.assert_close(regions.norm(dim=-1), torch.ones(1, 10))
        # queries do not see each other: permuting the biases permutes the embeddings
        perm = torch.randperm(10)
        torch.testing.assert_close(model.recognize(tokens, [bias[:, :, perm]], grid), regions[:, perm])
        # a query with a zero bias is the CLS token run through the last blocks without the others
        zero = model.recognize(tokens, [torch.zeros(1, 4, 10, 4, 6)], grid)
        x = torch.cat([tokens[:, :1], tokens], dim=1)
        alone = torch.zeros(1, 1, x.shape[1], x.shape[1])
        alone[..., 0, 1] = alone[..., 1:, 0] = -100.0
        solo = model.clip.visual.run_blocks(x, model.config.split, None, attn_mask=alone)
        torch.testing.assert_close(zero[:, 3], F.normalize(model.clip.visual.head(solo[:, 0]), dim=-1))


# ----------------------------------------------------------------------------- forward / predict
def test_forward_outputs_train_and_eval(model):
    images, text = torch.randn(2, 3, 64, 96), F.normalize(torch.randn(5, 32), dim=-1)
    with torch.no_grad():
        out = model(images, text)
        assert out["pred_masks"].shape == (2, 10, 4, 6) and out["pred_logits"].shape == (2, 10, 6)
        assert out["aux_outputs"] == []
        model.train()
        try:
            train = model(images, text)
        finally:
            model.eval()
    assert len(train["aux_outputs"]) == 1 and train["aux_outputs"][0]["pred_logits"].shape == (2, 10, 6)
    torch.testing.assert_close(train["pred_masks"], out["pred_masks"])
    assert not torch.allclose(train["aux_outputs"][0]["pred_masks"], out["pred_masks"])


def test_predict_is_the_official_semantic_inference(model):
    images, text = torch.randn(1, 3, 64, 96), F.normalize(torch.randn(5, 32), dim=-1)
    with torch.no_grad():
        out = model(images, text)
        scores = model.predict(images, text, (50, 70), (25, 35))
    masks = F.interpolate(out["pred_masks"], size=(64, 96), mode="bilinear")[..., :50, :70]
    masks = F.interpolate(masks, size=(25, 35), mode="bilinear").sigmoid()
    probs = out["pred_logits"].softmax(-1)[..., :5]
    expected = (probs[0, :, :, None, None] * masks[0, :, None]).sum(0)
    assert scores.shape == (1, 5, 25, 35)
    torch.testing.assert_close(scores[0], expected)
    assert scores.std() > 0
    with pytest.raises(ConfigError, match=r"SAN inference='slide' is not one of \['d2', 'mmseg'\]"):
        model.predict(images, text, (64, 96), (64, 96), inference="slide")
    with pytest.raises(ConfigError) as err:
        model.predict(images, text, (64, 96), (64, 96), fast=True)
    assert str(err.value) == "unknown SAN option(s) ['fast']; the only one is inference= (d2 or mmseg)"


@pytest.mark.parametrize(("image_size", "output_size"), [((64, 96), (64, 96)), ((50, 70), (47, 33)),
                                                         ((50, 70), (121, 150))])
def test_mmseg_protocol_forms_class_scores_at_the_padded_size_then_resizes(model, image_size, output_size):
    """mmseg's order: sigmoid of the masks at the padded size, summed with the class probabilities,
    cropped, then the class scores resized; blocks of any budget reassemble to it bit for bit."""
    images, text = torch.randn(2, 3, 64, 96), F.normalize(torch.randn(4, 32), dim=-1)
    full = check_blocks(model, images, text, image_size, output_size, inference="mmseg")
    with torch.no_grad():
        out = model(images, text)
        d2 = model.predict(images, text, image_size, output_size, inference="d2")
    masks = F.interpolate(out["pred_masks"], size=(64, 96), mode="bilinear").sigmoid()
    seg = torch.einsum("bqk,bqhw->bkhw", out["pred_logits"].softmax(-1)[..., :-1], masks)
    seg = seg[..., : image_size[0], : image_size[1]]
    expected = F.interpolate(seg, size=output_size, mode="bilinear", align_corners=False)
    assert ((full - expected).norm() / expected.norm()) < 1e-6
    if output_size != (64, 96):  # the orders differ as soon as anything is resized
        assert ((d2 - expected).norm() / expected.norm()) > 1e-3


def test_mmseg_protocol_sizes_and_config():
    from ovss.models.san import san_vit_b16_mmseg, san_vit_l14_mmseg

    m = SAN(dataclasses.replace(san_tiny(), inference="mmseg"))
    assert m.input_protocol() == "mmseg" and m.input_protocol(inference="d2") == "detectron2"
    # mmseg rounds twice (ResizeShortestEdge, then imrescale): the capped long side differs from d2's
    assert m.preprocess_size(101, 500) == (517, 2559)
    assert m.preprocess_size(101, 500, inference="d2") == (517, 2560)
    assert m.preprocess_size(480, 640) == (640, 853)
    for cfg, base in ((san_vit_b16_mmseg(), san_vit_b16()), (san_vit_l14_mmseg(), san_vit_l14())):
        assert cfg.inference == "mmseg" and cfg.pixel_mean == (122.7709, 116.7460, 104.0937)
        d2 = dataclasses.replace(cfg, inference="d2", pixel_mean=base.pixel_mean, pixel_std=base.pixel_std)
        assert d2 == base
    with pytest.raises(ConfigError, match="SANConfig.inference='x' is not one of"):
        dataclasses.replace(san_tiny(), inference="x")


@pytest.mark.parametrize(("image_size", "output_size"), [((64, 96), (64, 96)), ((50, 70), (47, 33))])
def test_predict_blocks_are_row_bands_of_predict(model, image_size, output_size):
    images, text = torch.randn(2, 3, 64, 96), F.normalize(torch.randn(4, 32), dim=-1)
    full = check_blocks(model, images, text, image_size, output_size)
    one_row = 2 * (10 + 4) * output_size[1]  # B x (Q + K) x W0
    with torch.no_grad():
        bands = list(model.predict_blocks(images, text, image_size, output_size, one_row))
        out = model(images, text)
    assert [(k0, r0, b.shape[2]) for k0, r0, b in bands][:2] == [(0, 0, 8), (0, 8, 8)]  # one 8-row group
    # the chained official resizes, to float32 rounding (the two resizes and the crop are composed)
    masks = F.interpolate(out["pred_masks"], size=(64, 96), mode="bilinear")
    masks = masks[..., : image_size[0], : image_size[1]]
    masks = F.interpolate(masks, size=output_size, mode="bilinear").sigmoid()
    expected = torch.einsum("bqk,bqhw->bkhw", out["pred_logits"].softmax(-1)[..., :-1], masks)
    assert ((full - expected).norm() / expected.norm()) < 1e-6


def test_single_image_class_product_matches_the_batched_path(model):
    """An image alone gets the scores it gets inside a batch (the class product is per image)."""
    images, text = torch.randn(2, 3, 64, 96), F.normalize(torch.randn(4, 32), dim=-1)
    batched = check_blocks(model, images, text, (50, 70), (47, 33))
    for i in range(2):
        single = check_blocks(model, images[i : i + 1], text, (50, 70), (47, 33))
        assert ((single[0] - batched[i]).norm() / batched[i].norm()) < 1e-6


def test_padding_does_not_change_the_valid_region_path(model):
    # the mask logits used inside the valid region come from the same computation: cropping happens
    # after upsampling to the padded size (spec 1.9), so predict only depends on image_size there.
    images, text = torch.randn(1, 3, 64, 64), F.normalize(torch.randn(3, 32), dim=-1)
    with torch.no_grad():
        full = model.predict(images, text, (64, 64), (64, 64))
        crop = model.predict(images, text, (32, 64), (32, 64))
    torch.testing.assert_close(crop, full[..., :32, :])


def test_encode_text_template_mean(model):
    tokens = _tokens(3, 4)
    with torch.no_grad():
        text = model.encode_text(tokens)
        per = torch.stack([F.normalize(model.clip.text(t), dim=-1) for t in tokens])
    torch.testing.assert_close(text, F.normalize(per.mean(0), dim=-1))
    assert text.shape == (4, 32)
    many = _tokens(1, 600, seed=1)  # more prompts than one chunk
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(many)[550:], model.encode_text(many[:, 550:]))
    classifier = model.classifier(text)
    assert classifier.shape == (5, 32)
    torch.testing.assert_close(classifier[-1], F.normalize(model.bg_embed.detach(), dim=0))


# ---------------------------------------------------------------------------- structure / training
def test_one_clip_tower_is_sliced_not_copied(model):
    names = [n for n in model.state_dict() if ".resblocks." in n and n.startswith("clip.visual")]
    blocks = {n.split(".")[4] for n in names}
    assert blocks == {str(i) for i in range(model.config.clip.vision.layers)}
    assert sum(1 for m in model.modules() if type(m).__name__ == "VisionTransformer") == 1


def test_freeze_trains_only_sans_parameters():
    m = SAN(san_tiny())
    names = {n for n, _ in m.trainable_parameters()}
    expected = {n for n, _ in m.named_parameters() if n.startswith("side.")}
    assert names == expected | {"bg_embed", "clip.visual.positional_embedding"}
    for p in m.parameters():
        p.requires_grad_(True)
    assert {n for n, _ in m.freeze().trainable_parameters()} == names


def test_full_size_parameter_counts_on_meta():
    with torch.device("meta"):
        b = SAN(san_vit_b16())
    assert sum(p.numel() for _, p in b.trainable_parameters()) == 8_370_866  # spec 2.4 / official log
    assert sum(p.numel() for p in b.parameters()) == 157_840_307


def test_bf16_forward_runs_and_is_close(model):
    images, tokens = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)), _tokens(2, 3)
    with torch.no_grad():
        ref = model.predict(images, model.encode_text(tokens), (64, 64), (32, 32))
        m16 = SAN(san_tiny()).eval()
        m16.load_state_dict(model.state_dict())
        m16 = m16.to(torch.bfloat16)
        got = m16.predict(images.bfloat16(), m16.encode_text(tokens), (64, 64), (32, 32))
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    assert (got.float() - ref).norm() / ref.norm() < 0.05
    with torch.no_grad():  # the full-resolution work (resize, sigmoid, class sum) is float32 anyway
        _, _, block = next(m16.predict_blocks(images.bfloat16(), m16.encode_text(tokens), (64, 64), (32, 32)))
    assert block.dtype == torch.float32


@pytest.mark.parametrize("size,grid", [((40, 54), (20, 27)), ((12, 9), (4, 3)), ((13, 9), (4, 3))])
def test_max_downsampling_of_the_bias_equals_adaptive_max_pooling(size, grid):
    """Whole windows take strided maxima (15x faster at SAN's 40x54 -> 20x27); other sizes and
    methods the pooling ops themselves: the same numbers bit for bit, on strided input too."""
    bias = torch.randn(2, 5, 3, *size).permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    ref = F.adaptive_max_pool2d(bias.flatten(1, 2), grid).unflatten(1, (5, 3))
    assert torch.equal(_downsample(bias, grid, "max").reshape(ref.shape), ref)
    avg = _downsample(bias, grid, "avg").reshape(ref.shape)
    assert torch.equal(avg, F.adaptive_avg_pool2d(bias.flatten(1, 2), grid).unflatten(1, (5, 3)))
