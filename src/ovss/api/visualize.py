"""Colour overlays with a legend, in Pillow only."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ovss.data.io import voc_palette


def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours: the VOC bit-interleaved palette without its black entry 0."""
    return voc_palette(num_classes + 1)[1 : num_classes + 1]


def overlay(
    image: np.ndarray,
    label_map: np.ndarray,
    class_names: list[str],
    fractions: np.ndarray | None = None,
    alpha: float = 0.55,
    legend: bool = True,
    min_fraction: float = 0.0,
) -> Image.Image:
    """Blend a colour label map over the image and append a legend of the classes present.

    Args:
        image: (H, W, 3) uint8 RGB.
        label_map: (H, W) int class indices into ``class_names`` (negative = unlabelled, not drawn).
        class_names: K display names.
        fractions: (K,) pixel fraction per class, shown in the legend (computed when None).
        alpha: opacity of the colours in [0, 1].
        legend: draw a legend panel to the right of the image.
        min_fraction: classes covering less than this fraction are left out of the legend.

    Returns:
        RGB PIL image, (H, W) or wider with the legend.
    """
    colours = palette(len(class_names))
    valid = label_map >= 0
    colour_map = np.zeros_like(image)
    colour_map[valid] = colours[label_map[valid]]
    blended = image.astype(np.float32)
    blended[valid] = (1 - alpha) * blended[valid] + alpha * colour_map[valid].astype(np.float32)
    out = Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))
    if not legend:
        return out
    if fractions is None:
        counts = np.bincount(label_map[valid].ravel(), minlength=len(class_names))
        fractions = counts / max(label_map.size, 1)
    present = [k for k in np.argsort(-fractions) if fractions[k] > max(min_fraction, 0.0)]
    return _with_legend(out, [(class_names[k], tuple(colours[k]), float(fractions[k])) for k in present])


def _with_legend(image: Image.Image, entries: list[tuple[str, tuple[int, ...], float]]) -> Image.Image:
    font = ImageFont.load_default()
    row = 18
    lines = [f"{name} {100 * frac:.1f}%" for name, _, frac in entries]
    text_w = max((int(font.getlength(t)) for t in lines), default=0)
    width = 16 + 14 + 6 + text_w + 8
    height = max(image.height, 8 + row * len(entries))
    canvas = Image.new("RGB", (image.width + width, height), (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = image.width + 8
    for i, ((_, colour, _), text) in enumerate(zip(entries, lines)):
        y = 6 + i * row
        draw.rectangle([x, y, x + 13, y + 13], fill=colour, outline=(0, 0, 0))
        draw.text((x + 20, y), text, fill=(0, 0, 0), font=font)
    return canvas
