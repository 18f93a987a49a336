"""A streaming PNG encoder: images of any size written band by band in bounded memory.

Pillow needs the whole image in memory (4 bytes per RGB pixel, plus the numpy array it came from);
label maps and overlays of very large photos are therefore written here from bands of rows, so
writing an output never costs more than one band. The files are ordinary PNGs (8-bit RGB, 8-bit
palette or 16-bit grayscale, non-interlaced) that any reader, Pillow included, decodes.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
from numpy.typing import DTypeLike

from ovss.utils import atomic_write

PngMode = Literal["RGB", "P", "L16"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# mode -> (bit depth, colour type, channels, dtype)
_LAYOUT: dict[str, tuple[int, int, int, DTypeLike]] = {
    "RGB": (8, 2, 3, np.uint8), "P": (8, 3, 1, np.uint8), "L16": (16, 0, 1, np.dtype(">u2"))
}
_CHUNK = 1 << 20  # bytes of compressed data per IDAT chunk


def _chunk(f: BinaryIO, kind: bytes, data: bytes) -> None:
    f.write(struct.pack(">I", len(data)))
    f.write(kind)
    f.write(data)
    f.write(struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF))


def _filtered(rows: np.ndarray, previous: np.ndarray | None, mode: PngMode) -> bytes:
    """PNG scanlines of one band: the "Up" filter (2) for RGB photos, no filter (0) for label maps."""
    n = rows.shape[0]
    flat = rows.reshape(n, -1)
    if mode == "RGB":
        above = np.empty_like(flat)
        above[0] = previous if previous is not None else 0
        above[1:] = flat[:-1]
        body = flat - above  # uint8 arithmetic wraps modulo 256, as the filter defines
        kind = 2
    else:
        body = flat.view(np.uint8) if flat.dtype != np.uint8 else flat
        kind = 0
    lines = np.empty((n, body.shape[1] + 1), dtype=np.uint8)
    lines[:, 0] = kind
    lines[:, 1:] = body.view(np.uint8).reshape(n, -1)
    return lines.tobytes()


def write_png(
    f: BinaryIO,
    width: int,
    height: int,
    bands: Iterable[np.ndarray],
    mode: PngMode = "RGB",
    palette: np.ndarray | None = None,
    level: int = 6,
) -> None:
    """Encode an image given as consecutive bands of rows into the open binary file ``f``.

    Args:
        f: a file opened for binary writing.
        width, height: the image size in pixels (>= 1 each).
        bands: arrays of ``(r, width, 3)`` uint8 (``RGB``), ``(r, width)`` uint8 palette indices
            (``P``) or ``(r, width)`` integers in [0, 65535] (``L16``), covering ``height`` rows
            top to bottom.
        mode: ``RGB`` (8-bit colour), ``P`` (8-bit palette) or ``L16`` (16-bit grayscale).
        palette: (N <= 256, 3) uint8 colours for ``P``.
        level: zlib compression level 0-9.

    Raises:
        ValueError: the bands do not add up to ``height`` rows of ``width`` pixels.
    """
    depth, colour_type, channels, dtype = _LAYOUT[mode]
    f.write(_SIGNATURE)
    _chunk(f, b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0))
    if mode == "P":
        colours = np.zeros((1, 3), np.uint8) if palette is None else np.asarray(palette, np.uint8)
        _chunk(f, b"PLTE", colours.reshape(-1, 3)[:256].tobytes())
    compressor = zlib.compressobj(level)
    pending = bytearray()
    rows_done = 0
    previous = None
    for band in bands:
        expected = (band.shape[0], width, 3) if channels == 3 else (band.shape[0], width)
        if band.shape != expected or rows_done + band.shape[0] > height:
            raise ValueError(f"PNG band of shape {band.shape} does not fit a {width}x{height} {mode} image")
        if band.shape[0] == 0:
            continue
        band = np.ascontiguousarray(band, dtype=dtype)
        pending += compressor.compress(_filtered(band, previous, mode))
        previous = band[-1].reshape(-1)
        rows_done += band.shape[0]
        while len(pending) >= _CHUNK:
            _chunk(f, b"IDAT", bytes(pending[:_CHUNK]))
            del pending[:_CHUNK]
    if rows_done != height:
        raise ValueError(f"PNG bands hold {rows_done} rows, expected {height}")
    pending += compressor.flush()
    for start in range(0, len(pending), _CHUNK):
        _chunk(f, b"IDAT", bytes(pending[start : start + _CHUNK]))
    _chunk(f, b"IEND", b"")


def save_png(
    path: str | Path,
    width: int,
    height: int,
    bands: Iterable[np.ndarray],
    mode: PngMode = "RGB",
    palette: np.ndarray | None = None,
    level: int = 6,
) -> Path:
    """:func:`write_png` into ``path``, atomically (a crash never leaves a half-written file)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write_png(f, width, height, bands, mode, palette, level)

    return atomic_write(Path(path), write)


def row_bands(height: int, width: int, budget: int = 1 << 20) -> Iterable[tuple[int, int]]:
    """(r0, r1) row ranges of about ``budget`` pixels each (at least one row) covering ``height``."""
    step = max(1, budget // max(width, 1))
    for r0 in range(0, height, step):
        yield r0, min(height, r0 + step)
