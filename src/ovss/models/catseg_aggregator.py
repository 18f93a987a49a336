"""CAT-Seg (CVPR 2024) cost aggregation: cost volume, spatial + class aggregation, upsampling decoder.

Reads: pure functions (cost volume, linear attention) -> class aggregation -> Aggregator; the
spatial aggregation (guided Swin blocks) is :mod:`ovss.models.catseg_spatial`, the upsampling
decoder :mod:`ovss.models.catseg_decoder`.
Official reference: ``cat_seg/modeling/transformer/model.py`` of cvlab-kaist/CAT-Seg @ 6d3a188.

Internal cost layout is channels-last ``(B, T, H, W, C)`` (T classes); the official code keeps
``(B, C, T, H, W)``. Every op is per class, per pixel or per window, so the numerics are the same.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

# The decoder blocks live in catseg_decoder; re-exported here for the models built on this module.
from ovss.models.catseg_decoder import DECODER_CHUNK, UpBlock, _conv_relu
from ovss.models.catseg_spatial import _MLP, SpatialAggregation

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


class ClassBlock(nn.Module):
    """The parameters of a class aggregation (both versions): the guided class attention, a ReLU
    MLP and the norms before each (``norm1``, ``norm2``)."""

    def __init__(self, dim: int, guidance_dim: int, heads: int, kind: str) -> None:
        super().__init__()
        self.attn = ClassAttention(dim, guidance_dim, heads, kind)
        self.mlp = _MLP(dim, 4 * dim, nn.ReLU)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)


class ClassAggregation(ClassBlock):
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
        super().__init__(dim, guidance_dim, heads, kind)
        self.pad_len = pad_len
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
    """Spatial aggregation then class aggregation (``classes`` builds the version's class block)."""

    def __init__(self, dims: AggregatorDims, appearance_dim: int, classes: Callable[[], nn.Module]) -> None:
        super().__init__()
        d = dims
        self.spatial = SpatialAggregation(d.hidden_dim, appearance_dim, d.heads, d.resolution, d.window)
        self.classes = classes()

    def forward(
        self, cost: torch.Tensor, appearance: torch.Tensor, text: torch.Tensor, pool: tuple[int, int]
    ) -> torch.Tensor:
        """(B, T, H, W, C) cost, (B, Ga, H, W) appearance, (B, T, Gt) text guidance -> (B, T, H, W, C)."""
        return self.classes(self.spatial(cost, appearance), text, pool)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AggregatorDims:
    """The widths and the grid of an aggregator (CVPR :class:`Aggregator` and CAT-Seg v1)."""

    embed_dim: int  # CLIP joint embedding width E (image and text features)
    prompt_channels: int  # P, templates per class
    hidden_dim: int  # cost embedding width C
    appearance_proj_dim: int  # projected appearance guidance width
    text_proj_dim: int  # projected text guidance width
    guidance_dims: tuple[int, int]  # channels of the two decoder guidance maps (stride 8 and stride 4)
    guidance_proj_dims: tuple[int, int]  # their projected widths
    decoder_dims: tuple[int, int]  # output channels of the two decoder blocks
    num_layers: int  # aggregator depth
    heads: int  # heads of the Swin and class attentions
    resolution: tuple[int, int]  # cost grid (h, w)
    window: int  # Swin window side
    attention: str  # class attention kind, "linear" or "full"


class AggregatorBase(nn.Module):
    """What both aggregators share: their submodules, the cost embedding and the per-class decoder.

    Submodules, in this order (it fixes the state-dict order and the random initialisation):
    ``cost_embed``, ``appearance_proj`` (from ``appearance_dim`` channels), ``text_proj``,
    ``decoder_guidance_proj``, ``layers`` (``num_layers`` :class:`AggregatorLayer` with the class
    block ``classes`` builds), ``decoder`` (two :class:`UpBlock`) and ``head``.
    """

    def __init__(self, dims: AggregatorDims, appearance_dim: int, classes: Callable[[], nn.Module]) -> None:
        super().__init__()
        d = dims
        self.cost_embed = nn.Conv2d(d.prompt_channels, d.hidden_dim, kernel_size=7, padding=3)
        self.appearance_proj = _conv_relu(appearance_dim, d.appearance_proj_dim)
        self.text_proj = nn.Sequential(nn.Linear(d.embed_dim, d.text_proj_dim), nn.ReLU())
        self.decoder_guidance_proj = nn.ModuleList(
            _conv_relu(g, p) for g, p in zip(d.guidance_dims, d.guidance_proj_dims)
        )
        self.layers = nn.ModuleList(
            AggregatorLayer(d, d.appearance_proj_dim, classes) for _ in range(d.num_layers)
        )
        self.decoder = nn.ModuleList(
            [
                UpBlock(d.hidden_dim, d.decoder_dims[0], d.guidance_proj_dims[0]),
                UpBlock(d.decoder_dims[0], d.decoder_dims[1], d.guidance_proj_dims[1]),
            ]
        )
        self.head = nn.Conv2d(d.decoder_dims[1], 1, kernel_size=3, padding=1)

    def up_blocks(self) -> list[UpBlock]:
        """The two :class:`UpBlock` of ``decoder``."""
        return cast("list[UpBlock]", list(self.decoder))

    def image_guidance(
        self, appearance: torch.Tensor, guidance: Sequence[torch.Tensor]
    ) -> dict[str, Any]:
        """The image-only inputs of ``forward`` (a re-query computes them once per image).

        Args:
            appearance: (B, appearance_dim, h, w) appearance guidance input (CAT-Seg: the dense CLIP
                embedding; v1: the backbone's res4); guidance: the two decoder guidance maps.

        Returns:
            ``{"appearance": (B, Ga, h, w), "decoder": [projected decoder guidance maps], "terms":
            [each decoder block's guidance part of its first conv]}``.
        """
        decoder_guidance = [proj(g) for proj, g in zip(self.decoder_guidance_proj, guidance)]
        return {
            "appearance": self.appearance_proj(appearance),
            "decoder": decoder_guidance,
            "terms": [block.guidance_term(g) for block, g in zip(self.up_blocks(), decoder_guidance)],
        }

    def embed_cost(self, corr: torch.Tensor) -> torch.Tensor:
        """(B, P, T, h, w) cost volume -> (B, T, h, w, C) embedded cost."""
        b, _, t, h, w = corr.shape
        cost = self.cost_embed(corr.transpose(1, 2).reshape(b * t, -1, h, w))  # (B*T, C, h, w)
        return cost.reshape(b, t, -1, h, w).permute(0, 1, 3, 4, 2)

    def aggregate(
        self, cost: torch.Tensor, appearance: torch.Tensor, text: torch.Tensor, pool: tuple[int, int]
    ) -> torch.Tensor:
        """The aggregator layers: (B, T, h, w, C) cost, (B, Ga, h, w) projected appearance guidance,
        (B, T, P, E) text embeddings -> (B, T, h, w, C)."""
        text_guidance = self.text_proj(F.normalize(text.mean(dim=2), dim=-1))  # (B, T, Gt)
        for layer in self.layers:
            cost = layer(cost, appearance, text_guidance, pool)
        return cost

    def decode(
        self,
        cost: torch.Tensor,
        decoder_guidance: list[torch.Tensor],
        terms: list[torch.Tensor],
        step: int,
        channels_last: bool = True,
    ) -> torch.Tensor:
        """The upsampling decoder and the head, ``step`` classes at a time: (B, T, h, w, C) -> (B, T, 4h, 4w).

        The decoder is per class (convolutions and GroupNorm see one class slice at a time): run on
        chunks of classes its (B*t, C, 4h, 4w) activations stay small, channels-last (the cost is
        already channels-last: no permute copy, and the convolutions' native layout). ``terms``: each
        block's :meth:`UpBlock.guidance_term`; each block's folded kernel is made once for all chunks.
        ``channels_last=False``: each chunk is copied to the contiguous layout first (CAT-Seg v1: its
        numbers, bit for bit, stay those of its own decoder loop; the layouts differ by float rounding
        only).
        """
        b, t = cost.shape[:2]
        kernels = [block.folded_kernel() for block in self.up_blocks()]  # once for every chunk
        chunks = []
        for start in range(0, t, step):
            y = cost[:, start : start + step]
            y = y.reshape(-1, *y.shape[2:]).permute(0, 3, 1, 2)  # (B*t, C, h, w) channels-last, image outer
            y = y if channels_last else y.contiguous()
            for block, g, term, kernel in zip(self.up_blocks(), decoder_guidance, terms, kernels):
                y = block(y, g, term, kernel)
            chunks.append(self.head(y).reshape(b, -1, *y.shape[-2:]))
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)


