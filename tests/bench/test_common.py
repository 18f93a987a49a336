"""bench/common.py: the FLOP counter counts the CPU's fused attention like its explicit-matmul form."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from bench.common import count_flops

from ovss.layers.attention import matmul_attention


def test_cpu_sdpa_counts_the_same_flops_as_explicit_matmuls() -> None:
    q, k, v = torch.randn(2, 3, 10, 16), torch.randn(2, 3, 7, 16), torch.randn(2, 3, 7, 8)
    expected = 2 * 6 * 10 * 7 * (16 + 8)  # q k^T and (scores) v
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == expected  # torch alone: 0
    assert count_flops(lambda: matmul_attention(q, k, v)) == expected
    mask = torch.zeros(2, 3, 10, 7)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)) == expected
