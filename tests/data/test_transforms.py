"""Test-time transforms against their references: detectron2 sizes, PIL, F.interpolate, ImageList."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ovss.data.io import read_image
from ovss.data.transforms import (
    resize_image,
    resize_shortest_edge_pil,
    shortest_edge_size,
)

CLIP_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_STD = (68.5005327, 66.6321579, 70.3231630)


@pytest.mark.parametrize(
    ("hw", "short", "max_size", "expected"),
    [
        ((643, 960), 640, 2560, (640, 956)),  # 960 * 640/643 = 955.52 -> 956
        ((960, 643), 640, 2560, (956, 640)),
        ((500, 500), 640, None, (640, 640)),
        ((100, 1000), 640, 2560, (256, 2560)),  # long side capped: scale 0.4
        ((375, 500), 384, 1333, (384, 512)),
        ((333, 500), 640, 2560, (640, 961)),  # 960.96 -> 961
    ],
)
def test_shortest_edge_size(hw, short, max_size, expected):
    assert shortest_edge_size(*hw, short, max_size) == expected


def test_resize_shortest_edge_pil_matches_pil_bilinear(data_dir):
    image = read_image(data_dir / "quokka.jpg")  # 643 x 960
    out = resize_shortest_edge_pil(image, 320, 2560)
    assert out.shape == (320, 478, 3) and out.dtype == np.uint8  # 960 * 320/643 = 477.76
    expected = np.asarray(Image.fromarray(image).resize((478, 320), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out, expected)
    # PIL shrinks with an antialiased filter: far from plain bilinear F.interpolate, near antialiased
    plain = resize_image(image, (320, 478))
    smooth = resize_image(image, (320, 478), antialias=True)
    err_plain = np.abs(out.astype(int) - plain).mean()
    err_smooth = np.abs(out.astype(int) - smooth).mean()
    assert err_smooth < 1.0 < err_plain

    gray = image[:, :, :1].copy()
    out1 = resize_shortest_edge_pil(gray, 320)
    assert out1.shape == (320, 478, 1)
    ref1 = Image.fromarray(gray[:, :, 0]).resize((478, 320), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(out1[:, :, 0], np.asarray(ref1))
    assert resize_shortest_edge_pil(image, 643) is image


def test_resize_image_numpy_is_interpolate_on_float():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    for mode in ("bilinear", "bicubic"):
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        ref = F.interpolate(x, size=(31, 12), mode=mode, align_corners=False)[0].permute(1, 2, 0)
        out = resize_image(image, (31, 12), mode)
        assert out.dtype == np.uint8 and out.shape == (31, 12, 3)
        np.testing.assert_array_equal(out, ref.round().clamp(0, 255).to(torch.uint8).numpy())
        out_f = resize_image(image.astype(np.float32), (31, 12), mode)
        assert out_f.dtype == np.float32
        np.testing.assert_allclose(out_f, ref.numpy(), rtol=0, atol=1e-5)
    # bicubic overshoots beyond [0, 255] on a hard edge; uint8 output is clamped, float is not
    edge = np.zeros((8, 8), np.uint8)
    edge[:, 4:] = 255
    assert resize_image(edge.astype(np.float32), (8, 13), "bicubic").max() > 255
    assert resize_image(edge, (8, 13), "bicubic").max() == 255


def test_resize_image_tensor():
    x = torch.randn(2, 3, 10, 14)
    out = resize_image(x, (5, 7), "bicubic")
    torch.testing.assert_close(out, F.interpolate(x, (5, 7), mode="bicubic", align_corners=False))
    assert resize_image(x[0], (5, 7)).shape == (3, 5, 7)
    with pytest.raises(ValueError, match="mode"):
        resize_image(x, (5, 7), "nearest")
