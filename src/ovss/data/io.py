"""Reading images and label maps, writing label maps.

Images always come back as ``(H, W, 3) uint8`` RGB arrays and label maps as ``(H, W) int64``
class-index arrays, whatever the file format, so the rest of the package never sees a Pillow mode.

Decisions (documented here once):

* **EXIF orientation** is applied to images (``ImageOps.exif_transpose``), as detectron2's
  ``read_image`` does, so a phone photo is segmented the way it is displayed. It is **not**
  applied to label maps: detectron2's ``SemSegEvaluator`` reads ground truth with a plain
  ``np.array(Image.open(path))``.
* **Alpha is dropped** (RGBA, LA, PA): the stored colour of every pixel is kept, which is what the
  official pipelines get from ``Image.open(path).convert("RGB")``. Composite the image yourself
  first if transparent pixels should become a background colour.
* **High bit depth grayscale** (``I;16*`` PNG/TIFF, or ``I`` 32-bit integers) is read as 16-bit
  data and scaled to 8 bits with ``round(v / 257)`` (so 65535 -> 255), values clipped to
  [0, 65535]. Float images (mode ``F``) are taken as [0, 1] when their maximum is <= 1 and as
  [0, 255] otherwise (clipped).
* **Multi-frame files** (GIF, TIFF stacks) give their first frame.
* **Label maps** are the stored integers: the palette *index* of a palette PNG (not its colour),
  the 8/16/32-bit value otherwise. RGB label images are refused (convert colours to indices first).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ovss.errors import ImageReadError
from ovss.utils import atomic_write

ImageInput = str | Path | Image.Image | np.ndarray

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def read_image(src: ImageInput) -> np.ndarray:
    """Read any image Pillow can decode (or an array / PIL image) as RGB.

    Args:
        src: a file path, a ``PIL.Image.Image``, or a numpy array in RGB channel order
            (OpenCV users: convert BGR first), one of ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or
            ``(H, W, 4)`` (alpha dropped), dtype ``uint8`` or float in [0, 1] (scaled by 255
            and rounded).

    Returns:
        (H, W, 3) uint8 RGB, C-contiguous and writable. A uint8 (H, W, 3) contiguous array input
        is returned as is (no copy).

    Raises:
        ImageReadError: the file is missing or not a decodable image, or the array has an
            unsupported shape, dtype or value range.
    """
    if isinstance(src, np.ndarray):
        return _array_to_rgb(src)
    if isinstance(src, Image.Image):
        return _pil_to_rgb(src, name="PIL image")
    if isinstance(src, str | Path):
        with _open(Path(src)) as image:
            return _pil_to_rgb(image, name=str(src))
    raise ImageReadError(
        f"cannot read an image from a {type(src).__name__}; pass a file path, a PIL.Image or a "
        "numpy array (H, W[, 3|4]) uint8/float"
    )


def read_label(src: str | Path | Image.Image) -> np.ndarray:
    """Read a single-channel label map (palette/8-bit/16-bit PNG, TIFF, ...).

    Args:
        src: a file path or a ``PIL.Image.Image``.

    Returns:
        (H, W) int64 class indices as stored: the palette index for palette images, the raw
        value for 8/16/32-bit grayscale. No EXIF orientation is applied.

    Raises:
        ImageReadError: the file is missing or undecodable, or it is a colour image (RGB/RGBA)
            or a float image with non-integer values.
    """
    if isinstance(src, Image.Image):
        return _pil_to_label(src, name="PIL image")
    if isinstance(src, str | Path):
        with _open(Path(src)) as image:
            return _pil_to_label(image, name=str(src))
    raise ImageReadError(f"cannot read a label map from a {type(src).__name__}; pass a file path")


def write_label_png(
    path: str | Path,
    label: np.ndarray,
    palette: np.ndarray | Sequence[Sequence[int]] | None = None,
    bit_depth: Literal[8, 16] | None = None,
) -> Path:
    """Write a label map as PNG, atomically (a crash never leaves a half-written file).

    Args:
        path: destination file (parents are created).
        label: (H, W) integer class indices in [0, 65535].
        palette: (N, 3) RGB colours (N <= 256) for the 8-bit palette PNG; default: the PASCAL
            VOC colour map. Ignored for 16-bit output, which has no palette.
        bit_depth: 8 (palette PNG, values must be <= 255) or 16 (grayscale 16-bit PNG); default:
            8 when every value is <= 255, otherwise 16.

    Returns:
        ``path`` as a ``Path``. ``read_label(path)`` gives back ``label`` exactly.

    Raises:
        ValueError: the label is not 2-D integers in range, or the palette is malformed.
    """
    label = np.asarray(label)
    if label.ndim != 2 or not (np.issubdtype(label.dtype, np.integer) or label.dtype == bool):
        raise ValueError(
            f"label must be a 2-D integer array, got shape {label.shape} dtype {label.dtype}; "
            "pass the (H, W) class-index map"
        )
    lo = int(label.min()) if label.size else 0
    hi = int(label.max()) if label.size else 0
    if lo < 0 or hi > 65535:
        raise ValueError(f"label values must be in [0, 65535] for PNG, got [{lo}, {hi}]")
    if bit_depth is None:
        bit_depth = 8 if hi <= 255 else 16
    if bit_depth == 8:
        if hi > 255:
            raise ValueError(f"label max {hi} does not fit an 8-bit PNG; use bit_depth=16")
        image = Image.fromarray(label.astype(np.uint8))  # mode "L"
        image.putpalette(_palette_bytes(palette))  # turns "L" into "P", indices unchanged
    elif bit_depth == 16:
        image = Image.fromarray(label.astype(np.uint16))
    else:
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    path = Path(path)
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: (n, 3) uint8, class i -> colour from the bits of i."""
    index = np.arange(n)
    colours = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (index >> (3 * shift + channel)) & 1
            colours[:, channel] |= bit << (7 - shift)
    return colours.astype(np.uint8)


