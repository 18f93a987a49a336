"""Swin tower: shapes, window locality, relative position index, patch merging order, padding."""

from __future__ import annotations

import pytest
import torch

from ovss.errors import ConfigError
from ovss.towers.swin import (
    PatchMerging,
    SwinBlock,
    SwinConfig,
    SwinTransformer,
    relative_position_index,
    swin_b_384,
)


def _tiny() -> SwinConfig:
    return SwinConfig(embed_dim=16, depths=(2, 2, 2), heads=(1, 2, 4), window=4)


def test_stage_shapes() -> None:
    torch.manual_seed(0)
    net = SwinTransformer(_tiny()).eval()
    out = net(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 16, 16, 16),
        "res3": (1, 32, 8, 8),
        "res4": (1, 64, 4, 4),
    }
    odd = net(torch.randn(1, 3, 70, 50))  # padded to patches and windows, cropped back
    assert tuple(odd["res2"].shape) == (1, 16, 18, 13) and tuple(odd["res4"].shape) == (1, 64, 5, 4)
    assert swin_b_384().channels == (128, 256, 512)


def test_unshifted_windows_do_not_mix() -> None:
    torch.manual_seed(0)
    block = SwinBlock(8, 2, window=4, shift=0, mlp_ratio=2.0).eval()
    x = torch.randn(1, 4, 8, 8)
    whole = block(x)
    torch.testing.assert_close(whole[:, :, :4], block(x[:, :, :4]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole[:, :, 4:], block(x[:, :, 4:]), rtol=1e-5, atol=1e-6)
    shifted = SwinBlock(8, 2, window=4, shift=2, mlp_ratio=2.0).eval()
    shifted.load_state_dict(block.state_dict())
    assert not torch.allclose(shifted(x)[:, :, :4], shifted(x[:, :, :4]), atol=1e-4)


def test_relative_position_index_by_hand() -> None:
    idx = relative_position_index(2)  # offsets (dy, dx) in {-1, 0, 1}^2 -> (dy + 1) * 3 + (dx + 1)
    assert idx.tolist() == [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    big = relative_position_index(12)
    assert big.shape == (144, 144) and int(big.max()) == 23 * 23 - 1
    assert torch.equal(big + big.T, torch.full_like(big, 2 * int(big[0, 0])))


def test_patch_merging_order() -> None:
    merge = PatchMerging(1)
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)  # (B, H, W, C): rows (1 2), (3 4)
    seen = []
    merge.norm.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    merge(x)
    assert seen[0].flatten().tolist() == [1.0, 3.0, 2.0, 4.0]  # (0,0), (1,0), (0,1), (1,1)


def test_bad_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="same length"):
        SwinConfig(depths=(2, 2), heads=(4,))
    assert SwinConfig.from_json(_tiny().to_json()) == _tiny()
