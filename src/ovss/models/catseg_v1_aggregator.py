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

from collections.abc import Sequence
from typing import Any

import torch

from ovss.models.catseg_aggregator import (
    DECODER_CHUNK,
    AggregatorBase,
    AggregatorDims,
    ClassBlock,
    cost_volume,
    pooled_class_update,
)
from ovss.utils import is_tracing


class ClassAggregationV1(ClassBlock):
    """Class aggregation on an average-pooled cost, over all classes (no padding to a budget).

    Returns ``x + Up(pool(x) + delta)`` (official v1 ``ClassTransformerLayer``); with
    ``mlp_identity`` the MLP step is ``y + LN2(y) + MLP(LN2(y))`` (mmseg port).
    """

    def __init__(self, dim: int, guidance_dim: int, heads: int, kind: str, mlp_identity: bool) -> None:
        super().__init__(dim, guidance_dim, heads, kind)
        self.mlp_identity = mlp_identity

    def forward(self, cost: torch.Tensor, guidance: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        """(B, T, H, W, C) cost, (B, T, G) text guidance, (kh, kw) pooling -> (B, T, H, W, C)."""

        def update(x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.norm1(x), guidance, None)
            y = self.norm2(x)
            return x + y + self.mlp(y) if self.mlp_identity else x + self.mlp(y)

        return pooled_class_update(cost, pool, update)


class AggregatorV1(AggregatorBase):
    """Cost volume -> embedding -> N x (spatial, class) aggregation -> upsampling decoder -> logits.

    Args:
        dims: as in the CVPR ``catseg_aggregator.Aggregator`` (``prompt_channels`` P = 80;
            ``guidance_dims``: the channels of res3 and res2, the decoder guidance inputs).
        appearance_dim: channels of the backbone's res4 (appearance guidance input).
        class_mlp_identity: the mmseg port's extra identity in the class-aggregation MLP.
    """

    def __init__(self, dims: AggregatorDims, appearance_dim: int, class_mlp_identity: bool = False) -> None:
        d = dims

        def classes() -> ClassAggregationV1:
            return ClassAggregationV1(d.hidden_dim, d.text_proj_dim, d.heads, d.attention, class_mlp_identity)

        super().__init__(d, appearance_dim, classes)

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        appearance: torch.Tensor | None,
        guidance: Sequence[torch.Tensor] | None,
        pool: tuple[int, int] = (1, 1),
        prepared: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Per-class logits.

        Args:
            image: (B, E, h, w) dense CLIP image embedding.
            text: (B, T, P, E) text embeddings.
            appearance: (B, appearance_dim, h, w) backbone res4 (None when ``prepared`` is given).
            guidance: (B, guidance_dims[0], 2h, 2w) res3 and (B, guidance_dims[1], 4h, 4w) res2 (None
                when ``prepared`` is given).
            pool: class-aggregation pooling window.
            prepared: :meth:`image_guidance` of ``appearance`` and ``guidance`` (computed when None).

        Returns:
            (B, T, 4h, 4w) logits.
        """
        if prepared is None:
            assert appearance is not None and guidance is not None, "AggregatorV1 needs res4, res3, res2"
            prepared = self.image_guidance(appearance, guidance)
        cost = self.embed_cost(cost_volume(image, text))  # (B, T, h, w, C)
        cost = self.aggregate(cost, prepared["appearance"], text, pool)
        # export: every class in one decoder pass (chunks of DECODER_CHUNK would cap the graph at 16 classes)
        step = cost.shape[1] if is_tracing() else DECODER_CHUNK
        return self.decode(cost, prepared["decoder"], prepared["terms"], step, channels_last=False)
