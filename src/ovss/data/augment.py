"""Training augmentations of the official semantic mappers (MaskFormer ``mask_former_semantic``).

In order, for one image and its label map:

1. ``ResizeShortestEdge`` ("choice"): the short side is drawn from ``min_sizes``, the long side
   capped at ``max_size`` (detectron2 ``get_output_shape``); the uint8 image is resized with PIL
   bilinear, the label with torch ``nearest`` (the mapper reads labels as float64, which detectron2
   resizes with ``F.interpolate``).
2. ``RandomCrop_CategoryAreaConstraint`` ("absolute" crop of ``crop_size``, clipped to the image):
   with ``single_category_max_area < 1`` up to 10 crops are tried until no single class (ignore
   excluded) covers that fraction of the crop and at least two classes are present; the last try
   is kept otherwise. All three official recipes use 1.0 (a plain random crop).
3. ``ColorAugSSD`` photometric distortion: brightness (+-32), then either contrast, saturation,
   hue or saturation, hue, contrast, each applied with probability 1/2 (contrast and saturation
   x U(0.5, 1.5), hue +-18 on OpenCV's 0..179 scale); values are truncated to uint8 after every
   step as the official ``convert``. The HSV round trip follows OpenCV's 8-bit formulas.
4. Horizontal flip with probability 1/2.
5. Pad bottom/right to ``crop_size``: image with ``pad_value`` (128 officially), label with
   ``ignore_index``.

Every random draw comes from the ``numpy.random.Generator`` passed in, so a sample's augmentation is
a pure function of its seed (the training sampler derives one seed per sample position, which makes
runs reproducible and resumable whatever the number of workers or processes).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ovss.config import Config
from ovss.data.transforms import shortest_edge_size
from ovss.errors import ConfigError


@dataclasses.dataclass(kw_only=True)
class AugmentConfig(Config):
    """Training augmentation (detectron2 ``INPUT.*`` names in brackets)."""

    min_sizes: tuple[int, ...] = (640,)  # short-side choices [MIN_SIZE_TRAIN, sampling "choice"]
    max_size: int = 2560  # cap on the long side after resizing [MAX_SIZE_TRAIN]
    crop_size: int = 640  # square crop side, also the padded size [CROP.SIZE, SIZE_DIVISIBILITY]
    single_category_max_area: float = 1.0  # crop constraint; 1.0 = plain random crop [CROP.*]
    photometric: bool = True  # ColorAugSSD distortion [COLOR_AUG_SSD]
    flip: bool = True  # random horizontal flip, p = 0.5
    pad_value: int = 128  # image padding value (raw 0..255 scale) of the official mapper
    ignore_index: int = 255  # label of padding and of pixels without a class

    def __post_init__(self) -> None:
        if not self.min_sizes or any(s <= 0 for s in self.min_sizes):
            raise ConfigError(f"AugmentConfig.min_sizes must be positive sizes, got {self.min_sizes}")
        if self.max_size <= 0 or self.crop_size <= 0:
            raise ConfigError(
                f"AugmentConfig.max_size/crop_size must be positive, got {self.max_size}/{self.crop_size}"
            )
        if not 0.0 < self.single_category_max_area <= 1.0:
            raise ConfigError(
                "AugmentConfig.single_category_max_area must be in (0, 1], got "
                f"{self.single_category_max_area}"
            )
        if not 0 <= self.pad_value <= 255:
            raise ConfigError(f"AugmentConfig.pad_value must be in 0..255, got {self.pad_value}")


# ------------------------------------------------------------------------------------------ geometry
def resize(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize an (H, W, 3) uint8 image (PIL bilinear) and an (H, W) label (torch nearest) to ``size``."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image, label
    out = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    lab = torch.from_numpy(np.ascontiguousarray(label)).double()[None, None]
    return out, F.interpolate(lab, size=(h, w), mode="nearest")[0, 0].to(torch.int64).numpy()


def resize_shortest_edge(
    image: np.ndarray, label: np.ndarray, min_sizes: tuple[int, ...], max_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """detectron2 ``ResizeShortestEdge(sample_style="choice")`` on an image/label pair."""
    short = int(min_sizes[int(rng.integers(len(min_sizes)))])
    return resize(image, label, shortest_edge_size(image.shape[0], image.shape[1], short, max_size))


def crop_window(
    label: np.ndarray,
    crop_size: int,
    rng: np.random.Generator,
    single_category_max_area: float = 1.0,
    ignore_index: int | None = 255,
    tries: int = 10,
) -> tuple[int, int, int, int]:
    """Top-left corner and size ``(y0, x0, h, w)`` of a random crop (``RandomCrop_CategoryAreaConstraint``).

    Args:
        label: (H, W) label map.
        crop_size: crop side; clipped to the image ("absolute" crop).
        rng: random generator.
        single_category_max_area: < 1 retries crops (up to ``tries``) until the largest class covers
            less than this fraction of the non-ignored pixels and at least two classes are present.
        ignore_index: label excluded from the class counts.
        tries: retries of the constrained crop.
    """
    h, w = label.shape
    ch, cw = min(crop_size, h), min(crop_size, w)
    for _ in range(1 if single_category_max_area >= 1.0 else tries):
        y0 = int(rng.integers(h - ch + 1))
        x0 = int(rng.integers(w - cw + 1))
        if single_category_max_area >= 1.0:
            break
        values, counts = np.unique(label[y0 : y0 + ch, x0 : x0 + cw], return_counts=True)
        if ignore_index is not None:
            counts = counts[values != ignore_index]
        if len(counts) > 1 and counts.max() < counts.sum() * single_category_max_area:
            break
    return y0, x0, ch, cw


def pad_to(
    image: np.ndarray, label: np.ndarray, size: int, pad_value: int, ignore_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pad bottom/right to ``size`` x ``size`` (image ``pad_value``, label ``ignore_index``)."""
    h, w = label.shape
    if h > size or w > size:
        raise ValueError(f"cannot pad a {h}x{w} crop to {size}x{size}; crop first")
    out = np.full((size, size, 3), pad_value, dtype=np.uint8)
    out[:h, :w] = image
    lab = np.full((size, size), ignore_index, dtype=np.int64)
    lab[:h, :w] = label
    return out, lab