class Aggregator(AggregatorBase):
    """Cost volume -> embedding -> N x (spatial, class) aggregation -> upsampling decoder -> logits.

    Args:
        dims: widths and grid (the appearance guidance is the CLIP embedding: ``embed_dim`` channels).
        pad_len: class budget (see :meth:`forward`).
    """

    def __init__(self, dims: AggregatorDims, pad_len: int) -> None:
        d = dims

        def classes() -> ClassAggregation:
            return ClassAggregation(d.hidden_dim, d.text_proj_dim, d.heads, d.attention, pad_len)

        super().__init__(d, d.embed_dim, classes)
        self.pad_len = pad_len

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        guidance: Sequence[torch.Tensor] | None,
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
            guidance: decoder guidance maps (B, guidance_dims[0], 2h, 2w), (B, guidance_dims[1], 4h, 4w)
                (None when ``prepared`` is given).
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
            # a 0-d tensor k under tracing (the graph's class budget follows T); the stubs want an int
            keep = score.topk(kept, dim=1).indices  # type: ignore[arg-type]  # (B, min(T, pad_len))
            index = keep[:, :, None, None].expand(-1, -1, *text.shape[2:])
            text = torch.gather(F.normalize(text, dim=-1), 1, index)
            index = keep[:, None, :, None, None].expand(-1, corr.shape[1], -1, *corr.shape[3:])
            corr = torch.gather(corr, 2, index)
        tk = corr.shape[2]
        if prepared is None:
            assert guidance is not None, "Aggregator needs the guidance maps or their image_guidance"
            prepared = self.image_guidance(image, guidance)
        cost = self.aggregate(self.embed_cost(corr), prepared["appearance"], text, pool)
        # the guidance's part of each block's first conv is computed once per image (``terms``)
        step = tk if tracing else max(1, DECODER_CHUNK // b)  # export: all classes in one pass (any T)
        logits = self.decode(cost, prepared["decoder"], prepared["terms"], step)
        if keep is None:
            return logits
        full = logits.new_full((b, t, *logits.shape[-2:]), -100.0)
        return full.scatter(1, keep[:, :, None, None].expand(-1, -1, *logits.shape[-2:]), logits)
