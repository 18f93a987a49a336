"""OpenCV's ``cv2.resize(..., INTER_LINEAR)`` of uint8 images, bit for bit, in torch integer maths.

mmsegmentation's test pipeline resizes with cv2 (``mmcv.imresize``), whose 8-bit bilinear resize is
fixed point: 11-bit weights ``round((1 - f) * 2048)`` and ``round(f * 2048)`` (rounded separately),
an integer horizontal pass, then the SIMD vertical pass
``((((S0 >> 4) * b0) >> 16) + (((S1 >> 4) * b1) >> 16) + 2) >> 2``. Columns are clamped at the
borders (weight 1 on the edge pixel); rows are not (out-of-range rows are replaced by the edge row
with the unclamped weights). Verified to reproduce the ``catsegmm_a`` fixture's ``input.npy`` exactly
(cv2 4.x, 120x168 -> 512x717). For an exact 2x downscale of both axes cv2 switches to INTER_AREA,
the rounded 2x2 mean ``(a + b + c + d + 2) >> 2``; the fixed-point linear path gives exactly that
there (weights 1024/1024), so no special case is needed (tested).
"""

from __future__ import annotations

import torch

_ONE = 2048  # INTER_RESIZE_COEF_SCALE


def _coefficients(dst: int, src: int, clamp: bool) -> tuple[torch.Tensor, ...]:
    """Source indices (i0, i1), integer weights (w0, w1) and the right-border mask of one axis."""
    scale = 1.0 / (dst / src)
    f = ((torch.arange(dst, dtype=torch.float64) + 0.5) * scale - 0.5).float()
    s = torch.floor(f)
    f = f - s
    s = s.long()
    right = torch.zeros(dst, dtype=torch.bool)
    if clamp:
        left = s < 0
        f[left], s[left] = 0.0, 0
        right = s >= src - 1
        f[right], s[right] = 0.0, src - 1
    w0 = torch.round((1.0 - f) * _ONE).long()  # round half to even, as cvRound
    w1 = torch.round(f * _ONE).long()
    return s.clamp(0, src - 1), (s + 1).clamp(0, src - 1), w0, w1, right


def cv2_resize_linear(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of uint8-valued images exactly as ``cv2.resize(img, (w, h), INTER_LINEAR)``.

    Args:
        image: (..., H, W) integer-valued tensor (uint8 or float holding 0..255 integers); float values
            are rounded and saturated to 0..255 as a uint8 image's are (the shifts below then only see
            non-negative numbers, which an ONNX export computes the same way: its right shift of a
            signed integer is a division, rounding toward zero).
        size: (h, w) output size.

    Returns:
        (..., h, w) float32 holding integers in 0..255.
    """
    h, w = size
    # int32 is enough (at most (255 * 2048 >> 4) * 2048 < 2**31); a uint8 image is indexed as it is,
    # so a large photo is never held in a wide integer type (only its (..., H, w) horizontal pass)
    src = image.round().clamp(0, 255).to(torch.int32) if image.is_floating_point() else image
    sh, sw = src.shape[-2:]
    if (sh, sw) == (h, w):
        return src.float()
    x0, x1, a0, a1, right = _coefficients(w, sw, clamp=True)
    y0, y1, b0, b1, _ = _coefficients(h, sh, clamp=False)
    dev = src.device
    x0, x1, right = x0.to(dev), x1.to(dev), right.to(dev)
    a0, a1 = a0.to(dev, torch.int32), a1.to(dev, torch.int32)
    left = src[..., x0].to(torch.int32)
    rows = left * a0 + src[..., x1].to(torch.int32) * a1  # (..., H, w), horizontal pass
    rows = torch.where(right, left * _ONE, rows)
    r0, r1 = rows[..., y0.to(dev), :], rows[..., y1.to(dev), :]
    b0, b1 = b0.to(dev, torch.int32).view(-1, 1), b1.to(dev, torch.int32).view(-1, 1)
    out = (((r0 >> 4) * b0) >> 16) + (((r1 >> 4) * b1) >> 16)
    return ((out + 2) >> 2).clamp(0, 255).float()


def mmcv_rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of mmcv ``imrescale`` with ``keep_ratio``: fit inside ``scale`` = (long, short) edges."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def mmcv_shortest_edge_size(
    height: int, width: int, short: int = 640, max_size: int = 2560
) -> tuple[int, int]:
    """(h, w) of mmseg's ``ResizeShortestEdge(scale=short, max_size)`` on a ``height`` x ``width`` image.

    The transform computes a target (short side ``short``, long side scaled and capped at ``max_size``,
    each rounded half up) and hands it to mmcv ``Resize(keep_ratio=True)``, whose ``imrescale`` rounds
    again from the factor that fits the image inside that target (:func:`mmcv_rescale_size`).
    """
    scale = short / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max(new_h, new_w) > max_size:
        cap = max_size / max(new_h, new_w)
        new_h, new_w = new_h * cap, new_w * cap
    return mmcv_rescale_size(height, width, (int(new_h + 0.5), int(new_w + 0.5)))


def mmcv_scale_factor_size(height: int, width: int, ratio: float) -> tuple[int, int]:
    """(h, w) of mmcv ``Resize(scale_factor=ratio, keep_ratio=True)`` (mmseg's ``tta_pipeline``): the
    target ``round(size * ratio)`` fitted by ``imrescale``."""
    target = (int(height * float(ratio) + 0.5), int(width * float(ratio) + 0.5))
    return mmcv_rescale_size(height, width, target)
