"""Resizing a ViT's learned positional embedding to another token grid."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def source_grid(num_patches: int) -> tuple[int, int]:
    """Square grid (g, g) of a positional table holding ``num_patches = g * g`` patch rows."""
    g = math.isqrt(num_patches)
    if g * g != num_patches:
        raise ValueError(f"positional embedding has {num_patches} patch rows, not a square grid")
    return g, g


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """Bicubically resize the patch rows of a positional table to ``grid``; prefix rows are kept.

    Matches ``F.interpolate(mode="bicubic", align_corners=False, antialias=False)`` on the
    (1, D, g, g) image of the patch rows, as SAN, CAT-Seg and open_clip do. Returns ``pos``
    itself when the grid already matches.

    Args:
        pos: (num_prefix + g*g, D) float, the stored table (class-token row first).
        grid: target (h, w) token grid.
        num_prefix: leading rows that are not patches (1 for the class token).

    Returns:
        (num_prefix + h*w, D), same dtype and device as ``pos``.
    """
    h, w = int(grid[0]), int(grid[1])
    prefix, patches = pos[:num_prefix], pos[num_prefix:]
    gh, gw = source_grid(patches.shape[0])
    if (gh, gw) == (h, w):
        return pos
    dim = patches.shape[-1]
    img = patches.reshape(1, gh, gw, dim).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=(h, w), mode="bicubic", align_corners=False, antialias=False)
    patches = img.permute(0, 2, 3, 1).reshape(h * w, dim)
    return torch.cat([prefix, patches], dim=0)
