"""SAN's side adapter: the side ViT with its learnable queries, the CLIP fusion layers and the MLP
mask decoder that predicts mask logits and the recognition blocks' attention biases (MendelXu/SAN @
e19262d, ``RegionwiseSideAdapterNetwork``). :mod:`ovss.models.san` holds the config and the model.

Reads: MLP -> fusion layer -> mask decoder -> side adapter.
"""

from __future__ import annotations

import itertools
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ovss.layers.pos_embed import resize_pos_embed
from ovss.layers.transformer import ResidualAttentionBlock
from ovss.towers.clip import ClipConfig


class SideConfig(Protocol):
    """The fields of :class:`ovss.models.san.SANConfig` the side adapter reads (documented there)."""

    clip: ClipConfig
    fusion_map: tuple[tuple[int, int], ...]
    side_width: int
    side_depth: int
    side_heads: int
    side_mlp_ratio: float
    side_patch_size: int
    side_image_size: int
    side_ln_eps: float
    num_queries: int
    deep_supervision: tuple[int, ...]
    attn_bias_heads: int
    attn_bias_layers: int
    embed_channels: int
    mlp_channels: int
    mlp_layers: int
    rescale_attn_bias: bool


class MLP(nn.Module):
    """``layers`` Linear layers with ReLU between them (none after the last), on (..., in_dim)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class FusionLayer(nn.Module):
    """Adds a CLIP token map into the side patch tokens: LayerNorm, linear projection, bilinear resize.

    (The official LayerNorm2d + 1x1 conv are applied channels-last; same maths.)
    """

    def __init__(self, clip_width: int, side_width: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(clip_width, eps=eps)
        self.proj = nn.Linear(clip_width, side_width)
        nn.init.kaiming_uniform_(self.proj.weight, a=1)  # detectron2 c2_xavier_fill
        nn.init.zeros_(self.proj.bias)

    def forward(
        self, patches: torch.Tensor, clip_patches: torch.Tensor, clip_grid: tuple[int, int],
        side_grid: tuple[int, int],
    ) -> torch.Tensor:
        """Fuse.

        Args:
            patches: (B, h_s*w_s, C_s) side patch tokens.
            clip_patches: (B, g_h*g_w, D_c) CLIP patch tokens (no class token).
            clip_grid: (g_h, g_w); side_grid: (h_s, w_s).

        Returns:
            (B, h_s*w_s, C_s) ``patches`` plus the resized projection.
        """
        y = self.proj(self.norm(clip_patches))  # (B, g_h*g_w, C_s)
        y = y.transpose(1, 2).reshape(y.shape[0], -1, *clip_grid)
        y = F.interpolate(y, size=side_grid, mode="bilinear", align_corners=False)
        return patches + y.flatten(2).transpose(1, 2)


class MaskDecoder(nn.Module):
    """Mask logits and attention biases from a side output (the official ``MLPMaskDecoder``)."""

    def __init__(self, cfg: SideConfig) -> None:
        super().__init__()
        c, e, h, n = cfg.side_width, cfg.embed_channels, cfg.mlp_channels, cfg.mlp_layers
        self.heads, self.layers, self.channels = cfg.attn_bias_heads, cfg.attn_bias_layers, e
        self.query_mlp = MLP(c, h, e, n)
        self.pix_mlp = MLP(c, h, e, n)
        self.attn_mlp = MLP(c, h, e * self.heads * self.layers, n)
        self.bias_scaling = nn.Linear(1, 1) if cfg.rescale_attn_bias else nn.Identity()

    def forward(
        self, query: torch.Tensor, patches: torch.Tensor, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decode.

        Args:
            query: (B, Q, C_s) query tokens; patches: (B, h*w, C_s) patch tokens; grid: (h, w).

        Returns:
            mask logits (B, Q, h, w) and ``attn_bias_layers`` biases, each (B, heads, Q, h, w).
        """
        b, n_pix = patches.shape[:2]
        q = self.query_mlp(query)  # (B, Q, E)
        masks = (q @ self.pix_mlp(patches).transpose(1, 2)).reshape(b, -1, *grid)
        a = self.attn_mlp(patches).reshape(b, n_pix, self.layers * self.heads, self.channels)
        bias = q.unsqueeze(1) @ a.permute(0, 2, 3, 1)  # (B, layers*heads, Q, h*w)
        bias = self.bias_scaling(bias.unsqueeze(-1)).squeeze(-1)
        bias = bias.reshape(b, self.layers, self.heads, -1, *grid)
        return masks, list(bias.unbind(1))


