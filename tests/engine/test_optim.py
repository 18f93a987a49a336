"""Parameter groups of the official recipes (full-size models on the meta device), schedules, clipping."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from ovss.engine.config import SolverConfig
from ovss.engine.optim import (
    build_optimizer,
    clip_gradients,
    lr_factor,
    param_groups,
    param_settings,
    set_lr,
    warmup_factor,
)
from ovss.engine.recipes import load_config
from ovss.models.build import build_model
from ovss.weights.registry import get_weight_spec

from ..conftest import parity_dir


def _meta_model(name: str):
    with torch.device("meta"):
        return build_model(get_weight_spec(name).config())


def _numel(settings, pred) -> int:
    return sum(p.numel() for name, p, mult, decay in settings if pred(name, mult, decay))


@pytest.mark.parametrize(
    ("name", "manifest", "spec_count"),
    [
        ("san-vit-b16", "manifest_san_vit_b16.json", 8_370_866),
        ("san-vit-l14", "manifest_san_vit_l14_336.json", 9_321_650),
        ("catseg-vit-b16", "manifest_catseg_vit_b16.json", 25_115_873),
        ("catseg-vit-l14", "manifest_catseg_vit_l14_336.json", 70_270_177),
        ("sed-convnext-b", "manifest_sed_convnext_b.json", 89_598_220),
        ("sed-convnext-l", "manifest_sed_convnext_l.json", 201_243_980),
    ],
)
def test_trainable_parameter_counts_match_the_official_models(name, manifest, spec_count):
    model = _meta_model(name)
    settings = param_settings(model, load_config(name).solver)
    trainable = sum(p.numel() for _, p, _, _ in settings)
    assert trainable == spec_count  # SAN: spec 1.1 / training log; others: the official manifests
    path = parity_dir() / manifest
    if path.is_file():
        assert json.loads(path.read_text())["trainable_params"] == trainable


def test_san_weight_decay_groups_hand_counted():
    # spec 2.4: no decay for nn.LayerNorm (side blocks: 8 x 2 x (240 + 240) = 7,680) and for names
    # with pos_embed / positional_embedding / query_embed (side pos 1600 x 240, queries 2 x 100 x 240,
    # CLIP pos 197 x 768); the fusion channel-LayerNorms, bg_embed and bias_scaling keep 1e-4.
    settings = param_settings(_meta_model("san-vit-b16"), load_config("san-vit-b16").solver)
    no_decay = 7_680 + 384_000 + 48_000 + 151_296
    assert _numel(settings, lambda n, m, d: d == 0.0) == no_decay
    assert _numel(settings, lambda n, m, d: d == 1e-4) == 8_370_866 - no_decay
    assert {m for _, _, m, _ in settings} == {1.0}
    decay = {n for n, _, _, d in settings if d == 1e-4}
    assert {"bg_embed", "side.decoder.bias_scaling.weight", "side.fusion.0.norm.weight"} <= decay


def test_catseg_groups_clip_multiplier_and_norms():
    cfg = load_config("catseg-vit-b16")
    settings = param_settings(_meta_model("catseg-vit-b16"), cfg.solver)
    # q/v weights: 12 x 2 x 768^2 (image) + 12 x 2 x 512^2 (text) at lr x 0.01
    assert _numel(settings, lambda n, m, d: m == 0.01) == 24 * 768**2 + 24 * 512**2
    assert all(n.startswith("clip.") == (m == 0.01) for n, _, m, _ in settings)
    # LayerNorms: 2 layers x (2 Swin blocks x 2 x 256 + guidance 256 + class 2 x 256); GroupNorm 256 + 128
    assert _numel(settings, lambda n, m, d: d == 0.0) == 2 * (1024 + 256 + 512) + 384
    groups = param_groups(_meta_model("catseg-vit-b16"), cfg.solver)
    got = sorted((g["lr"], g["weight_decay"]) for g in groups)
    assert got == [pytest.approx((2e-6, 1e-4)), pytest.approx((2e-4, 0.0)), pytest.approx((2e-4, 1e-4))]


def test_sed_groups_clip_multiplier_and_custom_norm_decay():
    settings = param_settings(_meta_model("sed-convnext-b"), load_config("sed-convnext-b").solver)
    assert _numel(settings, lambda n, m, d: m == 0.01) == 89_598_220 - 1_376_396  # visual tower x 0.01
    # the decoder's ConvNeXt-block norms are SED's own LayerNorm class: the official rule decays them
    spatial = [d for n, _, _, d in settings if ".spatial.norm." in n]
    assert len(spatial) == 6 and set(spatial) == {1e-4}
    assert {d for n, _, _, d in settings if ".class_attn.norm" in n} == {0.0}
    assert {d for n, _, _, d in settings if n.startswith("clip.visual.trunk.stem.1")} == {0.0}


def test_grouped_adamw_equals_one_group_per_parameter():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    solver = SolverConfig(lr=0.1, weight_decay=0.5, lr_multipliers={"2": 0.1})
    twin = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    twin.load_state_dict(model.state_dict())
    grouped = build_optimizer(model, solver)
    settings = param_settings(twin, solver)
    groups = [{"params": [p], "lr": 0.1 * m, "weight_decay": d} for _, p, m, d in settings]
    per_param = torch.optim.AdamW(groups, lr=0.1)
    assert len(grouped.param_groups) == 3  # (1, 0.5), (1, 0) for the LayerNorm, (0.1, 0.5)
    x = torch.randn(5, 4)
    for net, opt in ((model, grouped), (twin, per_param)):
        for _ in range(3):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_poly_schedule_values():
    solver = load_config("san-vit-b16").solver
    assert lr_factor(0, solver) == 1.0
    assert lr_factor(30_000, solver) == pytest.approx(0.5**0.9)
    assert lr_factor(59_999, solver) * solver.lr == pytest.approx(1e-4 * (1 / 60_000) ** 0.9)
    assert 4e-9 < lr_factor(59_999, solver) * solver.lr < 6e-9  # the official log ends at ~5e-9
    assert lr_factor(60_000, solver) == 0.0


def test_cosine_and_warmup_values():
    solver = load_config("catseg-vit-b16").solver
    assert lr_factor(0, solver) == 1.0
    assert lr_factor(40_000, solver) == pytest.approx(0.5)
    assert lr_factor(20_000, solver) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(80_000, solver) == pytest.approx(0.0)
    assert warmup_factor(0, 100, 0.001, "linear") == pytest.approx(0.001)
    assert warmup_factor(50, 100, 0.001, "linear") == pytest.approx(0.5005)
    assert warmup_factor(50, 100, 0.001, "constant") == 0.001
    assert warmup_factor(100, 100, 0.001, "linear") == 1.0
    warm = SolverConfig(iterations=1000, schedule="poly", warmup_iters=100, warmup_factor=0.1)
    assert lr_factor(50, warm) == pytest.approx((0.1 * 0.5 + 0.5) * (1 - 50 / 1000) ** 0.9)


def test_set_lr_applies_multipliers():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    opt = build_optimizer(model, SolverConfig(lr=1.0, lr_multipliers={"1": 0.01}))
    set_lr(opt, 2e-4, 0.5)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([1e-6, 1e-4])


def test_full_model_gradient_clipping():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b]}], lr=1.0)
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
    assert float(clip_gradients(opt, 0.01)) == pytest.approx(5.0)  # one norm over both groups
    assert float(a.grad) == pytest.approx(0.006, rel=1e-4) and float(b.grad) == pytest.approx(0.008, rel=1e-4)
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
    assert float(clip_gradients(opt, 0.0)) == pytest.approx(5.0) and float(a.grad) == 3.0  # 0 = off
