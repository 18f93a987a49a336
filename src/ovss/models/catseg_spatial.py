"""CAT-Seg's spatial aggregation: guided (shifted) window attention in Swin blocks, per class slice.

Official reference: ``cat_seg/modeling/transformer/model.py`` (``SwinTransformerBlockWrapper``) of
cvlab-kaist/CAT-Seg @ 6d3a188; the window helpers are :mod:`ovss.layers.window`. Used by
:mod:`ovss.models.catseg_aggregator` (both CAT-Seg versions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ovss.layers.attention import matmul_attention, prefers_matmul
from ovss.layers.window import shift_window_mask, window_merge, window_partition

SPATIAL_CHUNK = 16  # class slices per pass through the spatial aggregation (memory bound, exact)


class GuidedWindowAttention(nn.Module):
    """Window self-attention whose queries and keys also see a guidance feature; no position bias.

    Args:
        dim: feature width C.
        guidance_dim: guidance width G (concatenated to the normalised features for q and k).
        heads: attention heads (C divisible by heads).
    """

    def __init__(self, dim: int, guidance_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _guided(self, linear: nn.Linear, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """``linear(cat([x, g], -1))`` without the concatenation; the guidance part once per image.

        x: (B, T, nW, L, C), guidance: (B, nW, L, G) -> (B, T, nW, L, C).
        """
        c = x.shape[-1]
        y = F.linear(x, linear.weight[:, :c])
        return y.add_(F.linear(guidance, linear.weight[:, c:], linear.bias).unsqueeze(1))

    def forward(self, x: torch.Tensor, guidance: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attend within windows.

        Args:
            x: (N, nW, L, C) windowed features of N = B*T class slices (image index outer).
            guidance: (B, nW, L, G) windowed guidance, shared by the T class slices of an image.
            mask: optional additive (nW, L, L).

        Returns:
            (N, nW, L, C).
        """
        n, nw, length, c = x.shape
        b = guidance.shape[0]
        xt = x.reshape(b, n // b, nw, length, c)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (N*nW, heads, L, d): 4-D keeps SDPA on its fast kernel
            return t.reshape(n * nw, length, self.heads, -1).transpose(1, 2)

        q, k = heads(self._guided(self.q, xt, guidance)), heads(self._guided(self.k, xt, guidance))
        v = heads(self.v(x))
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v)
            out = out.transpose(1, 2).reshape(n, nw, length, c)
        elif prefers_matmul(q, k):  # bf16 CPU: one batched call, the (nW, 1, L, L) mask broadcast over N
            q, k, v = (t.unflatten(0, (n, nw)) for t in (q, k, v))
            out = matmul_attention(q, k, v, mask.to(q.dtype).unsqueeze(1))  # (N, nW, heads, L, d)
            out = out.transpose(2, 3).reshape(n, nw, length, c)
        else:  # one call per window: the (L, L) mask broadcasts over the N slices without a copy
            mask = mask.to(q.dtype).unsqueeze(1)  # (nW, 1, L, L): SDPA's fast CPU kernel wants 4-D masks
            q, k, v = (t.unflatten(0, (n, nw)) for t in (q, k, v))
            out = torch.stack(
                [
                    F.scaled_dot_product_attention(q[:, i], k[:, i], v[:, i], attn_mask=mask[i : i + 1])
                    .transpose(1, 2)
                    .reshape(n, length, c)
                    for i in range(nw)
                ],
                dim=1,
            )
        return self.proj(out)


class _MLP(nn.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, dim: int, hidden: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim)."""
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-LN Swin block with appearance guidance: window attention (optionally shifted) + GELU MLP.

    Args:
        dim: feature width C; guidance_dim: G; heads: attention heads.
        resolution: (H, W) token grid; window: window side; shift: cyclic shift (0 = none).
            As in Swin, a grid no larger than the window uses one unshifted window.
    """

    def __init__(
        self, dim: int, guidance_dim: int, heads: int, resolution: tuple[int, int], window: int, shift: int
    ) -> None:
        super().__init__()
        if min(resolution) <= window:
            window, shift = min(resolution), 0
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GuidedWindowAttention(dim, guidance_dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _MLP(dim, 4 * dim, nn.GELU)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """(N, H, W, C) features of N = B*T class slices, (B, H, W, G) guidance -> (N, H, W, C).

        Officially the normalised features and the guidance are concatenated before the shift and
        the window partition; both are pure data movement, so they are applied to each part alone
        and the guidance is processed once per image instead of once per class.
        """
        _, h, w, _ = x.shape
        y, g = self.norm1(x), guidance
        mask = None
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
            g = torch.roll(g, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask = shift_window_mask(h, w, self.window, self.shift, x.dtype, x.device)
        y = self.attn(window_partition(y, self.window), window_partition(g, self.window), mask)
        y = window_merge(y, self.window, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class SpatialAggregation(nn.Module):
    """Two Swin blocks (unshifted, then shifted by window // 2) on each class slice of the cost."""

    def __init__(
        self, dim: int, guidance_dim: int, heads: int, resolution: tuple[int, int], window: int
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, guidance_dim, heads, resolution, window, shift) for shift in (0, window // 2)
        )
        self.guidance_norm = nn.LayerNorm(guidance_dim)

    def forward(self, cost: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """Aggregate over space.

        Args:
            cost: (B, T, H, W, C).
            guidance: (B, G, H, W) projected appearance guidance.

        Returns:
            (B, T, H, W, C), stored class-innermost ((B, H, W, T, C) in memory, a permuted view) so
            that the class aggregation reads its per-pixel class sequences without a copy.

        Every op is per class slice, so the classes run in chunks of about ``SPATIAL_CHUNK`` slices:
        the activations of a chunk stay a few MB (cache-resident, no page faults of fresh
        allocations) instead of (B*T, H, W, 4C) tensors of hundreds of MB. Exact (the same
        per-slice arithmetic; only the batch of the matrix products changes).
        """
        b, t, h, w, c = cost.shape
        g = self.guidance_norm(guidance.permute(0, 2, 3, 1))  # (B, H, W, G), same for every class
        if torch.jit.is_tracing():  # export: one pass over all classes (one graph for every T)
            x = cost.reshape(b * t, h, w, c)
            for block in self.blocks:
                x = block(x, g)
            return x.reshape(b, t, h, w, c)
        out = cost.new_empty(b, h, w, t, c).permute(0, 3, 1, 2, 4)  # (B, T, H, W, C) view
        step = max(1, SPATIAL_CHUNK // b)
        for start in range(0, t, step):
            x = cost[:, start : start + step]
            n = x.shape[1]
            x = x.reshape(b * n, h, w, c)
            for block in self.blocks:
                x = block(x, g)
            out[:, start : start + n] = x.reshape(b, n, h, w, c)
        return out
