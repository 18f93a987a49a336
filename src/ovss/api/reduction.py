"""Per-block reductions of score maps, in the form that is fast for the block's memory layout.

A score block is (B, k, r, W) float32. Models hand over either channels-first blocks (contiguous;
SAN) or channels-last views of (r, B, W, k) bands (CAT-Seg, SED). Max reductions are exact whatever
their order, so each is computed in the order that reads memory contiguously (measured at 640 x 853,
K = 20, one thread: a channels-last block's class maxima 4.3 ms instead of 22.5 ms, a channels-first
block's per-pixel maximum and label 16.5 ms instead of 22.8 ms).
"""

from __future__ import annotations

import torch

LOOP_CLASSES = 64  # up to this many classes per block, labels come from one pass per class


def class_maxima(block: torch.Tensor) -> torch.Tensor:
    """(B, k, r, W) -> (B, k): the maximum of each class map (``block.amax(dim=(2, 3))``)."""
    if block.stride(1) == 1 and block.shape[1] > 1:  # channels-last: reduce rows, then columns
        return block.permute(0, 2, 3, 1).amax(dim=1).amax(dim=1)
    return block.amax(dim=(2, 3))


def pixel_maxima(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, k, r, W) -> the per-pixel maximum (B, r, W) and its class (int64, the first among ties),
    as ``block.max(dim=1)`` for finite scores.

    For a channels-first block with few classes the maximum is one vectorised ``amax`` over the class
    planes and the label one comparison per class plane (from the last class down, so the first equal
    class wins); ``max(dim=1)`` computes its index element by element.
    """
    k = block.shape[1]
    if block.stride(1) == 1 or k > LOOP_CLASSES or k == 1:
        return block.max(dim=1)
    value = block.amax(dim=1)
    label = torch.zeros(value.shape, dtype=torch.int64, device=block.device)
    equal = torch.empty(value.shape, dtype=torch.bool, device=block.device)
    for c in range(k - 1, -1, -1):  # class 0 too: it overrides a later equal class
        torch.eq(block[:, c], value, out=equal)
        label.masked_fill_(equal, c)
    return value, label
