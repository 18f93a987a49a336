"""Class names written on the regions of an overlay (Pillow's built-in font, no font files).

Each class present gets its name once, centred on an interior point of its largest connected region:
the point farthest from the region's border (the maximum of the Euclidean distance transform), found
on a copy of the label map at most :data:`GRID` pixels on its long side so that the cost stays small
for any image size. The name is white with a black outline (a text stroke), readable on every colour.
A region too small to hold its name (less than :data:`MIN_INSIDE` of the text box on the region) gets
no name; the legend still lists the class.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GRID = 512  # long side of the label-map copy on which regions and interior points are found
MIN_INSIDE = 0.9  # fraction of the text box that must lie on the region
TEXT = (255, 255, 255)  # name colour
OUTLINE = (0, 0, 0)  # stroke colour


@dataclasses.dataclass(frozen=True)
class Stamp:
    """One rendered name: its pixels and where they go in the image.

    Attributes:
        name: the text.
        top, left: position of the stamp's top-left pixel in the image.
        rgb: (h, w, 3) uint8 colours; alpha: (h, w) float32 coverage in [0, 1].
    """

    name: str
    top: int
    left: int
    rgb: np.ndarray
    alpha: np.ndarray

    @property
    def centre(self) -> tuple[int, int]:
        """(row, column) of the stamp's centre in the image."""
        return self.top + self.rgb.shape[0] // 2, self.left + self.rgb.shape[1] // 2

    def paste(self, band: np.ndarray, row0: int) -> None:
        """Blend the stamp into ``band`` (rows ``row0 ...`` of the image, (r, W', 3) uint8) in place."""
        h, w = self.alpha.shape
        r0, r1 = max(self.top, row0), min(self.top + h, row0 + band.shape[0])
        if r0 >= r1:
            return
        a = self.alpha[r0 - self.top : r1 - self.top, :, None]
        rgb = self.rgb[r0 - self.top : r1 - self.top].astype(np.float32)
        target = band[r0 - row0 : r1 - row0, self.left : self.left + w]
        target[:] = (a * rgb + (1 - a) * target.astype(np.float32)).round().clip(0, 255).astype(np.uint8)


def font_size(height: int, width: int) -> int:
    """Text height in pixels for an image: about 1/20 of its short side, 12 to 128."""
    return int(min(128, max(12, round(min(height, width) / 20))))


@functools.cache
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable built-in font
    except TypeError:  # older Pillow: the fixed 11-pixel bitmap font
        return ImageFont.load_default()


def text_box(name: str, size: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of ``name`` rendered by :func:`render` (measured, not drawn: cheap)."""
    x0, y0, x1, y1 = _font(size).getbbox(name, stroke_width=max(1, size // 8))
    return int(x0), int(y0), max(int(x0) + 1, int(x1)), max(int(y0) + 1, int(y1))


def render(name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(rgb (h, w, 3) uint8, alpha (h, w) float32) of ``name`` in white with a black outline."""
    font = _font(size)
    stroke = max(1, size // 8)
    x0, y0, x1, y1 = text_box(name, size)
    canvas = Image.new("RGBA", (x1 - x0, y1 - y0), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text(
        (-x0, -y0), name, font=font, fill=(*TEXT, 255), stroke_width=stroke, stroke_fill=(*OUTLINE, 255)
    )
    pixels = np.asarray(canvas)
    return np.ascontiguousarray(pixels[..., :3]), pixels[..., 3].astype(np.float32) / 255


def _small(label_map: np.ndarray) -> tuple[np.ndarray, float]:
    """(label map at most GRID pixels on its long side (nearest), scale = small / full)."""
    h, w = label_map.shape
    scale = min(1.0, GRID / max(h, w, 1))
    if scale == 1.0:
        return label_map, 1.0
    rows = (np.arange(max(1, round(h * scale))) * h // max(1, round(h * scale)))[:, None]
    cols = (np.arange(max(1, round(w * scale))) * w // max(1, round(w * scale)))[None, :]
    return label_map[rows, cols], scale


def interior_point(mask: np.ndarray) -> tuple[tuple[int, int], np.ndarray] | None:
    """(row, col) farthest from the border inside the largest connected region of ``mask``, and that
    region as a boolean mask (same shape); None when ``mask`` is empty. 4-connected regions; the
    image edge counts as border; ties (within half a pixel) go to the point nearest the centroid."""
    from scipy import ndimage

    regions, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    box = ndimage.find_objects(regions)[largest - 1]
    region = regions[box] == largest
    distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    # Among the (near-)farthest points, the one nearest the region's centroid: a band-shaped region
    # gets its name in the middle rather than at one end.
    rows, cols = np.nonzero(distance >= distance.max() - 0.5)
    cy, cx = np.argwhere(region).mean(axis=0)
    best = int(np.argmin((rows - cy) ** 2 + (cols - cx) ** 2))
    r, c = rows[best], cols[best]
    whole = np.zeros_like(mask, dtype=bool)
    whole[box] = region
    return (int(r + box[0].start), int(c + box[1].start)), whole


def label_stamps(label_map: np.ndarray, class_names: list[str], size: int | None = None) -> list[Stamp]:
    """The name stamps of the classes present in ``label_map`` (values outside [0, K) are unlabelled).

    Args:
        label_map: (H, W) int class indices.
        class_names: K display names.
        size: text height in pixels (default :func:`font_size`).

    Returns:
        One :class:`Stamp` per class whose largest region holds its name, largest classes first.
    """
    h, w = label_map.shape
    size = size or font_size(h, w)
    small, scale = _small(label_map)
    counts = np.bincount(small[(small >= 0) & (small < len(class_names))].ravel(), minlength=len(class_names))
    stamps = []
    for k in np.argsort(-counts, kind="stable"):
        if counts[k] == 0 or not class_names[k].strip():
            continue
        left0, top0, right0, bottom0 = text_box(class_names[k], size)
        th, tw = bottom0 - top0, right0 - left0
        if counts[k] < MIN_INSIDE * th * tw * scale * scale:
            continue  # fewer pixels than the text box needs: no region of it can hold the name
        found = interior_point(small == k)
        if found is None:
            continue
        (r, c), region = found
        cy, cx = (r + 0.5) / scale, (c + 0.5) / scale  # the point in full-size pixels
        top, left = round(cy - th / 2), round(cx - tw / 2)
        if top < 0 or left < 0 or top + th > h or left + tw > w:
            continue  # the name would leave the image: the region is too small for it
        # The text box on the small grid; it must lie (almost) entirely on the region.
        y0, y1 = int(top * scale), max(int(top * scale) + 1, int(np.ceil((top + th) * scale)))
        x0, x1 = int(left * scale), max(int(left * scale) + 1, int(np.ceil((left + tw) * scale)))
        if region[y0:y1, x0:x1].mean() < MIN_INSIDE:
            continue
        rgb, alpha = render(class_names[k], size)  # drawn only once it fits
        stamps.append(Stamp(class_names[k], top, left, rgb, alpha))
    return stamps
