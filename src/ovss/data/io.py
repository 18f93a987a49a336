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
* **Pixel limit**: images (files, PIL images and arrays) above ``max_pixels`` are refused with an
  :class:`~ovss.errors.ImageTooLargeError` before anything is decoded. The default is
  ``DEFAULT_MAX_PIXELS`` (100 million pixels, e.g. 12000 x 8000), overridden by the environment
  variable ``OVSS_MAX_PIXELS`` or the ``max_pixels`` argument (0 = no limit). Pillow's own
  decompression-bomb check is raised along with it when needed, never lowered.
* **Only regular files** are read: a named pipe, socket or device is refused at once (reading one
  would block forever or never end).
* **URLs**: a ``str`` starting with ``http://`` or ``https://`` is downloaded (byte limit, timeout,
  refused in offline mode; :mod:`ovss.data.remote`), other ``scheme://`` strings are refused.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ovss.data.png import PngMode, row_bands, save_png
from ovss.data.remote import fetch, url_scheme
from ovss.errors import ConfigError, ImageReadError, ImageTooLargeError
from ovss.utils import check_regular_file

ImageInput = str | Path | Image.Image | np.ndarray

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "OVSS_MAX_PIXELS"


def resolve_max_pixels(max_pixels: int | None = None) -> int | None:
    """The pixel limit in force: ``max_pixels`` if given, else ``$OVSS_MAX_PIXELS``, else
    ``DEFAULT_MAX_PIXELS``; 0 means no limit and gives None. A negative value is refused (a typo
    must not switch the limit off)."""
    source = "max_pixels"
    if max_pixels is None:
        source = MAX_PIXELS_ENV
        value = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not value:
            return DEFAULT_MAX_PIXELS
        try:
            max_pixels = int(float(value)) if "e" in value.lower() else int(value.replace("_", ""))
        except ValueError:
            raise ConfigError(
                f"{MAX_PIXELS_ENV}={value!r} is not a number of pixels; set it to an integer such as "
                "200000000 (0 = no limit)"
            ) from None
    if max_pixels < 0:
        raise ConfigError(
            f"{source}={max_pixels} is negative; give a number of pixels such as 200000000 "
            f"(--max-pixels N, {MAX_PIXELS_ENV}=N; 0 = no limit)"
        )
    return int(max_pixels) if max_pixels > 0 else None


def check_pixels(width: int, height: int, name: str, max_pixels: int | None = None) -> None:
    """Raise :class:`ImageTooLargeError` when ``width * height`` exceeds the limit in force."""
    limit = resolve_max_pixels(max_pixels)
    if limit is not None and width * height > limit:
        raise ImageTooLargeError(
            f"{name} is {width}x{height} = {width * height:,} pixels, above the limit of {limit:,} "
            f"(max_pixels); raise it with --max-pixels N, "
            f"{MAX_PIXELS_ENV}=N or Segmenter(max_pixels=N) (0 = no limit), or downscale the image",
            size=(width, height),
        )


