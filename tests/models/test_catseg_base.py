"""Shared CAT-Seg pieces (models/catseg_base.py): the dense last CLIP block of both versions."""

from __future__ import annotations

from typing import Literal

import pytest
import torch

from ovss.layers.transformer import ResidualAttentionBlock
from ovss.models.catseg_base import dense_last_block


def _block(split_qkv: bool) -> ResidualAttentionBlock:
    torch.manual_seed(0)
    block = ResidualAttentionBlock(16, 2, split_qkv=split_qkv)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.2)
    return block


Residual = Literal["class", "token"]


def _changed(block: ResidualAttentionBlock, x: torch.Tensor, token: int, residual: Residual) -> list[bool]:
    """Which output tokens move when input ``token`` moves."""
    y = x.clone()
    y[:, token] += 1.0
    delta = dense_last_block(block, y, residual) - dense_last_block(block, x, residual)
    return (delta.abs().amax(dim=(0, 2)) > 0).tolist()


@pytest.mark.parametrize("split_qkv", [False, True])
def test_dense_last_block_mixes_no_tokens_and_adds_the_chosen_residual(split_qkv: bool) -> None:
    block, x = _block(split_qkv), torch.randn(2, 6, 16)
    with torch.no_grad():
        # a patch token changes only its own output, whichever residual
        for residual in ("class", "token"):
            assert _changed(block, x, 3, residual) == [i == 3 for i in range(6)]
        # CVPR: the class token's stream is every token's residual; v1: each token's own
        assert all(_changed(block, x, 0, "class"))
        assert _changed(block, x, 0, "token") == [i == 0 for i in range(6)]


def test_dense_last_block_is_the_value_path_plus_the_residual_then_the_mlp() -> None:
    """Against the formula written out from the block's own parameters (packed in-projection)."""
    block, x = _block(False), torch.randn(1, 5, 16)
    with torch.no_grad():
        w_v, b_v = block.attn.in_proj_weight[32:], block.attn.in_proj_bias[32:]
        value = block.attn.out_proj(block.ln_1(x) @ w_v.T + b_v)
        for residual, r in (("class", x[:, :1]), ("token", x)):
            v = value + r
            expected = v + block.mlp(block.ln_2(v))
            torch.testing.assert_close(dense_last_block(block, x, residual), expected)
