"""ResidualAttentionBlock / Transformer: numerics against the reference CLIP block, shapes, slices."""

from __future__ import annotations

import pytest
import torch

from ovss.layers.transformer import ResidualAttentionBlock
from tests.towers._clip_reference import RefBlock, randomize_


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_block_matches_reference(act):
    ref = randomize_(RefBlock(32, 4, act), 4)
    ours = ResidualAttentionBlock(32, 4, act=act)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 6, 32)
    mask = torch.full((6, 6), float("-inf")).triu(1)
    expected = ref(x.transpose(0, 1), mask).transpose(0, 1)
    torch.testing.assert_close(ours(x, attn_mask=mask), expected, rtol=1e-5, atol=1e-5)
