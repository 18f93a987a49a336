"""Pre-LN residual attention blocks shared by the CLIP image and text towers (OpenAI names)."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from ovss.layers.attention import Attention
from ovss.layers.mlp import Mlp


class ResidualAttentionBlock(nn.Module):
    """``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))`` on (B, L, D) tokens.

    Args:
        width: model width D.
        heads: attention heads.
        mlp_ratio: MLP hidden width over D.
        act: "quick_gelu" or "gelu".
        ln_eps: LayerNorm epsilon.
        split_qkv: split q/k/v attention weights (CAT-Seg).
    """

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float = 4.0,
        act: str = "quick_gelu",
        ln_eps: float = 1e-5,
        split_qkv: bool = False,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=ln_eps)
        self.attn = Attention(width, heads, split_qkv=split_qkv)
        self.ln_2 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = Mlp(width, int(width * mlp_ratio), act)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """(B, L, D) -> (B, L, D); ``attn_mask`` additive float, broadcastable to (B, heads, L, L);
        ``is_causal``: causal attention without a materialised mask."""
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask, is_causal=is_causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of :class:`ResidualAttentionBlock` under the attribute ``resblocks``."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float = 4.0,
        act: str = "quick_gelu",
        ln_eps: float = 1e-5,
        split_qkv: bool = False,
    ) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, act, ln_eps, split_qkv) for _ in range(layers)
        )

    def blocks(self) -> list[ResidualAttentionBlock]:
        """``resblocks`` as a list of their type (for code that reaches into the blocks)."""
        return cast("list[ResidualAttentionBlock]", list(self.resblocks))

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        start: int = 0,
        stop: int | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Run ``resblocks[start:stop]`` on (B, L, D) tokens; returns (B, L, D).

        ``attn_mask``: additive float mask broadcastable to (B, heads, L, L); ``is_causal``: causal
        attention without a materialised mask (exclusive with ``attn_mask``).
        """
        for block in self.resblocks[start:stop]:
            x = block(x, attn_mask=attn_mask, is_causal=is_causal)
        return x
