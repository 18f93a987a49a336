"""SED model: configs, parameter counts, text layout, CER fast inference, training forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ovss.errors import ConfigError
from ovss.models.sed import (
    SED,
    SEDConfig,
    SEDOutput,
    sed_convnext_b,
    sed_convnext_l,
    sed_tiny,
    valid_region,
)
from ovss.models.sed_blocks import ClassAttention, FusionStage, elu_plus_one_
from ovss.models.sed_decoder import cer_survivors
from ovss.towers.clip import vit_b_16
from tests.conftest import parity_params
from tests.models._blocks import check_blocks

S = 128  # small CLIP input for the tiny model: stride-32 map 4x4, output 32x32


@pytest.fixture(scope="module")
def model() -> SED:
    torch.manual_seed(0)
    m = SED(sed_tiny().override(f"image_size={S}")).eval()
    with torch.no_grad():  # random but non-trivial: default inits leave some parts near identity
        for p in m.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def _text(k: int, model: SED, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    e = model.config.clip.embed_dim
    return F.normalize(torch.randn(k, model.config.num_templates, e, generator=g), dim=-1)


def _images(b: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, S, S, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("builder", "total", "trainable", "decoder"),
    [
        (sed_convnext_b, 180_761_741, 89_598_220, 1_376_396),
        (sed_convnext_l, 353_245_773, 201_243_980, 1_473_164),
    ],
)
def test_full_size_parameter_counts(builder, total: int, trainable: int, decoder: int) -> None:
    """Totals equal the official models' (manifest_sed_convnext_{b,l}.json; spec §4.5)."""
    with torch.device("meta"):
        m = SED(builder())
    assert sum(p.numel() for p in m.parameters()) == total
    assert sum(p.numel() for _, p in m.trainable_parameters()) == trainable
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == trainable
    assert sum(p.numel() for p in m.decoder.parameters()) == decoder
    cfg = builder()
    assert (cfg.decoder_dims, cfg.kernel_sizes, cfg.num_templates, cfg.image_size) == (
        (64, 32, 16),
        (9, 9, 9),
        80,
        768,
    )
    assert cfg.templates == "imagenet" and cfg.topk == 8 and cfg.pool_test == (1, 1)


def test_config_round_trip_and_validation() -> None:
    cfg = sed_convnext_l()
    assert SEDConfig.from_json(cfg.to_json()) == cfg
    assert cfg.guidance_dims == (768, 384, 192)
    with pytest.raises(ConfigError, match="decoder_dims"):
        sed_tiny().override("decoder_dims=[32,16,8]")
    with pytest.raises(ConfigError, match="num_templates"):
        sed_tiny().override("templates=vild")
    with pytest.raises(ConfigError, match="guidance_proj_dims"):
        sed_tiny().override("guidance_proj_dims=[64,16,8]")
    with pytest.raises(ConfigError, match="ConvNeXt"):
        SEDConfig(clip=vit_b_16())


def test_freeze_rule(model: SED) -> None:
    """Image tower and decoder train; text tower and logit_scale are frozen (CLIP_FINETUNE full)."""
    names = {n for n, _ in model.trainable_parameters()}
    assert names and all(n.startswith(("clip.visual.", "decoder.")) for n in names)
    assert not model.clip.logit_scale.requires_grad
    assert not any(p.requires_grad for p in model.clip.text.parameters())
    assert all(p.requires_grad for p in model.clip.visual.parameters())


def test_encode_text_layout(model: SED) -> None:
    """(P, K, L) tokens -> (K, P, E), unit norm, row [k, p] = normalised text tower of tokens[p, k]."""
    g = torch.Generator().manual_seed(3)
    p, k, length = 3, 2, 9
    tokens = torch.randint(1, 1000, (p, k, length), generator=g)
    tokens[..., 5] = 49407  # EOT (largest id) then padding
    tokens[..., 6:] = 0
    out = model.encode_text(tokens)
    assert out.shape == (k, p, model.config.clip.embed_dim)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(k, p))
    ref = F.normalize(model.clip.text(tokens[2, 1][None]), dim=-1)[0]
    torch.testing.assert_close(out[1, 2], ref, rtol=1e-5, atol=1e-6)


