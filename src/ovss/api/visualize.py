"""Colour overlays with class names on the regions and a legend, in Pillow only, drawn in bands of
rows (bounded memory). Colours: :mod:`ovss.api.palettes` (stable per class name); names:
:mod:`ovss.api.labels`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ovss.api.labels import label_stamps
from ovss.api.palettes import Palette, class_colours
from ovss.data.io import voc_palette
from ovss.errors import ConfigError


def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours by class *index*: the VOC bit-interleaved palette without its
    black entry 0 (the colours before they became per name; :func:`ovss.api.palettes.class_colours`)."""
    return voc_palette(num_classes + 1)[1 : num_classes + 1]


def check_opacity(opacity: float) -> float:
    """``opacity`` as a float in [0, 1]; ConfigError (one line) otherwise."""
    try:
        value = float(opacity)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ConfigError(
            f"opacity must be a number from 0 (image only) to 1 (colours only), got {opacity!r}"
        )
    return value


def overlay(
    image: np.ndarray,
    label_map: np.ndarray,
    class_names: list[str],
    fractions: np.ndarray | None = None,
    opacity: float = 0.55,
    legend: bool = True,
    min_fraction: float = 0.0,
    *,
    palette: str | Path | Palette | None = None,
    labels: bool = True,
) -> Image.Image:
    """Blend a colour label map over the image, write the class names on it, append a legend.

    Args:
        image: (H, W, 3) uint8 RGB.
        label_map: (H, W) int class indices into ``class_names``; a value outside [0, K) (negative,
            or the unlabelled value 255 / 65535 of ``predict(min_score=...)``) is unlabelled: the
            image shows through uncoloured and the legend lists the fraction as "unlabelled".
        class_names: K display names.
        fractions: (K,) pixel fraction per class, shown in the legend (computed when None).
        opacity: opacity of the colours in [0, 1].
        legend: draw a legend panel to the right of the image.
        min_fraction: classes covering less than this fraction are left out of the legend.
        palette: colours (:func:`ovss.api.palettes.get_palette`: a name, a JSON file; None:
            ``default``); a class's colour depends on its name only.
        labels: write each class's name on its largest region (:func:`label_stamps`).

    Returns:
        RGB PIL image, (H, W) or wider with the legend.
    """
    width, height, bands = overlay_bands(
        image,
        label_map,
        class_names,
        fractions,
        opacity,
        legend,
        min_fraction,
        palette=palette,
        labels=labels,
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
    opacity: float = 0.55,
    legend: bool = True,
    min_fraction: float = 0.0,
    band_pixels: int = 1 << 18,
    *,
    palette: str | Path | Palette | None = None,
    labels: bool = True,
) -> tuple[int, int, Iterator[np.ndarray]]:
    """The overlay of :func:`overlay` as bands of rows, for writing large images in bounded memory.

    Arguments as :func:`overlay`; ``band_pixels`` is about the number of pixels per band.

    Returns:
        (width, height, bands): the overlay's size and an iterator of (r, width, 3) uint8 arrays
        covering its rows top to bottom. Only one band (plus the small legend panel and name
        stamps) is in memory at a time, in float32 for the blend.
    """
    opacity = check_opacity(opacity)
    h, w = label_map.shape
    k = len(class_names)
    colours = class_colours(class_names, palette)
    panel = None
    if legend:
        counts = None
        if fractions is None:
            counts = np.bincount(label_map[(label_map >= 0) & (label_map < k)].ravel(), minlength=k)
            fractions = counts / max(label_map.size, 1)
        present = [c for c in np.argsort(-fractions, kind="stable") if fractions[c] > max(min_fraction, 0.0)]
        entries: list[tuple[str, tuple[int, ...] | None, float]] = [
            (class_names[c], tuple(int(v) for v in colours[c]), float(fractions[c])) for c in present
        ]
        unlabelled = 1.0 - float(np.sum(fractions))
        if unlabelled > 1e-9 and np.any((label_map < 0) | (label_map >= k)):
            entries.append(("unlabelled", None, unlabelled))
        panel = _legend_panel(entries)
    stamps = label_stamps(label_map, class_names) if labels else []
    width = w + (panel.shape[1] if panel is not None else 0)
    height = max(h, panel.shape[0]) if panel is not None else h

    def bands() -> Iterator[np.ndarray]:
        step = max(1, band_pixels // max(width, 1))
        for r0 in range(0, height, step):
            r1 = min(height, r0 + step)
            out = np.full((r1 - r0, width, 3), 255, dtype=np.uint8)
            if r0 < h:
                out[: min(r1, h) - r0, :w] = _blend(image[r0:r1], label_map[r0:r1], colours, opacity)
                for stamp in stamps:
                    stamp.paste(out, r0)
            if panel is not None and r0 < panel.shape[0]:
                rows = panel[r0:r1]
                out[: len(rows), w:] = rows
            yield out

    return width, height, bands()


def _blend(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, opacity: float) -> np.ndarray:
    """(r, W, 3) uint8: ``(1 - opacity) * image + opacity * colour`` where labelled, the image elsewhere."""
    valid = (labels >= 0) & (labels < len(colours))
    colour = colours[np.where(valid, labels, 0)].astype(np.float32)
    pixels = image.astype(np.float32)
    blended = np.where(valid[..., None], (1 - opacity) * pixels + opacity * colour, pixels)
    return blended.round().clip(0, 255).astype(np.uint8)


def _legend_panel(entries: list[tuple[str, tuple[int, ...] | None, float]]) -> np.ndarray:
    """(rows, width, 3) uint8 white panel with one colour swatch and "name xx.x%" line per entry.

    An entry without a colour (the unlabelled pixels) gets an empty swatch.
    """
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
        draw.rectangle([x, y, x + 13, y + 13], fill=colour or (255, 255, 255), outline=(0, 0, 0))
        draw.text((x + 20, y), text, fill=(0, 0, 0), font=font)
    return np.asarray(panel)
