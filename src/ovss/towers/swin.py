"""Swin Transformer trunk (Liu et al. 2021) in plain torch, detectron2 / Mask2Former layout.

Parameter names follow Mask2Former's ``D2SwinTransformer`` (``patch_embed.proj``, ``layers.{i}.
blocks.{j}.attn.qkv``, ``layers.{i}.downsample.reduction``, ``norm{i}`` output norms), which CAT-Seg
v1 uses; mmseg ``SwinTransformer`` files are renamed (and their patch-merging channel order
permuted) by their converter. Only the requested stages are built (CAT-Seg v1: stages 1-3 of Swin-B).

Reads: config -> window attention -> block -> patch merging -> trunk.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ovss.config import Config
from ovss.errors import ConfigError
from ovss.layers.window import shift_window_mask, window_merge, window_partition

STAGE_NAMES = ("res2", "res3", "res4", "res5")


@dataclasses.dataclass(kw_only=True)
class SwinConfig(Config):
    """Architecture of a Swin trunk (``MODEL.SWIN.*`` names in brackets). Defaults: Swin-B/12 @384,
    stages 1-3 (CAT-Seg v1)."""

    embed_dim: int = 128  # [EMBED_DIM]
    depths: tuple[int, ...] = (2, 2, 18)  # blocks per built stage [DEPTHS], cut after res4
    heads: tuple[int, ...] = (4, 8, 16)  # [NUM_HEADS]
    window: int = 12  # [WINDOW_SIZE]
    patch_size: int = 4  # [PATCH_SIZE]
    mlp_ratio: float = 4.0  # [MLP_RATIO]
    image_size: int = 384  # pre-training size [PRETRAIN_IMG_SIZE] (informational: no absolute pos.)

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        self.heads = tuple(int(h) for h in self.heads)
        if not self.depths or len(self.depths) != len(self.heads) or len(self.depths) > 4:
            raise ConfigError(
                f"SwinConfig.depths={self.depths} and heads={self.heads} must have the same length (1 to 4)"
            )
        for i, h in enumerate(self.heads):
            if (self.embed_dim * 2**i) % h:
                raise ConfigError(
                    f"SwinConfig stage {i} width {self.embed_dim * 2**i} is not divisible by {h} heads"
                )
        if self.window < 2 or self.patch_size <= 0:
            raise ConfigError(
                f"SwinConfig.window must be >= 2 and patch_size > 0, got {self.window}/{self.patch_size}"
            )

    @property
    def channels(self) -> tuple[int, ...]:
        """Output channels of each built stage (embed_dim x 2^i)."""
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


def relative_position_index(window: int) -> torch.Tensor:
    """(window^2, window^2) int64 index into the ((2 window - 1)^2, heads) relative bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # (N, N, 2)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias."""

    relative_position_index: torch.Tensor  # buffer

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(N, nW, L, C) windows (L = window^2), optional additive (nW, L, L) mask -> (N, nW, L, C)."""
        n, nw, length, c = x.shape
        qkv = self.qkv(x).reshape(n * nw, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(length, length, -1).permute(2, 0, 1).to(x.dtype)  # (heads, L, L)
        bias = bias.unsqueeze(0).expand(nw, -1, -1, -1)
        if mask is not None:
            bias = bias + mask.to(x.dtype).unsqueeze(1)  # (nW, heads, L, L)
        bias = bias.unsqueeze(0).expand(n, -1, -1, -1, -1).reshape(n * nw, self.heads, length, length)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(n, nw, length, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-LN (shifted) window attention + GELU MLP on (B, H, W, C) maps (zero-padded to windows)."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        _, h, w, _ = x.shape
        win = self.window
        y = self.norm1(x)
        pad_b, pad_r = (-h) % win, (-w) % win
        y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        mask = None
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask = shift_window_mask(hp, wp, win, self.shift, x.dtype, x.device)
        y = window_merge(self.attn(window_partition(y, win), mask), win, hp, wp)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y[:, :h, :w]
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concatenation (order (0,0), (1,0), (0,1), (1,1)), LayerNorm, Linear 4C -> 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C) (odd sides zero-padded)."""
        h, w = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class _Stage(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, merge: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio) for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if merge else None


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/p, W/p, C) (sides zero-padded to multiples of the patch)."""
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % self.patch, 0, (-h) % self.patch))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinTransformer(nn.Module):
    """Swin trunk returning ``{"res2": (B, C, H/4, W/4), "res3": (B, 2C, H/8, W/8), "res4": (B, 4C,
    H/16, W/16)}`` (one map per built stage, each after its output LayerNorm ``norm{i}``)."""

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        self.config = cfg
        self.patch_embed = _PatchEmbed(cfg.patch_size, cfg.embed_dim)
        n = len(cfg.depths)
        self.layers = nn.ModuleList(
            _Stage(c, d, h, cfg.window, cfg.mlp_ratio, merge=i < n - 1)
            for i, (c, d, h) in enumerate(zip(cfg.channels, cfg.depths, cfg.heads))
        )
        for i, c in enumerate(cfg.channels):
            self.add_module(f"norm{i}", nn.LayerNorm(c))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) ImageNet-normalised images -> stage maps (channels first)."""
        x = self.patch_embed(x)
        out = {}
        for i, stage in enumerate(self.layers):
            assert isinstance(stage, _Stage)
            for block in stage.blocks:
                x = block(x)
            out[STAGE_NAMES[i]] = getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2)
            if stage.downsample is not None:
                x = stage.downsample(x)
        return out


def swin_b_384() -> SwinConfig:
    """Swin-B, window 12, 384 px (IN-22k), stages 1-3: 128 / 256 / 512 channels."""
    return SwinConfig(embed_dim=128, depths=(2, 2, 18), heads=(4, 8, 16), window=12)