def read_image(src: ImageInput, max_pixels: int | None = None) -> np.ndarray:
    """Read any image Pillow can decode (or an array / PIL image) as RGB.

    Args:
        src: a file path, an http(s) URL (a ``str``; :mod:`ovss.data.remote`: byte limit, timeout,
            refused in offline mode), a ``PIL.Image.Image``, or a numpy array in RGB channel order
            (OpenCV users: convert BGR first), one of ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or
            ``(H, W, 4)`` (alpha dropped), dtype ``uint8`` or float in [0, 1] (scaled by 255
            and rounded).
        max_pixels: refuse images of more pixels (None: ``$OVSS_MAX_PIXELS`` or
            ``DEFAULT_MAX_PIXELS``; 0: no limit). Files are checked before they are decoded.

    Returns:
        (H, W, 3) uint8 RGB, C-contiguous and writable. A uint8 (H, W, 3) contiguous array input
        is returned as is (no copy).

    Raises:
        ImageReadError: the file is missing, not a regular file or not a decodable image, or the
            array has an unsupported shape, dtype or value range, or no pixels.
        ImageTooLargeError: the image has more than ``max_pixels`` pixels.
    """
    if isinstance(src, np.ndarray):
        if src.ndim in (2, 3):
            check_pixels(src.shape[1], src.shape[0], f"image array {src.shape}", max_pixels)
        return _array_to_rgb(src)
    if isinstance(src, Image.Image):
        check_pixels(*src.size, "PIL image", max_pixels)
        if 0 in src.size:
            raise ImageReadError(
                f"PIL image has size {src.size}: it holds no pixels; pass an image of at least 1x1"
            )
        return _pil_to_rgb(src, name="PIL image")
    if url_scheme(src) is not None:  # a str "scheme://..." (a Path is always a local file)
        with _decode(io.BytesIO(fetch(str(src))), str(src), max_pixels) as image:
            return _pil_to_rgb(image, name=str(src))
    if isinstance(src, str | Path):
        with _open(Path(src), max_pixels) as image:
            return _pil_to_rgb(image, name=str(src))
    raise ImageReadError(
        f"cannot read an image from a {type(src).__name__}; pass a file path, an http(s) URL, a "
        "PIL.Image or a numpy array (H, W[, 3|4]) uint8/float"
    )


def read_label(src: str | Path | Image.Image, max_pixels: int | None = None) -> np.ndarray:
    """Read a single-channel label map (palette/8-bit/16-bit PNG, TIFF, ...).

    Args:
        src: a file path or a ``PIL.Image.Image``.
        max_pixels: the pixel limit, as for :func:`read_image`.

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
        with _open(Path(src), max_pixels) as image:
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

    Written band by band (:mod:`ovss.data.png`): memory stays bounded whatever the image size.
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
    mode: PngMode
    if bit_depth == 8:
        if hi > 255:
            raise ValueError(f"label max {hi} does not fit an 8-bit PNG; use bit_depth=16")
        colours = np.asarray(_palette_bytes(palette), dtype=np.uint8).reshape(256, 3)
        mode, dtype = "P", np.uint8
    elif bit_depth == 16:
        colours, mode, dtype = None, "L16", np.uint16
    else:
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    h, w = label.shape
    if h == 0 or w == 0:
        raise ValueError(f"label has shape {label.shape}; a PNG needs at least one pixel")
    bands = (label[r0:r1].astype(dtype) for r0, r1 in row_bands(h, w))  # one band in memory at a time
    return save_png(path, w, h, bands, mode, colours)


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


def _open(path: Path, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode ``path``; every failure becomes one ``ImageReadError`` line."""
    check_regular_file(path, "image file", ImageReadError, ImageReadError)
    return _decode(path, str(path), max_pixels)


def _decode(source: Path | io.BytesIO, path: str, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode a file or the bytes of a download (``path`` names it in messages)."""
    limit = resolve_max_pixels(max_pixels)
    pil_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if pil_limit is not None and (limit is None or limit > 2 * pil_limit):
                Image.MAX_IMAGE_PIXELS = limit  # Pillow's bomb check must not refuse what we allow
            image = Image.open(source)
            try:
                check_pixels(*image.size, f"image {path}", limit or 0)
                image.load()  # decode now so truncated files fail here, not later
            except BaseException:
                image.close()
                raise
    except Image.DecompressionBombError as exc:  # above Pillow's limit, so above ours too
        raise ImageTooLargeError(
            f"image {path} is too large ({exc}); raise the limit with --max-pixels N, "
            f"{MAX_PIXELS_ENV}=N or Segmenter(max_pixels=N) (0 = no limit), or downscale the image"
        ) from None
    except UnidentifiedImageError:
        raise ImageReadError(
            f"cannot decode {path}: not an image format Pillow recognises; pass a JPEG/PNG/TIFF/"
            "BMP/WebP file (check the file is not text, HTML or an LFS pointer)"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"cannot decode {path}: {exc}; re-export or re-download the file") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit  # Pillow's process-wide setting is left as it was
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
    if array.ndim in (2, 3) and (shape[0] == 0 or shape[1] == 0):
        raise ImageReadError(
            f"image array has shape {shape}: it holds no pixels; pass an image of at least 1x1"
        )
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
