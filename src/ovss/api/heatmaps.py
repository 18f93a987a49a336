"""Per-class score maps on disk: a float16 ``.npz`` and heat-map PNGs (one per class, or a sheet).

The heat maps share one colour scale, 0 to 1, so that classes and images can be compared by eye
(CAT-Seg and SED scores are sigmoid probabilities in [0, 1]; SAN's are mask probabilities summed over
its queries, 0 and up); it widens to ``min(0, lowest)`` .. ``max(1, highest)`` of the image's
scores where they leave it (CAT-Seg v1's ``mmseg`` protocol averages logits). Colours run from black
through purple, red and orange to pale yellow, over a dimmed grey copy of the photo.
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ovss.data.png import row_bands, save_png
from ovss.utils import atomic_write

SHEET_ABOVE = 16  # more classes than this: one tiled sheet instead of one PNG per class
SHEET_SIDE = 4096  # a sheet is at most about this wide
HEAT_WEIGHT = 0.7  # share of the heat colour in a heat-map pixel (the rest: the grey photo)

# Anchors of the colour scale (position in [0, 1], RGB).
_ANCHORS = [
    (0.0, (0, 0, 0)),
    (0.25, (70, 15, 110)),
    (0.5, (185, 45, 80)),
    (0.75, (245, 130, 25)),
    (1.0, (252, 245, 170)),
]


def colour_scale(n: int = 256) -> np.ndarray:
    """(n, 3) uint8 lookup table of the heat colours, low to high."""
    x = np.linspace(0.0, 1.0, n)
    points = [a for a, _ in _ANCHORS]
    channels = [np.interp(x, points, [c[i] for _, c in _ANCHORS]) for i in range(3)]
    return np.stack(channels, axis=1).round().astype(np.uint8)


def score_range(scores: np.ndarray) -> tuple[float, float]:
    """(low, high) of the colour scale of one image's scores: min(0, lowest) .. max(1, highest), so
    that probabilities always use the fixed 0..1 scale."""
    return min(0.0, float(np.min(scores))), max(1.0, float(np.max(scores)))


def heat(scores: np.ndarray, image: np.ndarray, low: float, high: float) -> np.ndarray:
    """(r, W, 3) uint8 heat colours of (r, W) scores over the (r, W, 3) photo rows in grey."""
    lut = colour_scale()
    index = ((scores.astype(np.float32) - low) * (255 / (high - low))).clip(0, 255).astype(np.uint8)
    grey = image.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
    out = HEAT_WEIGHT * lut[index].astype(np.float32) + (1 - HEAT_WEIGHT) * grey[..., None]
    return out.round().clip(0, 255).astype(np.uint8)


def slug(name: str) -> str:
    """A file-name-safe form of a class name (letters, digits, '-'; at most 40 characters)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[:40] or "class"


def heatmap_paths(out_dir: str | Path, stem: str, class_names: list[str]) -> list[Path]:
    """The heat-map files of an image: ``STEM_heatmap-K-NAME.png`` per class for up to
    :data:`SHEET_ABOVE` classes, else one sheet ``STEM_heatmaps.png``."""
    out = Path(out_dir)
    if len(class_names) > SHEET_ABOVE:
        return [out / f"{stem}_heatmaps.png"]
    return [out / f"{stem}_heatmap-{k}-{slug(name)}.png" for k, name in enumerate(class_names)]


def write_heatmaps(
    out_dir: str | Path, stem: str, scores: np.ndarray, image: np.ndarray, class_names: list[str]
) -> list[Path]:
    """Write the heat maps of (K, H, W) ``scores`` (:func:`heatmap_paths`), each atomically.

    One PNG per class is full size, written band by band; a sheet holds small tiles with captions.
    """
    paths = heatmap_paths(out_dir, stem, class_names)
    low, high = score_range(scores)
    if len(paths) == 1 and len(class_names) > SHEET_ABOVE:
        sheet = heat_sheet(scores, image, class_names, low, high)
        save_png(paths[0], sheet.shape[1], sheet.shape[0], iter([sheet]), "RGB")
        return paths
    h, w = scores.shape[1:]
    for k, path in enumerate(paths):
        bands = (heat(scores[k, r0:r1], image[r0:r1], low, high) for r0, r1 in row_bands(h, w, 1 << 18))
        save_png(path, w, h, bands, "RGB")
    return paths


def heat_sheet(
    scores: np.ndarray, image: np.ndarray, class_names: list[str], low: float, high: float
) -> np.ndarray:
    """(rows, cols) grid of small heat maps with the class name above each, and the scale on top.

    Returns:
        (H', W', 3) uint8, about :data:`SHEET_SIDE` pixels wide at most.
    """
    k, h, w = scores.shape
    cols = math.ceil(math.sqrt(k))
    tile = int(min(256, max(48, SHEET_SIDE // cols)))  # long side of a tile
    th, tw = max(1, round(h * tile / max(h, w))), max(1, round(w * tile / max(h, w)))
    rows_idx = (np.arange(th) * h // th)[:, None]
    cols_idx = (np.arange(tw) * w // tw)[None, :]
    small = image[rows_idx, cols_idx]
    caption, pad, header = 14, 4, 24
    cell_h, cell_w = th + caption + pad, tw + pad
    sheet = Image.new("RGB", (cols * cell_w + pad, header + math.ceil(k / cols) * cell_h + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i in range(k):
        y, x = header + (i // cols) * cell_h, pad + (i % cols) * cell_w
        draw.text((x, y), _fit(class_names[i], tw, font), fill=(0, 0, 0), font=font)
        sheet.paste(Image.fromarray(heat(scores[i][rows_idx, cols_idx], small, low, high)), (x, y + caption))
    bar = np.repeat(colour_scale(160)[None], 10, axis=0)
    sheet.paste(Image.fromarray(bar), (pad + 40, 7))
    draw.text((pad, 6), f"{low:.2f}", fill=(0, 0, 0), font=font)
    draw.text((pad + 206, 6), f"{high:.2f}  (score scale)", fill=(0, 0, 0), font=font)
    return np.asarray(sheet)


def _fit(text: str, width: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> str:
    """``text`` cut (with '...') to at most ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def write_scores_npz(path: str | Path, scores: np.ndarray, class_names: list[str]) -> Path:
    """Write (K, H, W) ``scores`` as float16 into an ``.npz`` atomically, one class at a time.

    The archive holds ``scores`` ((K, H, W) float16) and ``class_names`` ((K,) str); read it with
    ``np.load(path)`` (no pickle). Float16 keeps about 3 significant digits (steps of 2**-11 near 1).
    """
    k, h, w = scores.shape

    def chunks() -> Iterator[bytes]:
        for c in range(k):
            for r0, r1 in row_bands(h, w, 1 << 22):
                yield scores[c, r0:r1].astype("<f2").tobytes()

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True) as zf:
            with zf.open("scores.npy", "w", force_zip64=True) as f:
                header = {"descr": "<f2", "fortran_order": False, "shape": (k, h, w)}
                np.lib.format.write_array_header_1_0(f, header)
                for chunk in chunks():
                    f.write(chunk)
            with zf.open("class_names.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(class_names, dtype=str), allow_pickle=False)

    return atomic_write(Path(path), write)
