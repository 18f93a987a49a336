"""ConvNeXt CLIP image tower: official layouts, SED parity, hand-written block reference."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from ovss.errors import ConfigError
from ovss.towers.convnext import (
    ConvNeXt,
    ConvNeXtBlock,
    ConvNeXtConfig,
    DropPath,
    convnext_base_w_320,
    convnext_large_d_320,
)
from tests.conftest import parity_params, relative_error
from tests.parity._common import convnext_config, official_state_dict, read_array, read_config, read_manifest

# prefix of the CLIP image tower in the official SED state dict (detectron2 checkpoint "model")
SED_VISUAL_PREFIX = "sem_seg_head.predictor.clip_model.visual."

TINY = dict(depths=(1, 2, 1, 1), dims=(8, 16, 24, 32), output_dim=12)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial values for every parameter (so LN affine, gamma and biases all matter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.ndim == 1 else 0.0) * 0.5)


# ---------------------------------------------------------------------------------------------
# config


def test_builders_match_open_clip_configs() -> None:
    b, l = convnext_base_w_320(), convnext_large_d_320()
    assert (b.depths, b.dims, b.output_dim, b.proj, b.image_size) == (
        (3, 3, 27, 3), (128, 256, 512, 1024), 640, "linear", 320
    )
    assert (l.depths, l.dims, l.output_dim, l.proj, l.head_drop) == (
        (3, 3, 27, 3), (192, 384, 768, 1536), 768, "mlp", 0.1
    )
    for cfg in (b, l):
        assert ConvNeXtConfig.from_json(cfg.to_json()) == cfg
        assert cfg.reductions == (4, 8, 16, 32)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(dims=(8, 16)), "dims"),
        (dict(depths=(1, 0, 1, 1)), "depths"),
        (dict(kernel_size=6), "kernel_size"),
        (dict(norm_eps=0.0), "norm_eps"),
        (dict(ls_init_value=-1.0), "ls_init_value"),
        (dict(drop_path=1.0), "drop_path"),
        (dict(head_drop=-0.1), "head_drop"),
        (dict(output_dim=0), "output_dim"),
        (dict(proj="attn"), "proj"),
        (dict(pool="token"), "pool"),
    ],
)
def test_config_rejects_bad_fields(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"ConvNeXtConfig.{field}"):
        ConvNeXtConfig(**kwargs)


def test_override_is_typed() -> None:
    cfg = convnext_base_w_320().override("proj=mlp", "depths=[1,1,1,1]")
    assert cfg.proj == "mlp" and cfg.depths == (1, 1, 1, 1)
    with pytest.raises(ConfigError):
        convnext_base_w_320().override("proj=attn")


# ---------------------------------------------------------------------------------------------
# full-size layouts (meta device: no memory, no init cost)


@pytest.mark.parametrize("variant, builder", [("b", convnext_base_w_320), ("l", convnext_large_d_320)])
def test_full_size_keys_shapes_and_counts_match_sed_manifest(variant: str, builder) -> None:
    manifest = read_manifest(f"manifest_sed_convnext_{variant}.json")
    n = len(SED_VISUAL_PREFIX)
    ref = [(k[n:], tuple(s)) for k, s, _ in manifest["keys"] if k.startswith(SED_VISUAL_PREFIX)]
    with torch.device("meta"):
        model = ConvNeXt(builder())
    ours = [(k, tuple(t.shape)) for k, t in model.state_dict().items()]
    assert ours == ref  # same names, shapes and order
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == manifest["param_counts_by_group"]["clip_visual"]
    assert n_params == {"b": 88_221_824, "l": 199_770_816}[variant]


# ---------------------------------------------------------------------------------------------
# SED parity (official timm/open_clip trunk with tiny random weights)


def _fixture_tensor(folder: Path, meta: dict, name: str) -> torch.Tensor:
    with safe_open(str(folder / meta[name]["file"]), "pt") as f:
        return f.get_tensor(name)


@pytest.mark.parametrize("folder", parity_params("sed_"))
def test_sed_fixture_loads_strictly_and_matches_encoder_outputs(folder: Path) -> None:
    cfg = read_config(folder)
    model = ConvNeXt(convnext_config(cfg["clip"])).eval()
    full = official_state_dict(folder)
    visual = {k[len(SED_VISUAL_PREFIX) :]: v for k, v in full.items() if k.startswith(SED_VISUAL_PREFIX)}
    assert visual, f"no {SED_VISUAL_PREFIX}* keys in the fixture"
    model.load_state_dict(visual, strict=True)

    meta = cfg["tensors"]
    images = read_array(folder, "input.npy")
    with torch.no_grad():
        feats = model.forward_features(images)
        dense = model.dense_embedding(feats[-1])
    for i, name in enumerate(("enc.res2", "enc.res3", "enc.res4", "enc.res5")):
        err = relative_error(feats[i], _fixture_tensor(folder, meta, name))
        assert err <= 1e-4, f"{name}: relative error {err:.2e}"
    err = relative_error(dense, _fixture_tensor(folder, meta, "enc.clip_vis_dense"))
    assert err <= 1e-4, f"enc.clip_vis_dense: relative error {err:.2e}"


# ---------------------------------------------------------------------------------------------
# hand-written references


def _layer_norm_ref(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last axis, written out (biased variance)."""
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _gelu_ref(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def test_block_matches_hand_written_reference() -> None:
    torch.manual_seed(0)
    c, k = 6, 7
    block = ConvNeXtBlock(c, kernel_size=k, ls_init_value=1e-6, eps=1e-6).eval()
    _randomise(block)
    x = torch.randn(2, c, 9, 11, dtype=torch.float64)
    block = block.double().requires_grad_(False)
    p = dict(block.named_parameters())
    # depthwise 7x7 with zero padding, as an explicit sum over taps
    xp = F.pad(x, (k // 2,) * 4)
    w = p["conv_dw.weight"][:, 0]  # (C, k, k)
    y = torch.zeros_like(x)
    for i in range(k):
        for j in range(k):
            y += xp[:, :, i : i + x.shape[2], j : j + x.shape[3]] * w[None, :, i, j, None, None]
    y = y + p["conv_dw.bias"][None, :, None, None]
    y = y.permute(0, 2, 3, 1)
    y = _layer_norm_ref(y, p["norm.weight"], p["norm.bias"], 1e-6)
    y = _gelu_ref(y @ p["mlp.fc1.weight"].T + p["mlp.fc1.bias"]) @ p["mlp.fc2.weight"].T + p["mlp.fc2.bias"]
    ref = x + (y * p["gamma"]).permute(0, 3, 1, 2)
    out = block(x)
    assert relative_error(out, ref) < 1e-12
    assert relative_error(out, x) > 1e-2  # the residual branch really contributes


@pytest.mark.parametrize("proj", ["linear", "mlp"])
def test_pooled_embedding_and_dense_head_match_reference(proj: str) -> None:
    cfg = ConvNeXtConfig(**TINY, proj=proj)
    model = ConvNeXt(cfg).eval().double().requires_grad_(False)
    _randomise(model, seed=1)
    images = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    feats = model.forward_features(images)
    pooled = model(images)
    dense = model.dense_embedding(feats[-1])
    p = dict(model.named_parameters())

    def head(v: torch.Tensor) -> torch.Tensor:
        v = _layer_norm_ref(v, p["trunk.head.norm.weight"], p["trunk.head.norm.bias"], cfg.norm_eps)
        if proj == "linear":
            return v @ p["head.proj.weight"].T
        hidden = _gelu_ref(v @ p["head.mlp.fc1.weight"].T + p["head.mlp.fc1.bias"])
        return hidden @ p["head.mlp.fc2.weight"].T

    assert pooled.shape == (2, cfg.output_dim)
    assert relative_error(pooled, head(feats[-1].mean(dim=(2, 3)))) < 1e-12
    assert dense.shape == (2, cfg.output_dim, 2, 3)
    assert relative_error(dense, head(feats[-1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)) < 1e-12


# ---------------------------------------------------------------------------------------------
# shapes, dtypes, training helpers


def test_stage_shapes_and_feature_info() -> None:
    model = ConvNeXt(ConvNeXtConfig(**TINY)).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(2, 8, 16, 24), (2, 16, 8, 12), (2, 24, 4, 6), (2, 32, 2, 3)]
    assert model.feature_info == [
        {"index": 0, "num_chs": 8, "reduction": 4},
        {"index": 1, "num_chs": 16, "reduction": 8},
        {"index": 2, "num_chs": 24, "reduction": 16},
        {"index": 3, "num_chs": 32, "reduction": 32},
    ]


def test_tiled_inference_equals_the_whole_block(monkeypatch) -> None:
    """No-autograd inference on channels-last input runs the MLP on pixel tiles written in place over
    the conv output; it equals the whole-tensor path (the one autograd uses), leaves the input alone,
    and NCHW input falls back to the whole path."""
    torch.manual_seed(0)
    block = ConvNeXtBlock(6, kernel_size=7, ls_init_value=0.5).eval()
    _randomise(block, seed=3)
    block = block.double().requires_grad_(False)
    x = torch.randn(2, 6, 9, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x_copy = x.clone()
    ref = block(x)  # grad mode: the whole path
    monkeypatch.setattr(ConvNeXtBlock, "tile_elements", 4 * 6 * 5)  # 5 pixels a tile, 198 pixels
    with torch.no_grad():
        out = block(x)
        plain = block(x.contiguous())  # NCHW: whole path
    assert torch.equal(x, x_copy)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(out, ref) < 1e-14 and relative_error(plain, ref) < 1e-14
    model = ConvNeXt(ConvNeXtConfig(**TINY)).eval()
    _randomise(model, seed=4)
    images = torch.randn(1, 3, 64, 64)
    whole = model.forward_features(images)  # grad enabled: untiled
    with torch.no_grad():
        tiled = model.forward_features(images)
    assert all(relative_error(a, b.detach()) < 1e-6 for a, b in zip(tiled, whole))


def test_bfloat16_forward_tracks_float32() -> None:
    model = ConvNeXt(ConvNeXtConfig(**TINY, proj="mlp")).eval()
    _randomise(model, seed=2)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model.forward_features(images)[-1]
        out = model.to(torch.bfloat16).forward_features(images.to(torch.bfloat16))[-1]
        emb = model(images.to(torch.bfloat16))
    assert out.dtype == emb.dtype == torch.bfloat16
    assert relative_error(out.float(), ref) < 5e-2


def test_drop_path_drops_whole_samples_in_training_only() -> None:
    torch.manual_seed(0)
    dp = DropPath(0.5)
    x = torch.ones(64, 3, 2, 2)
    y = dp.train()(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all() and 0 < (per_sample[:, 0] == 0).sum() < 64
    assert torch.equal(dp.eval()(x), x)
    # per-block rates grow linearly from 0 to drop_path over all blocks (timm)
    model = ConvNeXt(ConvNeXtConfig(**TINY, drop_path=0.1))
    rates = [b.drop_path.p for s in model.trunk.stages for b in s.blocks]
    assert rates == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
