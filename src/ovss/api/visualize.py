"""Colour overlays with a legend, in Pillow only, drawn in bands of rows (bounded memory)."""

from __future__ import annotations

from collections.abc import Iterator

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
    width, height, bands = overlay_bands(
        image, label_map, class_names, fractions, alpha, legend, min_fraction
    )
    out = np.empty((height, width, 3), dtype=np.uint8)
    row = 0
    for band in bands:
        out[row : row + len(band)] = band
        row += len(band)
    return Image.fromarray(out)


def overlay_bands(
    image: np.ndarray,
    label_map: np.ndarray,
    class_names: list[str],
    fractions: np.ndarray | None = None,
    alpha: float = 0.55,
    legend: bool = True,
    min_fraction: float = 0.0,
    band_pixels: int = 1 << 18,
) -> tuple[int, int, Iterator[np.ndarray]]:
    """The overlay of :func:`overlay` as bands of rows, for writing large images in bounded memory.

    Arguments as :func:`overlay`; ``band_pixels`` is about the number of pixels per band.

    Returns:
        (width, height, bands): the overlay's size and an iterator of (r, width, 3) uint8 arrays
        covering its rows top to bottom. Only one band (and the small legend panel) is in memory
        at a time, in float32 for the blend.
    """
    h, w = label_map.shape
    colours = palette(len(class_names))
    panel = None
    if legend:
        if fractions is None:
            counts = np.bincount(label_map[label_map >= 0].ravel(), minlength=len(class_names))
            fractions = counts / max(label_map.size, 1)
        present = [k for k in np.argsort(-fractions) if fractions[k] > max(min_fraction, 0.0)]
        panel = _legend_panel([(class_names[k], tuple(colours[k]), float(fractions[k])) for k in present])
    width = w + (panel.shape[1] if panel is not None else 0)
    height = max(h, panel.shape[0]) if panel is not None else h

    def bands() -> Iterator[np.ndarray]:
        step = max(1, band_pixels // max(width, 1))
        for r0 in range(0, height, step):
            r1 = min(height, r0 + step)
            out = np.full((r1 - r0, width, 3), 255, dtype=np.uint8)
            if r0 < h:
                out[: min(r1, h) - r0, :w] = _blend(image[r0:r1], label_map[r0:r1], colours, alpha)
            if panel is not None and r0 < panel.shape[0]:
                rows = panel[r0:r1]
                out[: len(rows), w:] = rows
            yield out

    return width, height, bands()


def _blend(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    """(r, W, 3) uint8: ``(1 - alpha) * image + alpha * colour`` where labelled, the image elsewhere."""
    valid = labels >= 0
    colour = colours[np.where(valid, labels, 0)].astype(np.float32)
    pixels = image.astype(np.float32)
    blended = np.where(valid[..., None], (1 - alpha) * pixels + alpha * colour, pixels)
    return blended.round().clip(0, 255).astype(np.uint8)


def _legend_panel(entries: list[tuple[str, tuple[int, ...], float]]) -> np.ndarray:
    """(rows, width, 3) uint8 white panel with one colour swatch and "name xx.x%" line per entry."""
    font = ImageFont.load_default()
    row = 18
    lines = [f"{name} {100 * frac:.1f}%" for name, _, frac in entries]
    text_w = max((int(font.getlength(t)) for t in lines), default=0)
    width = 16 + 14 + 6 + text_w + 8
    panel = Image.new("RGB", (width, 8 + row * len(entries)), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    x = 8
    for i, ((_, colour, _), text) in enumerate(zip(entries, lines)):
        y = 6 + i * row
        draw.rectangle([x, y, x + 13, y + 13], fill=colour, outline=(0, 0, 0))
        draw.text((x + 20, y), text, fill=(0, 0, 0), font=font)
    return np.asarray(panel)