def test_cer_survivors_is_union_of_per_pixel_topk() -> None:
    """Same set as the official argsort[:, :k] + bincount > 0 rule."""
    logits = torch.randn(1, 30, 5, 6, generator=torch.Generator().manual_seed(4))
    for k in (1, 3, 40):
        ref = torch.bincount(logits.argsort(dim=1, descending=True)[:, :k].reshape(-1), minlength=30) > 0
        assert cer_survivors(logits, k).tolist() == ref.nonzero().squeeze(1).tolist()


def test_class_attention_matches_formula() -> None:
    """Linear attention (elu+1), MLP, and the official x + up(pool(x) + delta) residual, both pools."""
    torch.manual_seed(5)
    attn = ClassAttention(16, 4, pool_train=(2, 2), pool_test=(1, 1))
    x = torch.randn(2 * 3, 16, 4, 6)  # B=2, K=3

    def reference(x: torch.Tensor, pool: int) -> torch.Tensor:
        xp = F.avg_pool2d(x, pool)
        b, k, c, h, w = 2, 3, 16, *xp.shape[-2:]
        seq = xp.view(b, k, c, h, w).permute(0, 3, 4, 1, 2).reshape(-1, k, c)
        y = attn.norm1(seq)
        q = (F.elu(attn.q(y)) + 1).view(-1, k, 4, 4)
        kk = (F.elu(attn.k(y)) + 1).view(-1, k, 4, 4)
        v = attn.v(y).view(-1, k, 4, 4)
        num = torch.einsum("nlhd,nshd,nshe->nlhe", q, kk, v)
        den = torch.einsum("nlhd,nshd->nlh", q, kk)[..., None] + 1e-6
        seq = seq + (num / den).reshape(-1, k, c)
        seq = seq + attn.fc2(F.relu(attn.fc1(attn.norm2(seq))))
        y = seq.view(b, h, w, k, c).permute(0, 3, 4, 1, 2).reshape(b * k, c, h, w)
        return x + F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True)

    with torch.no_grad():
        attn.eval()
        torch.testing.assert_close(attn(x, batch=2), reference(x, 1), rtol=1e-5, atol=1e-5)
        # the in-place inference path (pixel chunks, doubled_layer): any chunk size, same values
        for chunk in (16 * 64, 1 << 20):
            got = attn(x.contiguous(memory_format=torch.channels_last).clone(), 2, chunk)
            torch.testing.assert_close(got, reference(x, 1), rtol=1e-5, atol=1e-5)
        attn.train()
        torch.testing.assert_close(attn(x, batch=2), reference(x, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("classes_first", [False, True])
@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("classes", [3, 7, 8, 150])  # head width 32 or 8: both orders of the products
def test_doubled_layer_equals_seq_plus_layer_in_float64(
    heads: int, classes: int, classes_first: bool
) -> None:
    """The inference form (scores first when L < D, key-value products first otherwise; pixels or
    classes outer) is the layer."""
    torch.manual_seed(heads)
    attn = ClassAttention(32, heads).double().eval()
    seq = torch.randn(7, classes, 32, dtype=torch.float64)
    with torch.no_grad():
        if classes_first:  # (L, N, C) in and out
            got = attn.doubled_layer(seq.transpose(0, 1).contiguous(), classes_first=True).transpose(0, 1)
        else:
            got = attn.doubled_layer(seq)
        torch.testing.assert_close(got, seq + attn.layer(seq), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("exp_form", [False, True])
def test_elu_plus_one_in_place_is_the_feature_map(exp_form: bool) -> None:
    """Both forms of the linear-attention feature map are elu(x) + 1, in place on a strided view."""
    x = torch.linspace(-30, 5, 301, dtype=torch.float64).view(7, 43)
    expected = F.elu(x[:, :20]) + 1
    elu_plus_one_(x[:, :20], exp_form)
    torch.testing.assert_close(x[:, :20], expected, rtol=1e-15, atol=1e-15)  # elu(x) + 1 cancels below -1
    assert x[0, 20] == torch.linspace(-30, 5, 301, dtype=torch.float64)[20]


def test_fast_keeps_every_class_when_topk_covers_all(model: SED) -> None:
    """topk >= K rejects nothing, so CER equals normal inference."""
    images, text = _images(1), _text(5, model)
    normal = model.predict(images, text, (S, S), (40, 50))
    fast = model.predict(images, text, (S, S), (40, 50), fast=True, topk=5)
    assert normal.shape == (1, 5, 40, 50)
    torch.testing.assert_close(fast, normal, rtol=1e-5, atol=1e-6)


def _official_fast(model: SED, images: torch.Tensor, text: torch.Tensor, topk: int) -> torch.Tensor:
    """The official fast_conv_decoder, literally: boolean masks on the class axis, cost guidance for
    all classes then indexed, survivors from argsort + bincount."""
    dec = model.decoder
    dense, feats = model.encode_image(images)
    skips = [feats[2], feats[1], feats[0]]
    k = text.shape[0]

    def valid(logits: torch.Tensor) -> torch.Tensor:
        n = logits.shape[1]
        return torch.bincount(logits.argsort(dim=1, descending=True)[:, :topk].reshape(-1), minlength=n) > 0

    cost = dec.cost_volume(dense, text)
    x = dec.cost_embed(cost)
    guides = [F.relu(proj(s)) for proj, s in zip(dec.image_guidance, skips)]
    cost_guides = []
    for proj in dec.cost_guidance:
        cost = F.relu(proj(cost))
        cost_guides.append(cost)
    masks = []
    for i, stage in enumerate(dec.stages):
        m = valid(dec.cer_heads[i](x).view(1, x.shape[0], *x.shape[-2:]))
        masks.append(m)
        cg = cost_guides[i]
        for mm in masks:
            cg = cg[mm]
        x = stage(x[m], guides[i], cg, 1)
    idx = masks[0].clone()
    inner = masks[1].clone()
    inner[masks[1]] = masks[2]
    idx[masks[0]] = inner
    out = torch.zeros(1, k, *x.shape[-2:])
    out[:, idx] = dec.head(x)[:, 0].sigmoid()
    return out


def test_fast_drops_rejected_classes_like_the_official_code(model: SED) -> None:
    """K=24 classes, top-1 over 16 stage-1 pixels: classes are rejected, stages run on survivors only,
    output equals the official algorithm, rejected classes score exactly 0."""
    images, text = _images(1, seed=7), _text(24, model, seed=8)
    rows = [0, 0, 0]  # classes through each stage's ConvNeXt block (it may run in chunks of classes)
    hooks = [
        s.spatial.register_forward_pre_hook(lambda m, a, i=i: rows.__setitem__(i, rows[i] + a[0].shape[0]))
        for i, s in enumerate(model.decoder.stages)
    ]
    with torch.no_grad():
        dense, feats = model.encode_image(images)
        probs, survivors = model.decoder.forward_fast(dense, text, [feats[2], feats[1], feats[0]], topk=1)
        for h in hooks:
            h.remove()
        ref = _official_fast(model, images, text, topk=1)
    assert rows == [len(s) for s in survivors]
    assert len(survivors[0]) <= 16 < 24 and len(survivors[2]) <= len(survivors[1]) <= len(survivors[0])
    assert set(survivors[2].tolist()) <= set(survivors[1].tolist()) <= set(survivors[0].tolist())
    torch.testing.assert_close(probs, ref, rtol=1e-5, atol=1e-6)
    rejected = sorted(set(range(24)) - set(survivors[2].tolist()))
    assert rejected and torch.all(probs[0, rejected] == 0)
    assert torch.all(probs[0, survivors[2]] > 0)


def test_fast_batch_is_per_image(model: SED) -> None:
    images, text = _images(2, seed=9), _text(24, model)
    both = model.predict(images, text, (S, S), (S, S), fast=True, topk=2)
    one = [model.predict(images[i : i + 1], text, (S, S), (S, S), fast=True, topk=2) for i in range(2)]
    torch.testing.assert_close(both, torch.cat(one), rtol=1e-5, atol=1e-6)


def test_training_forward_and_stop_gradients() -> None:
    """forward returns main + 3 CER logits; CER heads train on detached features (no encoder grad);
    the main loss reaches the encoder only through the cost map (the skips are detached)."""
    torch.manual_seed(0)
    m = SED(sed_tiny().override(f"image_size={S}")).train()
    text = _text(3, m)
    out = m(_images(2), text)
    assert isinstance(out, SEDOutput)
    assert out.logits.shape == (2, 3, S // 4, S // 4)
    assert [tuple(a.shape) for a in out.aux] == [
        (2, 3, S // 32, S // 32),
        (2, 3, S // 16, S // 16),
        (2, 3, S // 8, S // 8),
    ]
    sum(a.square().mean() for a in out.aux).backward(retain_graph=True)
    assert all(p.grad is None for p in m.clip.visual.parameters())
    assert m.decoder.cer_heads[2].weight.grad is not None
    assert m.decoder.head.weight.grad is None
    out.logits.square().mean().backward()
    stem = m.clip.visual.trunk.stem[0].weight.grad
    assert stem is not None and stem.abs().sum() > 0
    assert all(p.grad is None for p in m.clip.text.parameters())


def _official_postprocess(
    probs: torch.Tensor, padded: tuple[int, int], image: tuple[int, int], output: tuple[int, int]
) -> torch.Tensor:
    """The official ``sem_seg_postprocess`` (the reference the banded resize is checked against): crop
    the valid region of the padded input, then one ``F.interpolate`` to the output size."""
    crop = valid_region(probs, padded, image)
    return F.interpolate(crop, size=output, mode="bilinear", align_corners=False)


def test_valid_region_crops_the_padded_fraction() -> None:
    probs = torch.arange(64.0).view(1, 1, 8, 8)
    assert torch.equal(valid_region(probs, (64, 64), (32, 64)), probs[..., :4, :])
    assert torch.equal(valid_region(probs, (64, 64), (64, 40)), probs[..., :, :5])
    assert valid_region(probs, (64, 64), (64, 64)) is probs


def test_predict_rejects_unknown_options(model: SED) -> None:
    with pytest.raises(ConfigError, match="inference"):
        model.predict(_images(1), _text(2, model), (S, S), (S, S), inference="slide")
    with pytest.raises(ConfigError, match="topk"):
        model.predict(_images(1), _text(2, model), (S, S), (S, S), fast=True, topk=0)


@pytest.mark.parametrize("fast", [False, True])
def test_predict_blocks_are_row_bands_of_predict_and_match_postprocess(model: SED, fast: bool) -> None:
    images, text = _images(2, seed=7), _text(24, model, seed=8)
    full = check_blocks(model, images, text, (S - 28, S), (45, 37), fast=fast, topk=1)
    with torch.no_grad():
        dense, skips = model.image_features(images)
        if fast:
            one = [model.decoder.forward_fast(dense[i : i + 1], text, [s[i : i + 1] for s in skips], 1)[0]
                   for i in range(2)]
            probs = torch.cat(one)
        else:
            probs = model.decoder(dense, text, skips)[0].sigmoid()
    expected = _official_postprocess(probs, (S, S), (S - 28, S), (45, 37))
    torch.testing.assert_close(full, expected, rtol=1e-5, atol=1e-6)
    assert ((full - expected).norm() / expected.norm()) < 1e-6
    if fast:  # rejected classes stay exactly 0 through the banded resize
        assert torch.equal(full == 0, expected == 0) and (full == 0).any()


def test_split_fusion_equals_the_literal_stage() -> None:
    """up-conv folded into the first fusion conv + the image-guidance conv once per image + the up-conv
    bias as a border-exact map == the official spatial -> attention -> up -> cat -> DoubleConv, in
    training (autograd, same gradients) and at inference."""
    torch.manual_seed(11)
    stage = FusionStage(24, 16, 8, 5, 4, (2, 2), (1, 1))
    with torch.no_grad():
        for p in stage.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # non-trivial biases (they matter at the borders)
    x = torch.randn(2 * 3, 24, 3, 5, dtype=torch.float64)  # B=2, K=3: a 3x5 map is mostly border
    image_guide = torch.randn(2, 8, 6, 10, dtype=torch.float64)
    cost_guide = torch.randn(2 * 3, 8, 6, 10, dtype=torch.float64)
    stage = stage.double()
    for training in (False, True):
        stage.train(training)
        ref = stage(x, image_guide, cost_guide, batch=2)
        weights = stage.split_weights()
        attn = stage.class_attn(stage.spatial(x), 2)
        out = stage.fuse_split(attn, stage.image_term(image_guide, weights), cost_guide, weights)
        assert ((out - ref).norm() / ref.norm()) < 1e-12
        if training:
            g_ref = torch.autograd.grad(ref.square().sum(), list(stage.parameters()))
            g_out = torch.autograd.grad(out.square().sum(), list(stage.parameters()))
            for a, b in zip(g_out, g_ref):
                assert ((a - b).norm() / b.norm()) < 1e-10


@pytest.mark.parametrize("fast", [False, True])
def test_chunked_decoder_equals_whole_tensors(model: SED, fast: bool) -> None:
    """Inference in chunks of classes, pixel chunks of the class attention and MLP tiles (a budget
    small enough to split every step) == the whole-tensor decoder (training/export/recording path)."""
    images, text = _images(2 if not fast else 1, seed=12), _text(13, model, seed=13)
    dec = model.decoder
    with torch.no_grad():
        dense, skips = model.image_features(images)
        calls = []
        hook = dec.stages[2].spatial.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
        dec.chunk_bytes = 12000
        try:
            chunked = dec.forward_fast(dense, text, skips, topk=2) if fast else dec(dense, text, skips)
        finally:
            dec.chunk_bytes = 0
            hook.remove()
        whole = dec.forward_fast(dense, text, skips, topk=2) if fast else dec(dense, text, skips)
        dec.chunk_bytes = SED(sed_tiny()).decoder.chunk_bytes
    assert len(calls) > 1  # really ran in chunks
    if fast:
        assert [s.tolist() for s in chunked[1]] == [s.tolist() for s in whole[1]]
        pairs = [(chunked[0], whole[0])]
    else:
        pairs = [(chunked[0], whole[0]), *zip(chunked[1], whole[1])]
    for a, b in pairs:
        assert a.shape == b.shape and ((a - b).norm() / b.norm()) < 1e-5


@pytest.mark.parametrize("folder", parity_params("sed_"))
def test_bfloat16_decoder_stays_close_to_float32_on_the_parity_fixture(folder) -> None:
    """The bf16 decoder (folded weights composed in float32, then cast) on the official fixture's
    weights and encoder features: probabilities within 1e-2 relative of float32 (CER runs the same
    operators on fewer classes; bf16 is ~30x slower than float32 on CPUs without native bf16, so one
    mode only)."""
    import copy

    from ovss.weights.build import load_strict
    from ovss.weights.formats import sed_d2
    from tests.parity._common import official_state_dict, read_array, read_config
    from tests.parity.test_sed_parity import fixture_config, text_embeddings

    cfg = read_config(folder)
    model = SED(fixture_config(cfg)).eval()
    load_strict(model, sed_d2.convert(official_state_dict(folder)), str(folder))
    half = copy.deepcopy(model.decoder).to(torch.bfloat16)
    with torch.no_grad():
        text = text_embeddings(model, cfg, read_array(folder, "tokens.npy").long())
        dense, skips = model.image_features(read_array(folder, "input.npy").float())
        low = [t.to(torch.bfloat16) for t in (dense, text, *skips)]
        ref = model.decoder(dense, text, skips, aux=False)[0].sigmoid()
        out = half(low[0], low[1], low[2:], aux=False)[0].float().sigmoid()
    assert out.dtype == torch.float32 and out.shape == ref.shape
    err = float((out - ref).norm() / ref.norm())
    assert 0 < err < 1e-2, err  # measured 2.8e-3 end to end (bf16 encoder too) on sed_a
