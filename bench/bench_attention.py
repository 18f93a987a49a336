"""Attention forms per shape and dtype: SDPA, explicit matmuls, query-blocked matmuls.

The shapes are the attention calls of SAN ViT-B/16 and CAT-Seg ViT-B/16 (whole) at 640x853, as
``bench_segment`` runs them (recorded by wrapping ``F.scaled_dot_product_attention``): q, k, v are the
strided head views ``Attention.project_qkv`` returns. Each form is timed (best of ``--repeat``) in
this process, next to the 2048^3 matmul peak of the same dtype measured in the same process, and its
error is reported against a float64 reference (max |error| / max |reference|); logits have a standard
deviation of ``--logit-std``.

    python -m bench.bench_attention                       # all shapes, fp32 and bf16 (native bf16 CPUs)
    python -m bench.bench_attention --shapes san-side --blocks 64 128 256
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from bench.common import matmul_peak

# name: (batch, heads, tokens, head_dim, mask shape or None, calls per image)
SHAPES: dict[str, tuple[int, int, int, int, tuple[int, ...] | None, int]] = {
    "san-clip": (1, 12, 541, 64, None, 9),
    "san-side": (1, 6, 2260, 40, None, 8),
    "san-rec": (1, 12, 641, 64, (1, 12, 641, 641), 3),
    "catseg-clip": (1, 12, 577, 64, None, 11),
    "catseg-spatial": (16, 4, 144, 32, (1, 1, 144, 144), 8),
    "catseg-spatial-64": (64, 4, 144, 32, None, 2),
}


def make_inputs(shape: str, dtype: torch.dtype, logit_std: float, seed: int = 0):
    """q, k, v as strided head views of one packed (B, L, 3, H, d) projection, and the mask."""
    b, h, n, d, mask_shape, _ = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, n, 3, h, d, generator=g) * math.sqrt(logit_std)
    mask = None
    if mask_shape is not None:
        mask = torch.randn(mask_shape, generator=g)
        mask[..., : n // 8, : n // 8] = -100.0  # blocked entries, as SAN's -100 SOS mask
    q, k, v = qkv.to(dtype).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v, (None if mask is None else mask.to(dtype))


def forms(blocks: list[int]) -> dict[str, object]:
    """name -> fn(q, k, v, mask) for every form measured."""
    from ovss.layers.attention import blocked_attention, matmul_attention

    out: dict[str, object] = {
        "sdpa": lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
        "matmul": lambda q, k, v, m: matmul_attention(q, k, v, m),
        "matmul-f32sc": lambda q, k, v, m: matmul_attention(q, k, v, m, float_scores=True),
    }
    for bq in blocks:
        out[f"blocked{bq}"] = lambda q, k, v, m, bq=bq: blocked_attention(q, k, v, m, block=bq)
    return out


def measure(shape: str, dtype: torch.dtype, args: argparse.Namespace) -> dict[str, tuple[float, ...]]:
    """form -> (best ms, GFLOP/s, relative error) for one shape; forms interleaved round by round."""
    b, h, n, d = SHAPES[shape][:4]
    q, k, v, m = make_inputs(shape, dtype, args.logit_std)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                         attn_mask=None if m is None else m.double())
    fns = forms(args.blocks)
    errors = {name: ((fn(q, k, v, m).double() - ref).abs().max() / ref.abs().max()).item()
              for name, fn in fns.items()}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(args.repeat):  # every form sees the same load
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(q, k, v, m)
            best[name] = min(best[name], time.perf_counter() - start)
    flop = 4 * b * h * n * n * d
    return {name: (best[name] * 1e3, flop / best[name] / 1e9, errors[name]) for name in fns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--dtypes", nargs="+", default=None, help="fp32 bf16 (default: bf16 only if native)")
    parser.add_argument("--blocks", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--logit-std", type=float, default=3.0)
    args = parser.parse_args()
    from ovss.cpu import native_bf16_cpu

    torch.set_num_threads(args.threads)
    dtypes = args.dtypes or (["fp32", "bf16"] if native_bf16_cpu() else ["fp32"])
    print(f"{args.threads} threads; native bf16: {native_bf16_cpu()}")
    print(f"{'shape':18} {'dtype':5} {'form':12} {'ms':>8} {'GFLOP/s':>8} {'% peak':>7} {'rel err':>9}")
    for dname in dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dname]
        peak = matmul_peak(dtype)
        for shape in args.shapes:
            for name, (ms, gfs, err) in measure(shape, dtype, args).items():
                pct = 100 * gfs / peak
                print(f"{shape:18} {dname:5} {name:12} {ms:8.2f} {gfs:8.1f} {pct:7.1f} {err:9.2e}")
        print(f"({dname} peak {peak:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
