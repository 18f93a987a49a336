"""cv2-exact resize special cases and mmcv's size rounding (the mmseg test pipelines)."""

from __future__ import annotations

import torch

from ovss.layers.cv2_resize import cv2_resize_linear, mmcv_scale_factor_size, mmcv_shortest_edge_size


def test_exact_half_size_is_cv2s_area_average():
    """cv2 switches INTER_LINEAR to INTER_AREA for exact 2x downscales (the rounded 2x2 mean); the
    fixed-point linear path gives the same numbers there (weights 1024 / 1024)."""
    img = torch.randint(0, 256, (3, 8, 12), generator=torch.Generator().manual_seed(0))
    out = cv2_resize_linear(img.to(torch.uint8), (4, 6))
    quad = img[:, 0::2, 0::2] + img[:, 0::2, 1::2] + img[:, 1::2, 0::2] + img[:, 1::2, 1::2]
    assert torch.equal(out, ((quad + 2) // 4).float())
    odd = torch.tensor([[[1, 2], [2, 2]]], dtype=torch.uint8)  # sum 7: (7 + 2) >> 2 = 2
    assert cv2_resize_linear(odd, (1, 1)).item() == 2.0
    assert cv2_resize_linear(img, (4, 7)).shape == (3, 4, 7)  # not 2x on both axes: the linear path


def test_mmcv_sizes():
    assert mmcv_shortest_edge_size(160, 160) == (640, 640)
    assert mmcv_shortest_edge_size(480, 640) == (640, 853)
    assert mmcv_shortest_edge_size(101, 500) == (517, 2559)  # capped: imrescale rounds again
    assert mmcv_scale_factor_size(480, 640, 0.75) == (360, 480)
    assert mmcv_scale_factor_size(427, 640, 1.75) == (747, 1120)


def test_float_input_is_saturated_like_uint8():
    """Float values outside 0..255 are rounded and saturated as a uint8 image's would be (the
    integer shifts then never see a negative number: an ONNX export divides there, rounding toward
    zero, where torch's shift rounds down)."""
    x = torch.randn(2, 3, 7, 9, generator=torch.Generator().manual_seed(0)) * 300
    saturated = x.round().clamp(0, 255).to(torch.uint8)
    out = cv2_resize_linear(x, (11, 5))
    assert torch.equal(out, cv2_resize_linear(saturated, (11, 5)))
    assert out.min() >= 0 and out.max() <= 255
    assert torch.equal(cv2_resize_linear(x, (7, 9)), saturated.float())  # same size: saturated too
