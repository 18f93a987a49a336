"""Test-time image resizing (the Segmenter normalises and pads inside its own pipeline).

Two resize flavours exist on purpose, because the official pipelines use both:

* :func:`resize_shortest_edge_pil` reproduces detectron2's ``ResizeShortestEdge`` at test time:
  the output size comes from ``ResizeShortestEdge.get_output_shape`` and a uint8 image is
  resized with **PIL** ``Image.resize(..., BILINEAR)`` (detectron2 ``ResizeTransform.apply_image``
  for uint8 input). PIL's bilinear filter is antialiased when shrinking and rounds to uint8, so it
  is *not* ``F.interpolate``; this is what SAN / CAT-Seg / SED saw in their evaluations.
* :func:`resize_image` is ``torch.nn.functional.interpolate`` on the float image
  (``align_corners=False``, no antialias unless asked), the operation the models themselves use
  inside the network.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def shortest_edge_size(
    height: int, width: int, short_edge: int, max_size: int | None = None
) -> tuple[int, int]:
    """Output ``(h, w)`` of detectron2 ``ResizeShortestEdge.get_output_shape``.

    The short side becomes ``short_edge``; if the long side then exceeds ``max_size`` both sides are
    scaled down so it equals ``max_size``; each side is rounded half up (``int(x + 0.5)``).
    """
    if height <= 0 or width <= 0 or short_edge <= 0:
        raise ValueError(f"sizes must be positive, got image {height}x{width}, short edge {short_edge}")
    scale = short_edge / min(height, width)
    if height < width:
        new_h, new_w = float(short_edge), scale * width
    else:
        new_h, new_w = scale * height, float(short_edge)
    if max_size is not None and max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_shortest_edge_pil(
    image: np.ndarray, short_edge: int, max_size: int | None = None
) -> np.ndarray:
    """Resize so the short side is ``short_edge``, exactly as detectron2 does at test time.

    Args:
        image: (H, W, 3), (H, W, 1) or (H, W) uint8.
        short_edge: target length of the shorter side (e.g. 640).
        max_size: cap on the longer side (detectron2 ``MAX_SIZE_TEST``, e.g. 2560); None = no cap.

    Returns:
        (h, w, 3) or (h, w) uint8, PIL bilinear (antialiased when shrinking). The input is returned
        unchanged when the size already matches.
    """
    _check_uint8_image(image)
    h, w = image.shape[:2]
    new_h, new_w = shortest_edge_size(h, w, short_edge, max_size)
    if (new_h, new_w) == (h, w):
        return image
    single = image.ndim == 3 and image.shape[2] == 1
    pil = Image.fromarray(image[:, :, 0] if single else image)
    resized = np.array(pil.resize((new_w, new_h), Image.Resampling.BILINEAR))
    return resized[:, :, None] if single else resized


def resize_image(
    image: ArrayOrTensor,
    size: tuple[int, int],
    mode: Literal["bilinear", "bicubic"] = "bilinear",
    antialias: bool = False,
) -> ArrayOrTensor:
    """Resize with ``F.interpolate(..., align_corners=False)`` computed in float32.

    Args:
        image: numpy (H, W, C) or (H, W) uint8 or float, or a torch tensor (..., C, H, W) float.
        size: output ``(h, w)``.
        mode: "bilinear" or "bicubic" (PyTorch's cubic kernel, a = -0.75).
        antialias: passed to ``F.interpolate`` (off in every official pipeline).

    Returns:
        The same kind as the input: numpy uint8 input is rounded half-to-even and clamped to
        [0, 255] (bicubic overshoots); numpy float input gives float32 (H', W'[, C]); a tensor
        gives a tensor (..., C, h, w) of the input's floating dtype.
    """
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"mode must be 'bilinear' or 'bicubic', got {mode!r}")
    out_h, out_w = int(size[0]), int(size[1])
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if isinstance(image, torch.Tensor):
        if image.ndim < 3 or not image.is_floating_point():
            raise ValueError(
                f"tensor input must be (..., C, H, W) float, got {tuple(image.shape)} {image.dtype}"
            )
        lead = image.shape[:-3]
        x = image.reshape(-1, *image.shape[-3:])
        y = F.interpolate(x, size=(out_h, out_w), mode=mode, align_corners=False, antialias=antialias)
        return y.reshape(*lead, *y.shape[-3:])
    if image.ndim not in (2, 3):
        raise ValueError(f"numpy input must be (H, W) or (H, W, C), got shape {image.shape}")
    x = _from_numpy(image).to(torch.float32)
    x = x[None, None] if image.ndim == 2 else x.permute(2, 0, 1)[None]
    y = F.interpolate(x, size=(out_h, out_w), mode=mode, align_corners=False, antialias=antialias)[0]
    y = y[0] if image.ndim == 2 else y.permute(1, 2, 0)
    if image.dtype == np.uint8:
        return np.ascontiguousarray(torch.round(y).clamp_(0, 255).to(torch.uint8).numpy())
    return np.ascontiguousarray(y.numpy())


def _check_uint8_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = f"{type(image).__name__} {getattr(image, 'dtype', '')}".strip()
        raise ValueError(f"expected a numpy uint8 image, got {kind}; use ovss.data.io.read_image first")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ValueError(f"expected (H, W) or (H, W, 3) uint8, got shape {image.shape}")


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    """Zero-copy view when possible; read-only or strided arrays are copied (torch needs writable)."""
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, order="C")
    return torch.from_numpy(array)
