"""CAT-Seg (CVPR 2024): config, aggregator blocks against naive references, class budget, dense CLIP,
inference protocols (whole-image quirk, sliding-window geometry), training rule, bf16.

Numerical parity with the official code is in tests/parity/test_catseg_parity.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ovss.errors import ConfigError
from ovss.layers.window import shift_window_mask
from ovss.models.catseg import (
    CATSeg,
    CATSegConfig,
    catseg_tiny,
    catseg_vit_b16,
    catseg_vit_l14,
)
from ovss.models.catseg_aggregator import (
    Aggregator,
    AggregatorDims,
    ClassAggregation,
    UpBlock,
    linear_attention,
)
from ovss.models.catseg_spatial import SpatialAggregation
from tests.conftest import relative_error
from tests.models._blocks import check_blocks


def _small() -> CATSegConfig:
    """Tiny model at 192 px: a 12 x 12 cost grid with 6 x 6 windows (shift 3), for fast tests."""
    return catseg_tiny().override("clip_resolution=192", "window_size=6")


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values everywhere (the padding tokens start at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def _tokens(p: int, k: int, length: int = 8, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 1000, (p, k, length), generator=gen)
    tokens[..., 0], tokens[..., -1] = 49406, 49407
    return tokens


# ------------------------------------------------------------------------------------------- config
def test_builders_follow_the_official_configs() -> None:
    b, large = catseg_vit_b16(), catseg_vit_l14()
    assert (b.clip_resolution, b.feature_resolution, b.guidance_layers) == (384, 24, (4, 8))
    assert (large.clip_resolution, large.feature_resolution, large.guidance_layers) == (336, 24, (8, 16))
    assert (b.clip.vision.width, b.clip.embed_dim, large.clip.vision.width, large.clip.embed_dim) == (
        768, 512, 1024, 768)
    for cfg in (b, large):
        assert (cfg.hidden_dim, cfg.num_heads, cfg.num_layers) == (128, 4, 2)
        assert (cfg.window_size, cfg.pad_len) == (12, 256)
        assert (cfg.decoder_dims, cfg.guidance_dims) == ((64, 32), (256, 128))
        assert cfg.guidance_proj_dims == (32, 16)
        assert (cfg.pooling_train, cfg.pooling_test, cfg.attention) == ((2, 2), (1, 1), "linear")
        assert (cfg.templates, cfg.synonyms, cfg.slide_stride) == ("catseg", "first", 256)
        assert cfg.clip.vision.split_qkv and cfg.clip.text.split_qkv


def test_config_json_round_trip_and_override() -> None:
    cfg = catseg_vit_l14()
    assert CATSegConfig.from_json(cfg.to_json()) == cfg
    assert cfg.override("pad_len=3", "inference=whole").pad_len == 3


@pytest.mark.parametrize(
    "override, field",
    [
        ("window_size=5", "window_size"),
        ("decoder_dims=[8, 16]", "decoder_dims"),
        ("guidance_layers=[4, 9]", "guidance_layers"),  # block 9 of 9 is the dense block
        ("slide_overlap=0.5", "slide"),
        ("clip.vision.split_qkv=false", "split_qkv"),
        ("pooling_train=[5, 5]", "pooling_train"),
        ("guidance_proj_dims=[32, 8]", "guidance_proj_dims"),
    ],
)
def test_invalid_configs_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        catseg_tiny().override(override)


# ------------------------------------------------------------------------------------- primitives
def test_linear_attention_matches_the_formula_and_folds_padding_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    sim = fq @ fk.transpose(-1, -2)  # (N, heads, L, S)
    expected = (sim @ v) / (sim.sum(-1, keepdim=True) + 1e-6)
    assert torch.allclose(linear_attention(q, k, v), expected, rtol=1e-12, atol=1e-12)
    kp, vp = (torch.randn(1, 3, 1, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    k_all, v_all = torch.cat([k, kp.expand(2, 3, 7, 4)], 2), torch.cat([v, vp.expand(2, 3, 7, 4)], 2)
    full = linear_attention(q, k_all, v_all)
    assert torch.allclose(linear_attention(q, k, v, pad=(kp, vp, 7)), full, rtol=1e-12, atol=1e-12)


def _reference_class_aggregation(mod: ClassAggregation, cost, guidance, pool):
    """The official algorithm, literally: (B, C, T, H, W) layout, padding tokens materialised."""
    x = cost.permute(0, 4, 1, 2, 3)
    b, c, t, h, w = x.shape
    xp = F.avg_pool2d(x.transpose(1, 2).reshape(b * t, c, h, w), pool)
    hp, wp = xp.shape[-2:]
    xp = xp.reshape(b, t, c, hp, wp).transpose(1, 2)
    n = mod.pad_len - t
    g = guidance
    if n > 0:
        xp = torch.cat([xp, mod.pad_token.reshape(1, c, 1, 1, 1).expand(b, c, n, hp, wp)], dim=2)
        g = torch.cat([g, mod.pad_guidance.expand(b, n, -1)], dim=1)
    s = xp.shape[2]
    seq = xp.permute(0, 3, 4, 2, 1).reshape(b * hp * wp, s, c)
    gg = g[:, None].expand(b, hp * wp, s, g.shape[-1]).reshape(b * hp * wp, s, -1)
    y = mod.norm1(seq)
    heads = mod.attn.heads
    q = mod.attn.q(torch.cat([y, gg], -1)).reshape(-1, s, heads, c // heads)
    k = mod.attn.k(torch.cat([y, gg], -1)).reshape(-1, s, heads, c // heads)
    v = mod.attn.v(y).reshape(-1, s, heads, c // heads)
    if mod.attn.kind == "linear":
        sim = torch.einsum("nlhd,nshd->nhls", F.elu(q) + 1, F.elu(k) + 1)
        att = sim / (sim.sum(-1, keepdim=True) + 1e-6)
    else:
        att = torch.softmax(torch.einsum("nlhd,nshd->nhls", q, k) / math.sqrt(c // heads), dim=-1)
    seq = seq + torch.einsum("nhls,nshd->nlhd", att, v).reshape(-1, s, c)
    seq = seq + mod.mlp(mod.norm2(seq))
    out = seq.reshape(b, hp, wp, s, c)[:, :, :, :t].permute(0, 3, 4, 1, 2).reshape(b * t, c, hp, wp)
    out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=True)
    return cost + out.reshape(b, t, c, h, w).permute(0, 1, 3, 4, 2)


def _reference_spatial_aggregation(mod: SpatialAggregation, cost, guidance):
    """The official Swin path, literally: guidance repeated per class and concatenated before the
    shift and window partition, q/k on the concatenation, explicit softmax attention per window."""
    b, t, h, w, c = cost.shape
    g = mod.guidance_norm(guidance.permute(0, 2, 3, 1))
    g = g[:, None].expand(b, t, h, w, -1).reshape(b * t, h, w, -1)
    x = cost.reshape(b * t, h, w, c)
    for blk in mod.blocks:
        y = torch.cat([blk.norm1(x), g], dim=-1)
        win, shift = blk.window, blk.shift
        if shift:
            y = torch.roll(y, (-shift, -shift), (1, 2))
        n = y.shape[0]
        y = y.reshape(n, h // win, win, w // win, win, -1).permute(0, 1, 3, 2, 4, 5)
        y = y.reshape(n, -1, win * win, y.shape[-1])
        heads, d = blk.attn.heads, c // blk.attn.heads
        q = blk.attn.q(y).reshape(*y.shape[:3], heads, d).transpose(2, 3)
        k = blk.attn.k(y).reshape(*y.shape[:3], heads, d).transpose(2, 3)
        v = blk.attn.v(y[..., :c]).reshape(*y.shape[:3], heads, d).transpose(2, 3)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d)
        if shift:
            logits = logits + shift_window_mask(h, w, win, shift, logits.dtype)[None, :, None]
        out = (logits.softmax(-1) @ v).transpose(2, 3).reshape(n, -1, win * win, c)
        out = blk.attn.proj(out).reshape(n, h // win, w // win, win, win, c).permute(0, 1, 3, 2, 4, 5)
        out = out.reshape(n, h, w, c)
        if shift:
            out = torch.roll(out, (shift, shift), (1, 2))
        x = x + out
        x = x + blk.mlp(blk.norm2(x))
    return x.reshape(b, t, h, w, c)


def test_spatial_aggregation_equals_the_official_algorithm() -> None:
    """Guidance projected once per image, 4-D SDPA per window: same numbers as the literal form."""
    torch.manual_seed(0)
    mod = _randomize(SpatialAggregation(16, 8, 4, (12, 12), 6), seed=3).double()
    cost = torch.randn(2, 3, 12, 12, 16, dtype=torch.float64)
    guidance = torch.randn(2, 8, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        got, ref = mod(cost, guidance), _reference_spatial_aggregation(mod, cost, guidance)
    assert mod.blocks[1].shift == 3 and (got - cost).abs().max() > 1e-2
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_spatial_aggregation_bf16_window_forms_are_bounded_by_the_exact_path(monkeypatch) -> None:
    """bf16 on the CPU: the shifted (masked) windows run as one batched matmul attention; the
    per-window SDPA form and float64 agree with it within bf16 rounding."""
    import ovss.models.catseg_spatial as agg

    torch.manual_seed(0)
    mod = _randomize(SpatialAggregation(16, 8, 4, (12, 12), 6), seed=3).double()
    cost = torch.randn(2, 3, 12, 12, 16, dtype=torch.float64)
    guidance = torch.randn(2, 8, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        ref = mod(cost, guidance)
        mod16, cost16, guidance16 = mod.bfloat16(), cost.bfloat16(), guidance.bfloat16()
        calls, real = [], agg.matmul_attention
        monkeypatch.setattr(agg, "matmul_attention", lambda *a: calls.append(1) or real(*a))
        batched = mod16(cost16, guidance16)
        assert len(calls) == 1  # the shifted block: one call for all windows (the other has no mask)
        monkeypatch.setattr(agg, "prefers_matmul", lambda q, k: False)
        per_window = mod16(cost16, guidance16)
    for got in (batched, per_window):
        assert got.dtype == torch.bfloat16
        assert relative_error(got.double() - cost, ref - cost) < 3e-2


@pytest.mark.parametrize("kind", ["linear", "full"])
@pytest.mark.parametrize("pool, pad_len", [((1, 1), 16), ((2, 2), 16), ((2, 2), 0), ((1, 1), 5)])
def test_class_aggregation_equals_the_official_algorithm(kind: str, pool, pad_len: int) -> None:
    mod = _randomize(ClassAggregation(8, 4, 2, kind, pad_len).double())
    gen = torch.Generator().manual_seed(1)
    cost = torch.randn(2, 5, 4, 6, 8, generator=gen, dtype=torch.float64)
    guidance = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        ours = mod(cost, guidance, pool)
        ref = _reference_class_aggregation(mod, cost, guidance, pool)
    assert relative_error(ours, ref) < 1e-12
    # The quirk: at pool 1 the output is 2x + delta, not x + delta.
    if pool == (1, 1):
        assert relative_error(ours - 2 * cost, ref - 2 * cost) < 1e-12


def _aggregator(pad_len: int) -> Aggregator:
    dims = AggregatorDims(
        embed_dim=16, prompt_channels=1, hidden_dim=16, appearance_proj_dim=8, text_proj_dim=8,
        guidance_dims=(12, 6), guidance_proj_dims=(4, 4), decoder_dims=(16, 16), num_layers=1, heads=2,
        resolution=(12, 12), window=6, attention="linear",
    )
    return _randomize(Aggregator(dims, pad_len)).eval()


def test_class_budget_keeps_the_top_classes_per_image_and_fills_the_rest_with_minus_100() -> None:
    agg = _aggregator(pad_len=3)
    gen = torch.Generator().manual_seed(2)
    text = F.normalize(torch.randn(1, 6, 1, 16, generator=gen), dim=-1).expand(2, -1, -1, -1)
    image = torch.randn(2, 16, 12, 12, generator=gen)
    chosen = [[0, 2, 5], [1, 2, 3]]  # plant a perfect match of these classes in each image
    for b, classes in enumerate(chosen):
        for j, c in enumerate(classes):
            image[b, :, 0, j] = 3.0 * text[0, c, 0]
    guidance = (torch.randn(2, 12, 24, 24, generator=gen), torch.randn(2, 6, 48, 48, generator=gen))
    with torch.no_grad():
        logits = agg(image, text, guidance)
        assert logits.shape == (2, 6, 48, 48)
        for b, classes in enumerate(chosen):
            others = [c for c in range(6) if c not in classes]
            assert (logits[b, others] == -100.0).all()
            # T == pad_len: no top-k and no padding; must equal the kept classes' logits.
            alone = agg(image[b : b + 1], text[b : b + 1, classes], tuple(g[b : b + 1] for g in guidance))
            assert relative_error(logits[b, classes], alone[0]) < 1e-5


@pytest.mark.parametrize(
    "name, value",
    [
        ("DECODER_CHUNK", 3),  # 2 images: one class per decoder pass
        ("DECODER_CHUNK", 6),  # 3 classes per pass: chunks of 3, 3 and 1
        ("SPATIAL_CHUNK", 4),  # 2 classes per Swin pass
        ("PIXEL_CHUNK_ELEMENTS", 2 * 7 * 16 * 5),  # 5 pixels per class-attention pass, a ragged tail
    ],
)
def test_class_and_pixel_chunks_do_not_change_the_logits(monkeypatch, name: str, value: int) -> None:
    import ovss.models.catseg_aggregator as aggregator
    import ovss.models.catseg_spatial as spatial

    modules = {"DECODER_CHUNK": aggregator, "SPATIAL_CHUNK": spatial, "PIXEL_CHUNK_ELEMENTS": aggregator}
    agg = _randomize(_aggregator(pad_len=0), seed=4)
    gen = torch.Generator().manual_seed(3)
    text = F.normalize(torch.randn(2, 7, 1, 16, generator=gen), dim=-1)
    image = torch.randn(2, 16, 12, 12, generator=gen)
    guidance = (torch.randn(2, 12, 24, 24, generator=gen), torch.randn(2, 6, 48, 48, generator=gen))
    with torch.no_grad():
        monkeypatch.setattr(aggregator, "DECODER_CHUNK", 10**6)
        monkeypatch.setattr(spatial, "SPATIAL_CHUNK", 10**6)
        monkeypatch.setattr(aggregator, "PIXEL_CHUNK_ELEMENTS", 10**9)
        whole = agg(image, text, guidance)  # every class and pixel in one pass
        monkeypatch.setattr(modules[name], name, value)
        chunked = agg(image, text, guidance)
    assert whole.shape == (2, 7, 48, 48) and whole.std() > 0
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


def test_the_decoder_folds_each_up_block_once_per_pass_not_per_chunk(monkeypatch) -> None:
    """The folded up-conv kernel (a convolution of the weights, a few ms at full size) is made once per
    block and forward pass, however many chunks of classes the decoder runs."""
    import ovss.models.catseg_aggregator as aggregator
    import ovss.models.catseg_decoder as decoder

    calls = []
    fold = decoder.fold_up_kernel
    monkeypatch.setattr(decoder, "fold_up_kernel", lambda *a: calls.append(1) or fold(*a))
    monkeypatch.setattr(aggregator, "DECODER_CHUNK", 3)  # 2 images x 7 classes: 7 chunks of one class
    agg = _aggregator(pad_len=0)
    gen = torch.Generator().manual_seed(3)
    text = F.normalize(torch.randn(2, 7, 1, 16, generator=gen), dim=-1)
    guidance = (torch.randn(2, 12, 24, 24, generator=gen), torch.randn(2, 6, 48, 48, generator=gen))
    with torch.no_grad():
        agg(torch.randn(2, 16, 12, 12, generator=gen), text, guidance)
    assert len(calls) == len(agg.up_blocks()) == 2


def test_up_block_split_guidance_conv_equals_the_concatenation() -> None:
    """conv1(cat[up(x), g]) computed as one folded transposed conv of x plus conv(g) and the up-conv
    bias's part once per image, channels-last or not."""
    block = _randomize(UpBlock(16, 16, 6), seed=5)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2 * 3, 16, 5, 7, generator=gen)  # 2 images x 3 classes
    g = torch.randn(2, 6, 10, 14, generator=gen)

    def reference(x: torch.Tensor) -> torch.Tensor:  # the official Up: explicit per-class concatenation
        up = block.up(x)
        y = torch.cat([up, g.repeat_interleave(3, dim=0)], dim=1)
        y = F.relu(block.norm1(block.conv1(y)))
        return F.relu(block.norm2(block.conv2(y)))

    with torch.no_grad():
        expected = reference(x)
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            assert relative_error(block(inp, g), expected) < 1e-6
        term = block.guidance_term(g)
        assert relative_error(block(x, g, term), expected) < 1e-6