class SideAdapter(nn.Module):
    """The side ViT (queries prepended, CLIP fusion, positional embeddings re-added) and its decoder."""

    def __init__(self, cfg: SideConfig) -> None:
        super().__init__()
        assert cfg.clip.vision is not None  # SAN's CLIP image tower is a ViT
        c, clip_width = cfg.side_width, cfg.clip.vision.width
        grid = cfg.side_image_size // cfg.side_patch_size
        self.deep_supervision = tuple(cfg.deep_supervision)
        self.query_embed = nn.Parameter(torch.empty(cfg.num_queries, c))
        self.query_pos_embed = nn.Parameter(torch.empty(cfg.num_queries, c))
        self.patch_embed = nn.Conv2d(3, c, kernel_size=cfg.side_patch_size, stride=cfg.side_patch_size)
        self.pos_embed = nn.Parameter(torch.empty(grid * grid, c))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(c, cfg.side_heads, cfg.side_mlp_ratio, act="gelu", ln_eps=cfg.side_ln_eps)
            for _ in range(cfg.side_depth)
        )
        sides = sorted(s for _, s in cfg.fusion_map)
        self.fusion = nn.ModuleDict({str(s): FusionLayer(clip_width, c, cfg.side_ln_eps) for s in sides})
        self.decoder = MaskDecoder(cfg)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm ViT defaults (trunc-normal 0.02 linears/pos, zero biases); queries N(0, 0.02)."""
        nn.init.normal_(self.query_embed, std=0.02)
        nn.init.normal_(self.query_pos_embed, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for block in self.blocks:
            assert isinstance(block, ResidualAttentionBlock)
            attn, mlp = block.attn, block.mlp
            for w in (attn.in_proj_weight, attn.out_proj.weight, mlp.c_fc.weight, mlp.c_proj.weight):
                nn.init.trunc_normal_(w, std=0.02)
            for b in (attn.in_proj_bias, attn.out_proj.bias, mlp.c_fc.bias, mlp.c_proj.bias):
                nn.init.zeros_(b)

    def forward(
        self, images: torch.Tensor, clip_patches: dict[int, torch.Tensor], clip_grid: tuple[int, int]
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], tuple[int, int]]:
        """Run the side ViT.

        Args:
            images: (B, 3, H, W) normalised, padded side input.
            clip_patches: side index -> (B, g_h*g_w, D_c) CLIP patch tokens to fuse there.
            clip_grid: (g_h, g_w).

        Returns:
            one (query (B, Q, C_s), patches (B, h_s*w_s, C_s)) per ``deep_supervision`` block, and the
            side grid (h_s, w_s).
        """
        x = self.patch_embed(images)
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        x = x.flatten(2).transpose(1, 2)  # (B, L, C)
        b, n = x.shape[:2]
        pos = resize_pos_embed(self.pos_embed, grid, num_prefix=0)
        pos = torch.cat([self.query_pos_embed, pos], dim=0).to(x.dtype).unsqueeze(0)
        x = torch.cat([self.query_embed.to(x.dtype).unsqueeze(0).expand(b, -1, -1), x], dim=1) + pos
        x = self._fuse(0, x, n, clip_patches, clip_grid, grid)
        outputs = []
        for i, block in enumerate(self.blocks, start=1):
            x = self._fuse(i, block(x), n, clip_patches, clip_grid, grid)
            if i in self.deep_supervision:
                outputs.append((x[:, :-n], x[:, -n:]))
            if i < len(self.blocks):
                x = x + pos  # positions (queries included) are re-added before every later block
        return outputs, grid

    def _fuse(self, idx: int, x: torch.Tensor, n: int, clip_patches: dict[int, torch.Tensor],
              clip_grid: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
        key = str(idx)
        if key not in self.fusion:
            return x
        fused = self.fusion[key](x[:, -n:], clip_patches[idx], clip_grid, grid)
        return torch.cat([x[:, :-n], fused], dim=1)
