"""bench/common.py: the FLOP counter counts the CPU's fused attention like its explicit-matmul form; the
one timing helper runs warm-ups, timed runs and the device sync in order."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from bench.common import count_flops, device_sync, timed, timeit

from ovss.layers.attention import matmul_attention


def test_cpu_sdpa_counts_the_same_flops_as_explicit_matmuls() -> None:
    q, k, v = torch.randn(2, 3, 10, 16), torch.randn(2, 3, 7, 16), torch.randn(2, 3, 7, 8)
    expected = 2 * 6 * 10 * 7 * (16 + 8)  # q k^T and (scores) v
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == expected  # torch alone: 0
    assert count_flops(lambda: matmul_attention(q, k, v)) == expected
    mask = torch.zeros(2, 3, 10, 7)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)) == expected


def test_timed_runs_the_warmups_then_each_timed_run_between_two_syncs() -> None:
    calls: list[str] = []

    def fn() -> int:
        calls.append("run")
        return len(calls)

    seconds, last = timed(fn, repeat=2, warmup=1, sync=lambda: calls.append("sync"))
    assert calls == ["run", "sync", "run", "sync", "sync", "run", "sync"]
    assert last == 6 and seconds >= 0.0  # the result of the last timed run (the 6th call entry)
    calls.clear()
    timeit(fn, repeat=0, warmup=0)
    assert calls == ["run"]  # at least one timed run
    assert device_sync("cpu") is None
