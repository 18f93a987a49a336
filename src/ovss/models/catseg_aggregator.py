"""CAT-Seg (CVPR 2024) cost aggregation: cost volume, spatial + class aggregation, upsampling decoder.

Reads: pure functions (cost volume, linear attention) -> blocks -> Aggregator; the window helpers
are :mod:`ovss.layers.window`.
Official reference: ``cat_seg/modeling/transformer/model.py`` of cvlab-kaist/CAT-Seg @ 6d3a188.

Internal cost layout is channels-last ``(B, T, H, W, C)`` (T classes); the official code keeps
``(B, C, T, H, W)``. Every op is per class, per pixel or per window, so the numerics are the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ovss.layers.attention import matmul_attention, prefers_matmul
from ovss.layers.window import shift_window_mask, window_merge, window_partition

# The decoder blocks live in catseg_decoder; re-exported here for the models built on this module.
from ovss.models.catseg_decoder import DECODER_CHUNK, UpBlock, _conv_relu

SPATIAL_CHUNK = 16  # class slices per pass through the spatial aggregation (memory bound, exact)
PIXEL_CHUNK_ELEMENTS = 1 << 19  # elements of one pixel chunk (pixels x classes x C) of the class aggregation


def cost_volume(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pixel embedding with every class/template text embedding.

    Args:
        image: (B, E, H, W) dense image embeddings (any norm).
        text: (B, T, P, E) text embeddings (any norm).

    Returns:
        (B, P, T, H, W) cosine similarities in [-1, 1], no temperature.
    """
    image = F.normalize(image, dim=1)
    text = F.normalize(text, dim=-1)
    return torch.einsum("bchw,btpc->bpthw", image, text)


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eps: float = 1e-6,
    pad: tuple[torch.Tensor, torch.Tensor, int] | None = None,
) -> torch.Tensor:
    """Kernelised attention of Katharopoulos et al. with feature map elu(x) + 1.

    ``out_l = phi(q_l) . sum_s phi(k_s) v_s^T / (phi(q_l) . sum_s phi(k_s) + eps)``. As in the
    official code, v is divided by the sequence length S before the sums and the result multiplied
    back afterwards (keeps half-precision sums in range; identical maths).

    Args:
        q: (N, heads, L, D); k: (N, heads, S, D); v: (N, heads, S, Dv).
        eps: added to the normaliser.
        pad: optional ``(k_pad, v_pad, n)``: ``n`` further identical key/value pairs, each
            broadcastable to (N, heads, 1, D) / (N, heads, 1, Dv); they count in S. Equivalent to
            concatenating them ``n`` times to ``k`` and ``v``, at the cost of one.

    Returns:
        (N, heads, L, Dv).
    """
    q = F.elu(q) + 1
    k = F.elu(k) + 1
    length = v.shape[-2] + (pad[2] if pad is not None else 0)
    kv = k.transpose(-1, -2) @ (v / length)  # (N, heads, D, Dv)
    k_sum = k.sum(dim=-2, keepdim=True)  # (N, heads, 1, D)
    if pad is not None:
        k_pad = F.elu(pad[0]) + 1
        kv = kv + pad[2] * (k_pad.transpose(-1, -2) @ (pad[1] / length))
        k_sum = k_sum + pad[2] * k_pad
    norm = 1.0 / ((q @ k_sum.transpose(-1, -2)) + eps)  # (N, heads, L, 1)
    return (q @ kv) * norm * length


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


