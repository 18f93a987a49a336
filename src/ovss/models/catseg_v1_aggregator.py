"""CAT-Seg v1 (arXiv 2303.11797 v1) aggregator: the CVPR blocks with v1 guidance and no class budget.

Reuses the spatial aggregation, class attention, decoder blocks and cost volume of
:mod:`ovss.models.catseg_aggregator`. Differences from CVPR (spec catseg_sed.md §1.6):

* appearance guidance comes from the extra backbone's res4 (its own channel count), decoder guidance
  from res3 and res2; nothing from CLIP;
* no class budget: every class goes through every layer (no padding tokens, no top-k);
* P = 80 template channels in the cost embedding;
* mmseg port only: its class-aggregation MLP is an mmcv ``FFN`` with ``add_identity``, so the block
  computes ``x + LN(x) + MLP(LN(x))`` (``class_mlp_identity=True``).

The class-aggregation residual quirk ``x + Up(pool(x) + delta)`` of both versions is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ovss.models.catseg_aggregator import (
    _MLP,
    DECODER_CHUNK,
    ClassAttention,
    SpatialAggregation,
    build_aggregator_modules,
    cost_volume,
    pooled_class_update,
)


class ClassAggregationV1(nn.Module):
    """Class aggregation on an average-pooled cost, over all classes (no padding to a budget).

    Returns ``x + Up(pool(x) + delta)`` (official v1 ``ClassTransformerLayer``); with
    ``mlp_identity`` the MLP step is ``y + LN2(y) + MLP(LN2(y))`` (mmseg port).
    """

    def __init__(self, dim: int, guidance_dim: int, heads: int, kind: str, mlp_identity: bool) -> None:
        super().__init__()
        self.mlp_identity = mlp_identity
        self.attn = ClassAttention(dim, guidance_dim, heads, kind)
        self.mlp = _MLP(dim, 4 * dim, nn.ReLU)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, cost: torch.Tensor, guidance: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        """(B, T, H, W, C) cost, (B, T, G) text guidance, (kh, kw) pooling -> (B, T, H, W, C)."""

        def update(x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.norm1(x), guidance, None)
            y = self.norm2(x)
            return x + y + self.mlp(y) if self.mlp_identity else x + self.mlp(y)

        return pooled_class_update(cost, pool, update)


class AggregatorLayerV1(nn.Module):
    """Spatial aggregation (two guided Swin blocks) then class aggregation."""

    def __init__(
        self,
        dim: int,
        appearance_dim: int,
        text_dim: int,
        heads: int,
        resolution: tuple[int, int],
        window: int,
        kind: str,
        mlp_identity: bool,
    ) -> None:
        super().__init__()
        self.spatial = SpatialAggregation(dim, appearance_dim, heads, resolution, window)
        self.classes = ClassAggregationV1(dim, text_dim, heads, kind, mlp_identity)

    def forward(
        self, cost: torch.Tensor, appearance: torch.Tensor, text: torch.Tensor, pool: tuple[int, int]
    ) -> torch.Tensor:
        """(B, T, H, W, C) cost, (B, Ga, H, W) appearance, (B, T, Gt) text guidance -> (B, T, H, W, C)."""
        return self.classes(self.spatial(cost, appearance), text, pool)


class AggregatorV1(nn.Module):
    """Cost volume -> embedding -> N x (spatial, class) aggregation -> upsampling decoder -> logits.

    Args:
        embed_dim: CLIP joint embedding width E.
        prompt_channels: P, templates per class (80).
        appearance_dim: channels of the backbone's res4 (appearance guidance input).
        guidance_dims: channels of res3 and res2 (decoder guidance inputs).
        hidden_dim, appearance_proj_dim, text_proj_dim, guidance_proj_dims, decoder_dims, num_layers,
        heads, resolution, window, attention: as in the CVPR ``catseg_aggregator.Aggregator``.
        class_mlp_identity: the mmseg port's extra identity in the class-aggregation MLP.
    """

    def __init__(
        self,
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
        num_layers: int,
        heads: int,
        resolution: tuple[int, int],
        window: int,
        attention: str,
        class_mlp_identity: bool = False,
    ) -> None:
        super().__init__()
        build_aggregator_modules(
            self,
            embed_dim=embed_dim,
            prompt_channels=prompt_channels,
            appearance_dim=appearance_dim,
            guidance_dims=guidance_dims,
            hidden_dim=hidden_dim,
            appearance_proj_dim=appearance_proj_dim,
            text_proj_dim=text_proj_dim,
            guidance_proj_dims=guidance_proj_dims,
            decoder_dims=decoder_dims,
            layer=lambda: AggregatorLayerV1(
                hidden_dim,
                appearance_proj_dim,
                text_proj_dim,
                heads,
                resolution,
                window,
                attention,
                class_mlp_identity,
            ),
            num_layers=num_layers,
        )

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        appearance: torch.Tensor,
        guidance: tuple[torch.Tensor, torch.Tensor],
        pool: tuple[int, int] = (1, 1),
    ) -> torch.Tensor:
        """Per-class logits.

        Args:
            image: (B, E, h, w) dense CLIP image embedding.
            text: (B, T, P, E) text embeddings.
            appearance: (B, appearance_dim, h, w) backbone res4.
            guidance: (B, guidance_dims[0], 2h, 2w) res3 and (B, guidance_dims[1], 4h, 4w) res2.
            pool: class-aggregation pooling window.

        Returns:
            (B, T, 4h, 4w) logits.
        """
        b, t = text.shape[:2]
        corr = cost_volume(image, text)  # (B, P, T, h, w)
        h, w = corr.shape[-2:]
        cost = self.cost_embed(corr.transpose(1, 2).reshape(b * t, -1, h, w))  # (B*T, C, h, w)
        cost = cost.reshape(b, t, -1, h, w).permute(0, 1, 3, 4, 2)  # (B, T, h, w, C)
        app = self.appearance_proj(appearance)
        decoder_guidance = [proj(g) for proj, g in zip(self.decoder_guidance_proj, guidance)]
        text_guidance = self.text_proj(F.normalize(text.mean(dim=2), dim=-1))  # (B, T, Gt)
        for layer in self.layers:
            cost = layer(cost, app, text_guidance, pool)
        x = cost.permute(0, 1, 4, 2, 3)  # (B, T, C, h, w)
        chunks = []
        for start in range(0, t, DECODER_CHUNK):  # the decoder is per class: bounded memory, exact
            y = x[:, start : start + DECODER_CHUNK]
            y = y.reshape(-1, *y.shape[2:])  # (B*t, C, h, w), image index outer
            for block, g in zip(self.decoder, decoder_guidance):
                y = block(y, g)
            chunks.append(self.head(y).reshape(b, -1, *y.shape[-2:]))
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)