# ----------------------------------------------------------------------------------------------


def _open(path: Path) -> Image.Image:
    """Open and fully decode ``path``; every failure becomes one ``ImageReadError`` line."""
    if not path.exists():
        raise ImageReadError(f"image file not found: {path}; check the path (relative to {Path.cwd()})")
    if path.is_dir():
        raise ImageReadError(f"expected an image file but {path} is a directory; pass a file inside it")
    try:
        image = Image.open(path)
        image.load()  # decode now so truncated files fail here, not later
    except UnidentifiedImageError:
        raise ImageReadError(
            f"cannot decode {path}: not an image format Pillow recognises; pass a JPEG/PNG/TIFF/"
            "BMP/WebP file (check the file is not text, HTML or an LFS pointer)"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"cannot decode {path}: {exc}; re-export or re-download the file") from None
    return image


def _pil_to_rgb(image: Image.Image, name: str) -> np.ndarray:
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as exc:  # a malformed EXIF block must not make the photo unreadable
        raise ImageReadError(f"cannot apply the EXIF orientation of {name}: {exc}") from None
    mode = image.mode
    if mode == "RGB":
        return np.array(image, dtype=np.uint8)  # a writable copy
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image).astype(np.float64)
        gray = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        return _gray_to_rgb(gray)
    if mode == "F":
        values = np.asarray(image).astype(np.float64)
        values = np.nan_to_num(values, nan=0.0)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        gray = np.rint(np.clip(values * scale, 0, 255)).astype(np.uint8)
        return _gray_to_rgb(gray)
    if mode == "P":
        # Palette transparency (tRNS) would make Pillow warn on a direct P -> RGB conversion.
        image = image.convert("RGBA")
    try:
        rgb = image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageReadError(f"cannot convert {name} from mode {mode!r} to RGB: {exc}") from None
    return np.array(rgb, dtype=np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    shape = array.shape
    if array.ndim == 3 and shape[2] in (1, 3, 4):
        channels = array[:, :, :3] if shape[2] == 4 else array
    elif array.ndim == 2:
        channels = array[:, :, None]
    else:
        raise ImageReadError(
            f"image array has shape {shape}; pass (H, W), (H, W, 3) or (H, W, 4) in RGB order "
            "(channels last; use array.transpose(1, 2, 0) for a (3, H, W) array)"
        )
    if array.dtype == np.uint8:
        out = channels
    elif np.issubdtype(array.dtype, np.floating):
        lo = float(channels.min()) if channels.size else 0.0
        hi = float(channels.max()) if channels.size else 0.0
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise ImageReadError(
                f"float image array values span [{lo:g}, {hi:g}]; float images must be in [0, 1] "
                "(divide by 255, or pass a uint8 array)"
            )
        out = np.rint(channels.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise ImageReadError(
            f"image array dtype {array.dtype} is not supported; pass uint8 in [0, 255] or float in "
            "[0, 1] (e.g. array.astype(np.uint8))"
        )
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out)


def _pil_to_label(image: Image.Image, name: str) -> np.ndarray:
    mode = image.mode
    if mode in ("P", "L", "1", "I", "F") or mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
    else:
        raise ImageReadError(
            f"label map {name} has mode {mode!r}; labels must be single-channel class indices "
            "(palette/8-bit/16-bit PNG or TIFF) — convert colour-coded masks to indices first"
        )
    if values.dtype.kind == "f" and not (np.all(np.isfinite(values)) and np.all(values == np.rint(values))):
        raise ImageReadError(f"label map {name} holds non-integer float values; save it as integers")
    return values.astype(np.int64)


def _palette_bytes(palette: np.ndarray | Sequence[Sequence[int]] | None) -> list[int]:
    if palette is None:
        colours = voc_palette(256)
    else:
        colours = np.asarray(palette)
        if colours.ndim != 2 or colours.shape[1] != 3 or not 1 <= colours.shape[0] <= 256:
            raise ValueError(f"palette must be (N, 3) RGB with N <= 256, got shape {colours.shape}")
        if colours.min() < 0 or colours.max() > 255:
            raise ValueError("palette colours must be in [0, 255]")
        colours = colours.astype(np.uint8)
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(colours)] = colours
    return flat.reshape(-1).tolist()