def test_padding_below_the_budget_changes_the_result() -> None:
    agg = _aggregator(pad_len=8)
    gen = torch.Generator().manual_seed(3)
    args = (torch.randn(1, 16, 12, 12, generator=gen), torch.randn(1, 4, 1, 16, generator=gen),
            (torch.randn(1, 12, 24, 24, generator=gen), torch.randn(1, 6, 48, 48, generator=gen)))
    with torch.no_grad():
        padded = agg(*args)
        agg.pad_len = 0
        for layer in agg.layers:
            layer.classes.pad_len = 0
        assert relative_error(agg(*args), padded) > 1e-3


def test_encode_text_layout_and_norm() -> None:
    model = _randomize(CATSeg(_small())).eval()
    tokens = _tokens(2, 3)
    with torch.no_grad():
        text = model.encode_text(tokens)
        assert text.shape == (3, 2, 32)
        assert torch.allclose(text.norm(dim=-1), torch.ones(3, 2))
        direct = F.normalize(model.clip.encode_text(tokens[1, 2:3]), dim=-1)[0]
        assert torch.allclose(text[2, 1], direct, atol=1e-6)


# ------------------------------------------------------------------------------------------ protocols
def _stub_network(model: CATSeg, logits) -> None:
    """Replace the network (image stage + aggregator) by ``logits(images, text, pool)``."""
    model.image_maps = lambda images: {"image": images}
    model.aggregate = lambda maps, text, pool: logits(maps["image"], text, pool)