# ------------------------------------------------------------------------------------------ colour
def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """OpenCV 8-bit RGB -> HSV: H in 0..179 (degrees / 2), S and V in 0..255; (H, W, 3) uint8."""
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(-1)
    delta = v - x.min(-1)
    s = np.where(v > 0, 255.0 * delta / np.maximum(v, 1e-6), 0.0)
    safe = np.maximum(delta, 1e-6)
    h = np.where(v == r, 60.0 * (g - b) / safe, np.where(v == g, 120.0 + 60.0 * (b - r) / safe,
                                                         240.0 + 60.0 * (r - g) / safe))
    h = np.where(delta == 0, 0.0, h)
    h = np.where(h < 0, h + 360.0, h)
    out = np.stack([np.rint(h / 2.0) % 180, np.rint(s), v], axis=-1)
    return np.clip(out, 0, 255).astype(np.uint8)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv` (OpenCV 8-bit HSV -> RGB), (H, W, 3) uint8."""
    h = hsv[..., 0].astype(np.float32) * 2.0 / 60.0  # sector 0..6
    s = hsv[..., 1].astype(np.float32) / 255.0
    v = hsv[..., 2].astype(np.float32)
    sector = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(hsv.shape, dtype=np.float32)
    for i, (r, g, b) in enumerate(table):
        sel = sector == i
        out[sel] = np.stack([r[sel], g[sel], b[sel]], axis=-1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # official ColorAugSSDTransform.convert: float32 affine, clip, truncate to uint8
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distort(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: float = 32.0,
    contrast: tuple[float, float] = (0.5, 1.5),
    saturation: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """SSD colour distortion (detectron2 PointRend ``ColorAugSSDTransform``) of (H, W, 3) uint8 RGB."""

    def contrast_op(img: np.ndarray) -> np.ndarray:
        return _convert(img, alpha=rng.uniform(*contrast)) if rng.integers(2) else img

    def saturation_op(img: np.ndarray) -> np.ndarray:
        if not rng.integers(2):
            return img
        hsv = rgb_to_hsv(img)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*saturation))
        return hsv_to_rgb(hsv)

    def hue_op(img: np.ndarray) -> np.ndarray:
        if not rng.integers(2):
            return img
        hsv = rgb_to_hsv(img)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + int(rng.integers(-hue_delta, hue_delta + 1))) % 180
        return hsv_to_rgb(hsv)

    if rng.integers(2):
        image = _convert(image, beta=rng.uniform(-brightness_delta, brightness_delta))
    ops = (contrast_op, saturation_op, hue_op) if rng.integers(2) else (saturation_op, hue_op, contrast_op)
    for op in ops:
        image = op(image)
    return image


# ------------------------------------------------------------------------------------------ pipeline
def augment(
    image: np.ndarray, label: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The full training pipeline (module docstring, steps 1-5).

    Args:
        image: (H, W, 3) uint8 RGB.
        label: (H, W) integer label map (class ids and ``cfg.ignore_index``).
        cfg: augmentation settings.
        rng: the sample's random generator.

    Returns:
        image (S, S, 3) uint8 and label (S, S) int64, S = ``cfg.crop_size``.
    """
    if image.shape[:2] != label.shape:
        raise ValueError(f"image {image.shape[:2]} and label {label.shape} differ in size; check the pair")
    image, label = resize_shortest_edge(image, label, cfg.min_sizes, cfg.max_size, rng)
    y0, x0, h, w = crop_window(label, cfg.crop_size, rng, cfg.single_category_max_area, cfg.ignore_index)
    image, label = image[y0 : y0 + h, x0 : x0 + w], label[y0 : y0 + h, x0 : x0 + w]
    if cfg.photometric:
        image = photometric_distort(image, rng)
    if cfg.flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return pad_to(image, label, cfg.crop_size, cfg.pad_value, cfg.ignore_index)
