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


def test_a_block_with_zero_attention_and_mlp_outputs_is_the_identity():
    """Pre-LN residual form: x + attn(ln_1(x)) + mlp(...) is x when both branches end in zero layers."""
    block = ResidualAttentionBlock(16, 2)
    with torch.no_grad():
        block.attn.out_proj.weight.zero_()
        block.attn.out_proj.bias.zero_()
        block.mlp.c_proj.weight.zero_()
        block.mlp.c_proj.bias.zero_()
    x = torch.randn(2, 5, 16)
    assert torch.equal(block(x), x)


def test_a_one_token_block_by_hand():
    """One token attends only to itself: attn(y) = out_proj(v_proj(y)). With identity projections and
    zero biases the block is x + ln_1(x) + mlp(ln_2(x + ln_1(x)))."""
    import torch.nn.functional as F

    width = 4
    block = ResidualAttentionBlock(width, 1, mlp_ratio=1.0, act="gelu")
    with torch.no_grad():
        block.attn.in_proj_weight.copy_(torch.eye(width).repeat(3, 1))
        block.attn.in_proj_bias.zero_()
        block.attn.out_proj.weight.copy_(torch.eye(width))
        block.attn.out_proj.bias.zero_()
        block.mlp.c_fc.weight.copy_(torch.eye(width))
        block.mlp.c_fc.bias.zero_()
        block.mlp.c_proj.weight.copy_(2 * torch.eye(width))
        block.mlp.c_proj.bias.zero_()
    x = torch.tensor([[[1.0, 2.0, 3.0, 6.0]]])
    # ln of (1, 2, 3, 6): mean 3, variance 3.5
    y = (x - 3) / (3.5 + 1e-5) ** 0.5
    h = x + y
    z = (h - h.mean()) / (h.var(unbiased=False) + 1e-5) ** 0.5
    torch.testing.assert_close(block(x), h + 2 * F.gelu(z), rtol=1e-5, atol=1e-5)


def test_transformer_runs_a_slice_of_its_blocks():
    from ovss.layers.transformer import Transformer

    torch.manual_seed(0)
    stack = Transformer(8, 3, 2, act="gelu")
    assert (stack.width, stack.layers, len(stack.resblocks)) == (8, 3, 3)
    x = torch.randn(2, 4, 8)
    by_hand = stack.resblocks[2](stack.resblocks[1](stack.resblocks[0](x)))
    torch.testing.assert_close(stack(x), by_hand)
    torch.testing.assert_close(stack(stack(x, stop=1), start=1), by_hand)
    assert torch.equal(stack(x, start=2, stop=2), x)  # an empty slice


def test_is_causal_equals_the_causal_mask_through_the_stack():
    from ovss.layers.transformer import Transformer

    torch.manual_seed(1)
    stack = Transformer(8, 2, 2)
    x = torch.randn(1, 5, 8)
    mask = torch.full((5, 5), float("-inf")).triu(1)
    torch.testing.assert_close(stack(x, is_causal=True), stack(x, attn_mask=mask), rtol=1e-5, atol=1e-6)
    # causal: the first token's output does not depend on later tokens
    changed = x.clone()
    changed[:, 1:] += 1.0
    torch.testing.assert_close(stack(changed, is_causal=True)[:, 0], stack(x, is_causal=True)[:, 0])