def _stubbed(model: CATSeg, seen: list):
    """Replace the network by per-view constant logits (view index - 2); record its inputs."""

    def logits(images: torch.Tensor, text: torch.Tensor, pool) -> torch.Tensor:
        seen.append(images)
        n, grid = images.shape[0], 4 * model.config.feature_resolution
        values = (torch.arange(n, dtype=images.dtype) - 2.0).view(n, 1, 1, 1)
        return values.expand(n, text.shape[0], grid, grid)

    _stub_network(model, logits)
    return model


def test_slide_crops_fold_average_and_global_view() -> None:
    seen: list = []
    model = _stubbed(CATSeg(catseg_tiny()), seen)
    assert model.slide_windows() == [(0, 0), (0, 256), (256, 0), (256, 256)]
    assert model.preprocess_size(480, 720, inference="slide") == (640, 640)
    assert model.preprocess_size(480, 720, inference="whole") == (640, 960)
    images = torch.randn(2, 3, 640, 640)
    out = model.predict(images, torch.zeros(3, 1, 32), (640, 640), (640, 640), inference="slide")
    views = seen[0]
    assert views.shape == (10, 3, 384, 384)  # image-major: 4 crops (row-major) + global, per image
    for i, (y, x) in enumerate(model.slide_windows()):
        assert torch.equal(views[i], images[0, :, y : y + 384, x : x + 384])
        assert torch.equal(views[5 + i], images[1, :, y : y + 384, x : x + 384])
    glob = F.interpolate(images, size=(384, 384), mode="bilinear", align_corners=False)
    assert torch.equal(views[4], glob[0]) and torch.equal(views[9], glob[1])
    s = torch.sigmoid(torch.arange(10.0) - 2.0)
    for b in range(2):
        c0, c1, c2, c3, g = s[5 * b : 5 * b + 5]
        assert out.shape == (2, 3, 640, 640)
        assert torch.allclose(out[b, :, 0, 0], (c0 + g) / 2)  # one crop
        assert torch.allclose(out[b, :, 100, 300], ((c0 + c1) / 2 + g) / 2)  # two crops overlap
        assert torch.allclose(out[b, :, 300, 300], ((c0 + c1 + c2 + c3) / 4 + g) / 2)  # all four
        assert torch.allclose(out[b, :, 639, 100], (c2 + g) / 2)


