"""Windows of a channels-last grid (Swin, CAT-Seg's spatial aggregation): partition, merge, and the
additive mask of cyclically shifted windows."""

from __future__ import annotations

import torch


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(N, H, W, C) -> (N, nW, window*window, C), windows in row-major order."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (h // window) * (w // window), window * window, c)


def window_merge(x: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (N, nW, window*window, C) -> (N, H, W, C)."""
    n, c = x.shape[0], x.shape[-1]
    x = x.reshape(n, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h, w, c)


def shift_window_mask(
    h: int, w: int, window: int, shift: int, dtype: torch.dtype, device: torch.device | str | None = None
) -> torch.Tensor:
    """Additive Swin mask for cyclically shifted windows (-100 between tokens of different regions).

    Equals the ``attn_mask`` buffer the official ``SwinTransformerBlock`` registers (and stores in
    its checkpoints), so the buffer is derivable and is not kept as model state.

    Returns:
        (nW, window*window, window*window) in ``dtype`` on ``device``; values 0 or -100.
    """
    labels = torch.zeros(1, h, w, 1, device=device)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    region = 0
    for hs in bounds:
        for ws in bounds:
            labels[:, hs, ws, :] = region
            region += 1
    labels = window_partition(labels, window)[0, :, :, 0]  # (nW, N)
    diff = labels[:, None, :] - labels[:, :, None]
    return torch.zeros(diff.shape, dtype=dtype, device=device).masked_fill(diff != 0, -100.0)