class ClassAttention(nn.Module):
    """Attention across the class axis at each pixel; q and k also see the text guidance."""

    def __init__(self, dim: int, guidance_dim: int, heads: int, kind: str) -> None:
        super().__init__()
        self.heads = heads
        self.kind = kind
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)

    def _guided(self, linear: nn.Linear, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``linear(cat([x, g], -1))`` without materialising the concatenation: g is per class, x per pixel.

        x: (B, P, T, C), g: (B, 1, T, G) -> (B, P, T, out).
        """
        c = x.shape[-1]
        return F.linear(x, linear.weight[:, :c]) + F.linear(g, linear.weight[:, c:], linear.bias)

    def forward(
        self, x: torch.Tensor, guidance: torch.Tensor, pad: tuple[torch.Tensor, torch.Tensor, int] | None
    ) -> torch.Tensor:
        """Attend over the classes of every pixel.

        Args:
            x: (B, P, T, C) normalised features of P pixels; guidance: (B, T, G).
            pad: optional ``(x_pad (C,), g_pad (G,), n)``: ``n`` extra class tokens, all equal to the
                (normalised) padding token with the padding guidance. They are attended to but
                produce no output (the official code drops them afterwards).

        Returns:
            (B, P, T, C).
        """
        b, p, t, c = x.shape
        g = guidance.unsqueeze(1)

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(*y.shape[:-1], self.heads, -1).transpose(-2, -3)  # (..., heads, T, d)

        q, k, v = heads(self._guided(self.q, x, g)), heads(self._guided(self.k, x, g)), heads(self.v(x))
        extra = None
        if pad is not None:
            xg = torch.cat(pad[:2], dim=-1).reshape(1, 1, 1, -1)
            extra = (heads(self.k(xg)), heads(self.v(pad[0].reshape(1, 1, 1, -1))), pad[2])
        if self.kind == "linear":
            out = linear_attention(q, k, v, pad=extra)
        else:
            mask = None
            if extra is not None:  # one pad key weighted by its multiplicity: + log(n) on its logits
                k = torch.cat([k, extra[0].expand(b, p, -1, -1, -1)], dim=-2)
                v = torch.cat([v, extra[1].expand(b, p, -1, -1, -1)], dim=-2)
                mask = torch.zeros(t + 1, dtype=q.dtype, device=q.device)
                n = extra[2]  # export: a traced count that may be 0 (log 0 = -inf: no weight)
                mask[-1] = torch.log(n.to(q.dtype)) if isinstance(n, torch.Tensor) else math.log(n)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(-2, -3).reshape(b, p, t, c)


def pooled_class_update(
    cost: torch.Tensor, pool: tuple[int, int], update: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """The class aggregation's frame: average-pool, per-pixel class update, upsample, residual.

    Args:
        cost: (B, T, H, W, C).
        pool: (kh, kw) average-pooling window and stride ((1, 1): no pooling).
        update: maps the (B, pixels, T, C) pooled class sequences to their updated values.

    Returns:
        ``cost + Up(update(pool(cost)))`` (B, T, H, W, C), Up bilinear with aligned corners (the
        official ``x + Up(pool(x) + delta)`` quirk when ``update`` is residual).
    """
    b, t, h, w, c = cost.shape
    x = cost
    if tuple(pool) != (1, 1):
        x = F.avg_pool2d(cost.reshape(b * t, h, w, c).permute(0, 3, 1, 2), pool)
        x = x.permute(0, 2, 3, 1).reshape(b, t, x.shape[-2], x.shape[-1], c)
    hp, wp = x.shape[2], x.shape[3]
    x = update(x.permute(0, 2, 3, 1, 4).reshape(b, hp * wp, t, c))  # (B, pixels, T, C)
    x = x.reshape(b, hp, wp, t, c).permute(0, 3, 1, 2, 4)  # (B, T, h, w, C)
    if (hp, wp) != (h, w):
        x = x.reshape(b * t, hp, wp, c).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)
        x = x.permute(0, 2, 3, 1).reshape(b, t, h, w, c)
    return cost + x


class ClassAggregation(nn.Module):
    """Class aggregation on an average-pooled cost, padded to a fixed class budget.

    The sequence of classes at each pooled pixel is padded to ``pad_len`` with one learned token
    (and the guidance with one learned vector); padded positions are dropped after the block. All
    padded positions are identical, so they are folded into the attention as one key/value with
    multiplicity ``pad_len - T`` (exact; see :func:`linear_attention`) instead of being materialised.
    Official quirk kept on purpose: the output is ``x + Up(pool(x) + delta)``, not ``x + Up(delta)``
    (model.py ``ClassTransformerLayer.forward``: ``x = x + x_pool`` after the residual updates).

    Args:
        dim: cost width C; guidance_dim: text guidance width G; heads: attention heads.
        kind: "linear" (released models) or "full" softmax attention.
        pad_len: class budget (0 disables padding).
    """

    def __init__(self, dim: int, guidance_dim: int, heads: int, kind: str, pad_len: int) -> None:
        super().__init__()
        self.pad_len = pad_len
        self.attn = ClassAttention(dim, guidance_dim, heads, kind)
        self.mlp = _MLP(dim, 4 * dim, nn.ReLU)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.pad_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pad_guidance = nn.Parameter(torch.zeros(1, 1, guidance_dim))

    def forward(self, cost: torch.Tensor, guidance: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        """Aggregate over classes.

        Args:
            cost: (B, T, H, W, C).
            guidance: (B, T, G) projected text guidance.
            pool: (kh, kw) average-pooling window and stride ((1, 1) at test time).

        Returns:
            (B, T, H, W, C).
        """
        t, c = cost.shape[1], cost.shape[4]
        pad = None
        if (self.pad_len > 0 and torch.jit.is_tracing()) or t < self.pad_len:  # export: count may be 0
            pad_x = self.norm1(self.pad_token.to(cost.dtype)).reshape(c)
            pad = (pad_x, self.pad_guidance.to(cost.dtype).reshape(-1), self.pad_len - t)
        if tuple(pool) == (1, 1) and not torch.jit.is_tracing():
            return self._unpooled(cost, guidance, pad)

        def update(x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.norm1(x), guidance, pad)
            return x + self.mlp(self.norm2(x))

        return pooled_class_update(cost, pool, update)

    def _unpooled(
        self, cost: torch.Tensor, guidance: torch.Tensor, pad: tuple[torch.Tensor, torch.Tensor, int] | None
    ) -> torch.Tensor:
        """:meth:`forward` without pooling, in chunks of pixels (pixels do not interact here).

        Each chunk of (B, p, T, C) class sequences (``PIXEL_CHUNK_ELEMENTS``) goes through the
        attention and the MLP while it is in cache; the result ``cost + (y + attn + mlp)`` is written
        class-innermost ((B, H, W, T, C) in memory, returned as a (B, T, H, W, C) view).
        """
        b, t, h, w, c = cost.shape
        x = cost.permute(0, 2, 3, 1, 4).reshape(b, h * w, t, c)  # (B, pixels, T, C); a view when
        # the cost is class-innermost (the spatial aggregation's output)
        out = torch.empty(b, h * w, t, c, dtype=cost.dtype, device=cost.device)
        step = max(1, PIXEL_CHUNK_ELEMENTS // (b * t * c))
        for start in range(0, h * w, step):
            y = x[:, start : start + step]
            z = y + self.attn(self.norm1(y), guidance, pad)
            z = z + self.mlp(self.norm2(z))
            torch.add(y, z, out=out[:, start : start + step])
        return out.reshape(b, h, w, t, c).permute(0, 3, 1, 2, 4)


class AggregatorLayer(nn.Module):
    """Spatial aggregation then class aggregation."""

    def __init__(
        self,
        dim: int,
        appearance_dim: int,
        text_dim: int,
        heads: int,
        resolution: tuple[int, int],
        window: int,
        kind: str,
        pad_len: int,
    ) -> None:
        super().__init__()
        self.spatial = SpatialAggregation(dim, appearance_dim, heads, resolution, window)
        self.classes = ClassAggregation(dim, text_dim, heads, kind, pad_len)

    def forward(
        self, cost: torch.Tensor, appearance: torch.Tensor, text: torch.Tensor, pool: tuple[int, int]
    ) -> torch.Tensor:
        """(B, T, H, W, C) cost, (B, Ga, H, W) appearance, (B, T, Gt) text guidance -> (B, T, H, W, C)."""
        return self.classes(self.spatial(cost, appearance), text, pool)


def build_aggregator_modules(
    module: nn.Module,
    *,
    embed_dim: int,
    prompt_channels: int,
    appearance_dim: int,
    guidance_dims: tuple[int, int],
    hidden_dim: int,
    appearance_proj_dim: int,
    text_proj_dim: int,
    guidance_proj_dims: tuple[int, int],
    decoder_dims: tuple[int, int],
    layer: Callable[[], nn.Module],
    num_layers: int,
) -> None:
    """Register an aggregator's submodules on ``module`` (CVPR :class:`Aggregator` and CAT-Seg v1).

    In this order (it fixes the state-dict order and the random initialisation): ``cost_embed``,
    ``appearance_proj`` (from ``appearance_dim`` channels), ``text_proj``, ``decoder_guidance_proj``,
    ``layers`` (``num_layers`` calls of ``layer``), ``decoder`` (two :class:`UpBlock`) and ``head``.
    """
    module.cost_embed = nn.Conv2d(prompt_channels, hidden_dim, kernel_size=7, padding=3)
    module.appearance_proj = _conv_relu(appearance_dim, appearance_proj_dim)
    module.text_proj = nn.Sequential(nn.Linear(embed_dim, text_proj_dim), nn.ReLU())
    module.decoder_guidance_proj = nn.ModuleList(
        _conv_relu(d, p) for d, p in zip(guidance_dims, guidance_proj_dims)
    )
    module.layers = nn.ModuleList(layer() for _ in range(num_layers))
    module.decoder = nn.ModuleList(
        [
            UpBlock(hidden_dim, decoder_dims[0], guidance_proj_dims[0]),
            UpBlock(decoder_dims[0], decoder_dims[1], guidance_proj_dims[1]),
        ]
    )
    module.head = nn.Conv2d(decoder_dims[1], 1, kernel_size=3, padding=1)


class Aggregator(nn.Module):
    """Cost volume -> embedding -> N x (spatial, class) aggregation -> upsampling decoder -> logits.

    Args:
        embed_dim: CLIP joint embedding width E (image and text features).
        prompt_channels: P, templates per class (1 for the released models).
        hidden_dim: cost embedding width C.
        appearance_proj_dim / text_proj_dim: projected guidance widths.
        guidance_dims: channels of the two decoder guidance maps (stride 8 and stride 4).
        guidance_proj_dims: their projected widths.
        decoder_dims: output channels of the two decoder blocks.
        num_layers, heads, resolution, window: aggregator depth, heads, cost grid, Swin window.
        attention: class attention kind, "linear" or "full".
        pad_len: class budget (see :meth:`forward`).
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        prompt_channels: int,
        hidden_dim: int,
        appearance_proj_dim: int,
        text_proj_dim: int,
        guidance_dims: tuple[int, int],
        guidance_proj_dims: tuple[int, int],
        decoder_dims: tuple[int, int],
        num_layers: int,
        heads: int,
        resolution: tuple[int, int],
        window: int,
        attention: str,
        pad_len: int,
    ) -> None:
        super().__init__()
        self.pad_len = pad_len
        build_aggregator_modules(
            self,
            embed_dim=embed_dim,
            prompt_channels=prompt_channels,
            appearance_dim=embed_dim,
            guidance_dims=guidance_dims,
            hidden_dim=hidden_dim,
            appearance_proj_dim=appearance_proj_dim,
            text_proj_dim=text_proj_dim,
            guidance_proj_dims=guidance_proj_dims,
            decoder_dims=decoder_dims,
            layer=lambda: AggregatorLayer(
                hidden_dim, appearance_proj_dim, text_proj_dim, heads, resolution, window, attention, pad_len
            ),
            num_layers=num_layers,
        )

    def image_guidance(
        self, image: torch.Tensor, guidance: tuple[torch.Tensor, torch.Tensor]
    ) -> dict[str, Any]:
        """The image-only inputs of :meth:`forward` (a re-query computes them once per image).

        Returns:
            ``{"appearance": (B, Ga, h, w), "decoder": [projected decoder guidance maps], "terms":
            [each decoder block's guidance part of its first conv]}``.
        """
        decoder_guidance = [proj(g) for proj, g in zip(self.decoder_guidance_proj, guidance)]
        return {
            "appearance": self.appearance_proj(image),
            "decoder": decoder_guidance,
            "terms": [block.guidance_term(g) for block, g in zip(self.decoder, decoder_guidance)],
        }

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        guidance: tuple[torch.Tensor, torch.Tensor],
        pool: tuple[int, int] = (1, 1),
        prepared: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Per-class logits.

        Class budget: with more than ``pad_len`` classes, each image keeps the ``pad_len`` classes
        with the highest maximum cosine (over templates and pixels); the others get logit -100.
        With fewer, the class aggregation pads to ``pad_len`` with learned tokens.

        Args:
            image: (B, E, h, w) dense CLIP image embedding (also the appearance guidance).
            text: (B, T, P, E) text embeddings.
            guidance: decoder guidance maps (B, guidance_dims[0], 2h, 2w), (B, guidance_dims[1], 4h, 4w).
            pool: class-aggregation pooling window ((2, 2) in training, (1, 1) at test).
            prepared: :meth:`image_guidance` of ``image`` and ``guidance`` (computed when None).

        Returns:
            (B, T, 4h, 4w) logits.
        """
        b, t = text.shape[:2]
        corr = cost_volume(image, text)  # (B, P, T, h, w)
        keep = None
        # ONNX export (jit tracing): one graph for every T, so always top-k (a permutation below the budget)
        tracing = torch.jit.is_tracing()
        if self.pad_len > 0 and (tracing or self.pad_len < t):
            score = corr.amax(dim=(1, 3, 4))  # (B, T)
            kept = torch.clamp(torch.as_tensor(t), max=self.pad_len) if tracing else self.pad_len
            keep = score.topk(kept, dim=1).indices  # (B, min(T, pad_len))
            index = keep[:, :, None, None].expand(-1, -1, *text.shape[2:])
            text = torch.gather(F.normalize(text, dim=-1), 1, index)
            index = keep[:, None, :, None, None].expand(-1, corr.shape[1], -1, *corr.shape[3:])
            corr = torch.gather(corr, 2, index)
        tk, (h, w) = corr.shape[2], corr.shape[-2:]
        cost = self.cost_embed(corr.transpose(1, 2).reshape(b * tk, -1, h, w))  # (B*T, C, h, w)
        cost = cost.reshape(b, tk, -1, h, w).permute(0, 1, 3, 4, 2)  # (B, T, h, w, C)

        prepared = prepared if prepared is not None else self.image_guidance(image, guidance)
        appearance, decoder_guidance = prepared["appearance"], prepared["decoder"]
        text_guidance = self.text_proj(F.normalize(text.mean(dim=2), dim=-1))  # (B, T, Gt)

        for layer in self.layers:
            cost = layer(cost, appearance, text_guidance, pool)

        # The decoder is per class (convolutions and GroupNorm see one class slice at a time): run it
        # on fixed chunks of classes so its (B*T, C, 4h, 4w) activations stay small, channels-last
        # (the cost is already channels-last: no permute copy, and the convolutions' native layout).
        # The guidance's part of each block's first conv is computed once per image.
        terms = prepared["terms"]
        chunks = []
        step = tk if tracing else max(1, DECODER_CHUNK // b)  # export: all classes in one pass (any T)
        for start in [0] if tracing else range(0, tk, step):
            y = cost[:, start : start + step]
            y = y.reshape(-1, *y.shape[2:]).permute(0, 3, 1, 2)  # (B*t, C, h, w) channels-last, image outer
            for block, g, term in zip(self.decoder, decoder_guidance, terms):
                y = block(y, g, term)
            chunks.append(self.head(y).reshape(b, -1, *y.shape[-2:]))
        logits = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)
        if keep is None:
            return logits
        full = logits.new_full((b, t, *logits.shape[-2:]), -100.0)
        return full.scatter(1, keep[:, :, None, None].expand(-1, -1, *logits.shape[-2:]), logits)
