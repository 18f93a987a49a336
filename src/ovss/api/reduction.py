"""Per-block reductions of score maps, in the form that is fast for the block's memory layout.

A score block is (B, k, r, W) float32. Models hand over either channels-first blocks (contiguous;
SAN) or channels-last views of (r, B, W, k) bands (CAT-Seg, SED). A maximum is exact whatever the
order of its reduction, so it is computed in the order that reads memory contiguously (measured at
640 x 853, K = 20, one thread: a channels-last block's class maxima 4.3 ms instead of 22.5 ms).
"""

from __future__ import annotations

import torch


def class_maxima(block: torch.Tensor) -> torch.Tensor:
    """(B, k, r, W) -> (B, k): the maximum of each class map (``block.amax(dim=(2, 3))``)."""
    if block.stride(1) == 1 and block.shape[1] > 1:  # channels-last: reduce rows, then columns
        return block.permute(0, 2, 3, 1).amax(dim=1).amax(dim=1)
    return block.amax(dim=(2, 3))