def test_slide_resizes_the_valid_region_to_the_canvas() -> None:
    seen: list = []
    model = _stubbed(CATSeg(catseg_tiny()), seen)
    images = torch.randn(1, 3, 480, 704)
    out = model.predict(images, torch.zeros(2, 1, 32), (470, 700), (47, 70), inference="slide")
    canvas = F.interpolate(images[..., :470, :700], size=(640, 640), mode="bilinear", align_corners=False)
    assert torch.equal(seen[0][3], canvas[0, :, 256:, 256:]) and out.shape == (1, 2, 47, 70)


@pytest.mark.parametrize("valid", [(50, 90), (200, 300)])
def test_whole_image_resizes_the_padded_image_and_stretches_the_padding(valid) -> None:
    seen: list = []
    model = _stubbed(CATSeg(catseg_tiny()), seen)
    ramp = torch.linspace(-3, 3, 96 * 96).view(1, 1, 96, 96)
    _stub_network(model, lambda images, text, pool: (seen.append(images), ramp.expand(1, 2, 96, 96))[1])
    padded = (-(-valid[0] // 32) * 32, -(-valid[1] // 32) * 32)
    images = torch.randn(1, 3, *padded)
    out = model.predict(images, torch.zeros(2, 1, 32), valid, (100, 180), inference="whole")
    assert torch.equal(seen[0], F.interpolate(images, size=(384, 384), mode="bilinear", align_corners=False))
    # detectron2's sem_seg_postprocess crops the 96 x 96 map to the image size: a no-op above 96 px.
    expected = torch.sigmoid(ramp)[..., : valid[0], : valid[1]].expand(1, 2, -1, -1)
    expected = F.interpolate(expected, size=(100, 180), mode="bilinear", align_corners=False)
    assert torch.allclose(out, expected)


def test_predict_rejects_unknown_options_and_wrong_text() -> None:
    model = CATSeg(_small()).eval()
    with pytest.raises(ConfigError, match="fast"):
        model.predict(torch.zeros(1, 3, 64, 64), torch.zeros(2, 1, 32), (64, 64), (64, 64), fast=True)
    with pytest.raises(ConfigError, match="templates"):
        model(torch.zeros(1, 3, 192, 192), torch.zeros(2, 3, 32))


# ----------------------------------------------------------------------------------- training, dtype
def test_training_rule_and_gradients() -> None:
    model = _randomize(CATSeg(_small())).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.trainable_parameters()}
    clip = {n for n in trainable if n.startswith("clip.")}
    assert clip and all(n.endswith(("attn.q_proj_weight", "attn.v_proj_weight")) for n in clip)
    assert len(clip) == 2 * (9 + 2)  # q and v of every image and text block
    assert all(not n.startswith("clip.") for n in trainable - clip)

    text = model.encode_text(_tokens(1, 3))
    logits = model(torch.randn(2, 3, 192, 192), text)  # pooling_train (2, 2) path
    assert logits.shape == (2, 3, 48, 48)
    target = torch.rand(2, 3, 48, 48).round()
    F.binary_cross_entropy_with_logits(logits, target).backward()
    # The dense last block reads only v, so its q weight gets no gradient (as officially).
    unused = {"clip.visual.transformer.resblocks.8.attn.q_proj_weight"}
    no_grad = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    assert no_grad == unused
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_bfloat16_forward_runs_and_tracks_float32() -> None:
    model = _randomize(CATSeg(_small())).eval()
    images = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        text = model.encode_text(_tokens(1, 4))
        ref = model.predict(images, text, (90, 120), (45, 60), inference="whole")
        out = model.to(torch.bfloat16).predict(images.bfloat16(), text.bfloat16(), (90, 120), (45, 60),
                                               inference="whole")
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert relative_error(out.float(), ref) < 5e-2


def test_whole_blocks_are_row_bands_of_predict_and_match_the_official_resize() -> None:
    model = _randomize(CATSeg(_small())).eval()
    images = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        text = model.encode_text(_tokens(1, 5))
        full = check_blocks(model, images, text, (90, 120), (45, 61), inference="whole")
        logits = model._logits(model._resize(images, 192), text, (1, 1))
    expected = F.interpolate(logits.sigmoid()[..., :90, :120], size=(45, 61), mode="bilinear")
    assert relative_error(full, expected) < 1e-6  # F.interpolate's weights, float32 rounding only


def test_slide_blocks_are_class_chunks_bit_identical_to_all_classes_at_once() -> None:
    model = CATSeg(catseg_tiny())

    def logits(images, text, pool):  # fixed random per-view, per-class logits instead of the network
        return torch.randn(images.shape[0], text.shape[0], 96, 96, generator=torch.Generator().manual_seed(5))

    _stub_network(model, logits)
    images, text = torch.randn(1, 3, 640, 640), torch.zeros(7, 1, 32)
    with torch.no_grad():
        full = check_blocks(model, images, text, (600, 640), (50, 70), budgets=(1, 10**9), inference="slide")
        blocks = list(model.predict_blocks(images, text, (600, 640), (50, 70), 1, inference="slide"))
        assert [k0 for k0, _, _ in blocks] == list(range(7))  # one class per block at the smallest budget
        gen = torch.Generator().manual_seed(5)  # the official post-processing, all classes at once
        probs = F.interpolate(torch.randn(5, 7, 96, 96, generator=gen), size=(384, 384), mode="bilinear")
        probs = probs.sigmoid()
        total, count = torch.zeros(7, 640, 640), torch.zeros(640, 640)
        for i, (y, x) in enumerate(model.slide_windows()):
            total[:, y : y + 384, x : x + 384] += probs[i]
            count[y : y + 384, x : x + 384] += 1
        glob = F.interpolate(probs[4:], size=(640, 640), mode="bilinear")[0]
        expected = F.interpolate(((total / count + glob) / 2.0)[None], size=(50, 70), mode="bilinear")
        again = model.predict(images, text, (600, 640), (50, 70), inference="slide")
    assert torch.equal(again, expected) and full.shape == (1, 7, 50, 70)
