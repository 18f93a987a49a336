"""CLIP Vision Transformer image tower (OpenAI / open_clip attribute names, batch-first).

Reads: config -> model. The blocks live in :mod:`ovss.layers.transformer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from ovss.config import Config, check_positive_ints
from ovss.errors import ConfigError
from ovss.layers.mlp import ACTIVATIONS
from ovss.layers.pos_embed import resize_pos_embed
from ovss.layers.transformer import Transformer


@dataclasses.dataclass(kw_only=True)
class VisionConfig(Config):
    """Architecture of a CLIP ViT image tower."""

    image_size: int = 224  # native (pre-training) square input size in pixels
    patch_size: int = 16  # patch (and conv1 stride) size in pixels
    width: int = 768  # token width D
    layers: int = 12  # number of residual attention blocks
    heads: int = 12  # attention heads per block
    mlp_ratio: float = 4.0  # MLP hidden width / D
    output_dim: int = 512  # joint embedding width E (columns of `proj`)
    act: str = "quick_gelu"  # MLP activation: "quick_gelu" (OpenAI weights) or "gelu"
    ln_eps: float = 1e-5  # LayerNorm epsilon
    split_qkv: bool = False  # store q/k/v attention weights separately (CAT-Seg)

    def __post_init__(self) -> None:
        check_positive_ints(self, ("image_size", "patch_size", "width", "layers", "heads", "output_dim"))
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"VisionConfig.image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )
        if self.width % self.heads:
            raise ConfigError(f"VisionConfig.width={self.width} is not divisible by heads={self.heads}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"VisionConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"VisionConfig.act={self.act!r} is not one of {list(ACTIVATIONS)}")
        if self.ln_eps <= 0:
            raise ConfigError(f"VisionConfig.ln_eps must be > 0, got {self.ln_eps}")

    @property
    def grid(self) -> int:
        """Native token grid side, ``image_size // patch_size``."""
        return self.image_size // self.patch_size


class VisionTransformer(nn.Module):
    """CLIP ViT: patch conv, class token, positional table, pre-LN blocks, ``ln_post`` and ``proj``.

    Inputs of any size are accepted: the positional table is bicubically resized to the token
    grid (``H // patch``, ``W // patch``; trailing pixels are dropped by the strided conv).
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.config = cfg
        self.patch_size = cfg.patch_size
        self.width = cfg.width
        self.output_dim = cfg.output_dim
        w = cfg.width
        scale = w**-0.5
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid * cfg.grid + 1, w))
        self.ln_pre = nn.LayerNorm(w, eps=cfg.ln_eps)
        self.transformer = Transformer(
            w, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps, cfg.split_qkv
        )
        self.ln_post = nn.LayerNorm(w, eps=cfg.ln_eps)
        self.proj = nn.Parameter(scale * torch.randn(w, cfg.output_dim))

    @property
    def num_blocks(self) -> int:
        """Number of residual attention blocks."""
        return len(self.transformer.resblocks)

    @property
    def feature_info(self) -> list[dict[str, int]]:
        """One entry per intermediate index (0 = after ln_pre, i = after block i): channels and stride."""
        info = {"num_chs": self.width, "reduction": self.patch_size}
        return [{"index": i, **info} for i in range(self.num_blocks + 1)]

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch embedding, class token, positional embedding and ``ln_pre``.

        Args:
            images: (B, 3, H, W) float, CLIP-normalised.

        Returns:
            tokens (B, 1 + h*w, width) with the class token first, and the grid (h, w) =
            (H // patch, W // patch).
        """
        x = self.conv1(images)  # (B, width, h, w)
        h, w = x.shape[-2], x.shape[-1]
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, width)
        cls = self.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = resize_pos_embed(self.positional_embedding, (h, w)).to(x.dtype)
        x = x + pos.unsqueeze(0)
        return self.ln_pre(x), (int(h), int(w))

    def run_blocks(
        self,
        x: torch.Tensor,
        start: int = 0,
        stop: int | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run ``resblocks[start:stop]``.

        Args:
            x: (B, L, width) tokens.
            start, stop: Python slice bounds over the blocks (0-based block positions).
            attn_mask: optional additive float mask broadcastable to (B, heads, L, L).

        Returns:
            (B, L, width).
        """
        return self.transformer(x, attn_mask=attn_mask, start=start, stop=stop)

    def forward_intermediates(
        self, images: torch.Tensor, indices: Sequence[int]
    ) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """Residual-stream tokens at the requested depths.

        Args:
            images: (B, 3, H, W) float, CLIP-normalised.
            indices: depths to record: 0 = after ``ln_pre``, i = after block i (1-based),
                ``0 <= i <= num_blocks``; returned in the order given. Only the blocks up to
                the deepest index run.

        Returns:
            list of (B, 1 + h*w, width) tokens (class token first, no ``ln_post``), and (h, w).
        """
        wanted = [int(i) for i in indices]
        bad = [i for i in wanted if not 0 <= i <= self.num_blocks]
        if bad:
            raise ValueError(f"intermediate indices {bad} out of range 0..{self.num_blocks}")
        x, grid = self.embed(images)
        found: dict[int, torch.Tensor] = {}
        if 0 in wanted:
            found[0] = x
        deepest = max(wanted, default=0)
        for i in range(deepest):
            x = self.transformer.resblocks[i](x)
            if i + 1 in wanted:
                found[i + 1] = x
        return [found[i] for i in wanted], grid

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_post`` then ``@ proj``: (..., width) -> (..., output_dim)."""
        return self.ln_post(tokens) @ self.proj.to(tokens.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Global image embedding (not normalised).

        Args:
            images: (B, 3, H, W) float, CLIP-normalised.

        Returns:
            (B, output_dim): ``head`` of the class token after all blocks.
        """
        x, _ = self.embed(images)
        x = self.run_blocks(x)
        return self.head(x[:, 0])
