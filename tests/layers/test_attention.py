"""Attention: numerics against nn.MultiheadAttention, packed vs split, masks, dtypes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ovss.layers.attention as attention_mod
from ovss.layers.attention import (
    Attention,
    blocked_attention,
    matmul_attention,
    pack_in_proj,
    prefers_matmul,
    split_in_proj,
)
from ovss.layers.transformer import ResidualAttentionBlock
from tests.towers._clip_reference import randomize_


def _mha_pair(width=32, heads=4, seed=0):
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(width, heads)
    randomize_(ref, seed)
    ours = Attention(width, heads)
    ours.load_state_dict(ref.state_dict(), strict=True)  # same names and shapes as torch's layout
    return ref, ours


def test_matches_multihead_attention_no_mask():
    ref, ours = _mha_pair()
    x = torch.randn(2, 7, 32)
    expected = ref(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), need_weights=False)[0]
    got = ours(x)
    torch.testing.assert_close(got, expected.transpose(0, 1), rtol=1e-5, atol=1e-5)
    assert got.abs().mean() > 1e-2  # non-trivial output


def test_matches_multihead_attention_with_additive_mask():
    ref, ours = _mha_pair(seed=1)
    x = torch.randn(3, 6, 32)
    mask = torch.randn(6, 6)
    mask[0, 3:] = float("-inf")
    xs = x.transpose(0, 1)
    expected = ref(xs, xs, xs, need_weights=False, attn_mask=mask)[0].transpose(0, 1)
    torch.testing.assert_close(ours(x, attn_mask=mask), expected, rtol=1e-5, atol=1e-5)
    # A per-sample, per-head mask (B, heads, L, L) equals MHA's (B*heads, L, L) form.
    mask4 = torch.randn(3, 4, 6, 6)
    expected4 = ref(xs, xs, xs, need_weights=False, attn_mask=mask4.reshape(12, 6, 6))[0].transpose(0, 1)
    torch.testing.assert_close(ours(x, attn_mask=mask4), expected4, rtol=1e-5, atol=1e-5)
    # and the mask actually changes the result
    assert (ours(x, attn_mask=mask4) - ours(x)).abs().max() > 1e-3


def test_bool_mask_is_refused():
    _, ours = _mha_pair()
    with pytest.raises(TypeError, match="additive float"):
        ours(torch.randn(1, 4, 32), attn_mask=torch.ones(4, 4, dtype=torch.bool))


def test_packed_and_split_are_identical():
    _, packed = _mha_pair(seed=2)
    split = Attention(32, 4, split_qkv=True)
    sd = split_in_proj(packed.state_dict())
    assert set(sd) == set(split.state_dict())
    split.load_state_dict(sd, strict=True)
    x = torch.randn(2, 5, 32)
    assert torch.equal(split(x), packed(x))
    for a, b in zip(split.project_qkv(x), packed.project_qkv(x)):
        assert a.shape == (2, 4, 5, 8)
        assert torch.equal(a, b)
    back = pack_in_proj(split.state_dict())
    assert list(back) == list(packed.state_dict())
    for k, v in packed.state_dict().items():
        assert torch.equal(back[k], v)


def test_pack_in_proj_reports_missing_part():
    split = Attention(8, 2, split_qkv=True).state_dict()
    del split["v_proj_weight"]
    with pytest.raises(KeyError, match="v_proj_weight"):
        pack_in_proj(split)


def test_project_qkv_scaled_dot_product_by_hand():
    _, ours = _mha_pair(seed=3)
    x = torch.randn(1, 4, 32)
    q, k, v = ours.project_qkv(x)
    w = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1)
    by_hand = ours.out_proj((w @ v).transpose(1, 2).reshape(1, 4, 32))
    torch.testing.assert_close(ours(x), by_hand, rtol=1e-5, atol=1e-6)


def test_bfloat16_runs_and_is_close():
    _, ours = _mha_pair(seed=5)
    x = torch.randn(2, 5, 32)
    y32 = ours(x, attn_mask=torch.zeros(5, 5))
    y16 = ours.to(torch.bfloat16)(x.bfloat16(), attn_mask=torch.zeros(5, 5))  # fp32 mask is cast
    assert y16.dtype == torch.bfloat16
    assert (y16.float() - y32).norm() / y32.norm() < 3e-2


def test_is_causal_equals_the_materialised_causal_mask():
    _, ours = _mha_pair(seed=3)
    block = ResidualAttentionBlock(32, 4)
    randomize_(block, 3)
    x = torch.randn(3, 9, 32)
    mask = torch.full((9, 9), float("-inf")).triu(1)
    torch.testing.assert_close(ours(x, is_causal=True), ours(x, attn_mask=mask), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(block(x, is_causal=True), block(x, attn_mask=mask), rtol=1e-6, atol=1e-6)
    assert (ours(x, is_causal=True) - ours(x)).abs().max() > 1e-3  # the mask matters
    with pytest.raises(ValueError, match="not both"):
        ours(x, attn_mask=mask, is_causal=True)


def _heads(b=2, h=3, n=37, d=8, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, n, 3, h, d, generator=g) * scale
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # strided views, as Attention.project_qkv gives


@pytest.mark.parametrize("mask_shape", [None, (1, 3, 37, 37), (2, 1, 37, 37), (37, 37), (1, 1, 1, 37)])
def test_matmul_and_blocked_attention_match_sdpa(mask_shape):
    q, k, v = _heads()
    mask = None if mask_shape is None else torch.randn(mask_shape) * 3
    if mask is not None:
        mask[..., :5] = -100.0  # SAN's "blocked" value
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(matmul_attention(q, k, v, mask), ref, rtol=1e-5, atol=1e-5)
    for block in (1, 8, 16, 37, 64):  # one row at a time up to one block for all
        got = blocked_attention(q, k, v, mask, block=block)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    merged = blocked_attention(q, k, v, mask, block=8).transpose(1, 2)
    assert merged.is_contiguous()  # written in the layout merge() reshapes without a copy


def test_matmul_attention_broadcasts_a_mask_over_leading_dimensions():
    q, k, v = _heads(b=6, h=2, n=11)
    q5, k5, v5 = (t.unflatten(0, (3, 2)) for t in (q, k, v))  # (N, nW, heads, L, d), as CAT-Seg's windows
    mask = torch.randn(2, 1, 11, 11)  # (nW, 1, L, L)
    got = matmul_attention(q5, k5, v5, mask)
    for i in range(2):
        ref = F.scaled_dot_product_attention(q5[:, i], k5[:, i], v5[:, i], attn_mask=mask[i : i + 1])
        torch.testing.assert_close(got[:, i], ref, rtol=1e-5, atol=1e-5)


def test_prefers_matmul_only_for_reduced_precision_cpu_and_short_keys(monkeypatch):
    q, k, _ = _heads()
    assert not prefers_matmul(q, k)  # float32: SDPA, the parity path
    q16, k16 = q.bfloat16(), k.bfloat16()
    assert prefers_matmul(q16, k16) and prefers_matmul(q.half(), k.half())
    monkeypatch.setattr(attention_mod, "MATMUL_MAX_KEYS", 36)  # 37 keys: too many for the matmul form
    assert not prefers_matmul(q16, k16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_forms_are_bounded_by_the_exact_path(dtype):
    q, k, v = _heads(n=300, d=16, seed=4)
    mask = torch.randn(1, 3, 300, 300)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask.double())
    low = [t.to(dtype) for t in (q, k, v, mask)]
    for got in (matmul_attention(*low), blocked_attention(*low, block=64)):
        assert got.dtype == dtype
        error = ((got.double() - ref).abs().max() / ref.abs().max()).item()
        assert error < 4e-2, error  # scores rounded to the dtype before the softmax; measured 1-2e-2


def test_attention_module_keeps_sdpa_in_every_dtype():
    """SAN's bf16 error quadruples with bf16-rounded scores, so the module never takes the matmul form."""
    _, ours = _mha_pair(seed=6)
    x = torch.randn(2, 40, 32)
    mask = torch.randn(2, 4, 40, 40)
    for dtype in (torch.float32, torch.bfloat16):
        m = ours.to(dtype)
        q, k, v = m.project_qkv(x.to(dtype))
        sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(dtype))
        assert torch.equal(m(x.to(dtype), attn_mask=mask), m.merge(sdpa))


def test_float_scores_are_closer_to_the_exact_path():
    q, k, v = (t.bfloat16() for t in _heads(n=200, d=16, seed=7, scale=3.0))
    mask = torch.randn(1, 3, 200, 200).bfloat16()
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask.double())

    def error(got):
        return ((got.double() - ref).abs().max() / ref.abs().max()).item()

    accurate, fast = matmul_attention(q, k, v, mask, float_scores=True), matmul_attention(q, k, v, mask)
    assert error(accurate) < 0.5 * error(fast)
