"""VisionTransformer against a sequence-first nn.MultiheadAttention reference, and its contract."""

from __future__ import annotations

import pytest
import torch

from ovss.errors import ConfigError
from ovss.towers.vit import VisionConfig, VisionTransformer
from tests.towers._clip_reference import RefVisual, randomize_

CFG = VisionConfig(image_size=32, patch_size=8, width=32, layers=3, heads=4, output_dim=16)


def _pair(cfg: VisionConfig = CFG, seed: int = 0):
    ref = randomize_(
        RefVisual(cfg.image_size, cfg.patch_size, cfg.width, cfg.layers, cfg.heads, cfg.output_dim, cfg.act),
        seed,
    )
    ours = VisionTransformer(cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)  # OpenAI attribute names
    return ref.eval(), ours.eval()


@pytest.mark.parametrize("size", [(32, 32), (40, 56), (47, 33)])
def test_forward_matches_reference(size):
    ref, ours = _pair()
    images = torch.randn(2, 3, *size)
    out = ours(images)
    assert out.shape == (2, 16)
    torch.testing.assert_close(out, ref(images), rtol=1e-5, atol=1e-5)


def test_gelu_variant_matches_reference():
    cfg = CFG.override("act=gelu")
    ref, ours = _pair(cfg, seed=1)
    images = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(ours(images), ref(images), rtol=1e-5, atol=1e-5)


def test_embed_blocks_and_intermediates():
    ref, ours = _pair(seed=2)
    images = torch.randn(2, 3, 40, 24)
    tokens, grid = ours.embed(images)
    assert grid == (5, 3) and tokens.shape == (2, 16, 32)
    feats, grid2 = ours.forward_intermediates(images, [3, 0, 1])
    assert grid2 == grid and [f.shape for f in feats] == [(2, 16, 32)] * 3
    assert torch.equal(feats[1], tokens)
    assert torch.equal(feats[2], ours.run_blocks(tokens, 0, 1))
    two_step = ours.run_blocks(ours.run_blocks(tokens, 0, 2), 2, None)
    torch.testing.assert_close(feats[0], two_step, rtol=0, atol=0)
    torch.testing.assert_close(feats[0], ref.tokens(images), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.head(feats[0][:, 0]), ours(images), rtol=0, atol=0)
    assert ours.head(feats[0]).shape == (2, 16, 16)
    with pytest.raises(ValueError, match="out of range"):
        ours.forward_intermediates(images, [4])


def test_run_blocks_mask_is_applied():
    _, ours = _pair(seed=3)
    tokens, _ = ours.embed(torch.randn(2, 3, 32, 32))
    n = tokens.shape[1]
    mask = torch.zeros(2, 4, n, n)
    assert torch.equal(ours.run_blocks(tokens, attn_mask=mask), ours.run_blocks(tokens))
    mask[:, :, 0, 1:] = float("-inf")  # the class token sees only itself
    masked = ours.run_blocks(tokens, attn_mask=mask)
    assert not torch.allclose(masked[:, 0], ours.run_blocks(tokens)[:, 0])
    # with all blocks isolating the class token, it is independent of the patches
    tokens2 = tokens.clone()
    tokens2[:, 1:] += 1.0
    torch.testing.assert_close(ours.run_blocks(tokens2, attn_mask=mask)[:, 0], masked[:, 0])


def test_split_qkv_tower_is_identical():
    from ovss.layers.attention import split_in_proj

    _, packed = _pair(seed=4)
    split = VisionTransformer(CFG.override("split_qkv=true"))
    split.load_state_dict(split_in_proj(packed.state_dict()), strict=True)
    images = torch.randn(1, 3, 32, 32)
    assert torch.equal(split(images), packed(images))


def test_bfloat16_forward():
    _, ours = _pair(seed=5)
    images = torch.randn(1, 3, 40, 40)
    y32 = ours(images)
    y16 = ours.to(torch.bfloat16)(images.bfloat16())
    assert y16.dtype == torch.bfloat16
    assert (y16.float() - y32).norm() / y32.norm() < 5e-2


def test_config_validation_and_round_trip():
    assert VisionConfig.from_json(CFG.to_json()) == CFG
    assert CFG.grid == 4
    with pytest.raises(ConfigError, match="patch_size"):
        VisionConfig(image_size=30, patch_size=8)
    with pytest.raises(ConfigError, match="act"):
        VisionConfig(act="relu")
    with pytest.raises(ConfigError, match="heads"):
        VisionConfig(width=30, heads=4)


@pytest.mark.filterwarnings("ignore")
def test_onnx_export_matches_eager(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    _, ours = _pair(seed=6)
    images = torch.randn(1, 3, 40, 48)  # grid 5x6: the positional resize is exported too
    path = tmp_path / "vit.onnx"
    torch.onnx.export(ours, (images,), str(path), dynamo=False, input_names=["images"])
    got = ort.InferenceSession(str(path)).run(None, {"images": images.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), ours(images).detach(), rtol=1e-4, atol=1e-5)
