"""Bad image inputs give one clear error each, never a hang, a traceback or a huge allocation."""

from __future__ import annotations

import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovss.data.io import DEFAULT_MAX_PIXELS, read_image, read_label
from ovss.errors import (
    ConfigError,
    ImageReadError,
    ImageTooLargeError,
)
from tests.conftest import noise_photo


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A few-hundred-byte PNG that declares ``width`` x ``height`` grey pixels (a decompression bomb:
    the data is cut short, so any attempt to decode it fails differently from the size check)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * 4096)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def small_png(path: Path, h: int = 48, w: int = 64) -> Path:
    return noise_photo(path, h, w)


def _returns_within(fn, seconds: float = 20.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not return in time."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed back to the test
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return thread, box


@pytest.mark.parametrize("reader", [read_image, read_label])
def test_named_pipe_is_refused_at_once(tmp_path, reader):
    fifo = tmp_path / "camera.png"
    os.mkfifo(fifo)
    thread, box = _returns_within(lambda: reader(fifo))
    if thread.is_alive():  # unblock the reader so the suite can finish, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a named pipe blocked")
    assert isinstance(box.get("error"), ImageReadError)
    expected = f"image file {fifo} is not a regular file (a named pipe); pass a file (save the stream to a"
    expected += " file first)"
    assert str(box["error"]) == expected


@pytest.mark.parametrize(("size", "above_pillow"), [((30000, 20000), True), ((12000, 10000), False)])
def test_decompression_bomb_is_one_error_naming_the_limit(tmp_path, size, above_pillow):
    # 600 MP is above Pillow's own hard limit (DecompressionBombError before); 120 MP is under it and was
    # decoded (gigabytes) before; both are refused from the header, before any decoding.
    bomb = png_header_only(tmp_path / "bomb.png", *size)
    assert bomb.stat().st_size < 1000
    with pytest.raises(ImageTooLargeError) as info:
        read_image(bomb)
    message = str(info.value)
    assert "\n" not in message and "--max-pixels N" in message and "OVSS_MAX_PIXELS=N" in message
    assert "max_pixels=N" in message and "0 = no limit" in message
    if not above_pillow:
        assert message.startswith(
            f"image {bomb} is 12000x10000 = 120,000,000 pixels, above the limit of 100,000,000 "
        )


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    photo = small_png(tmp_path / "p.png")  # 64 x 48 = 3072 pixels
    assert DEFAULT_MAX_PIXELS == 100_000_000
    with pytest.raises(
        ImageTooLargeError, match=r"is 64x48 = 3,072 pixels, above the limit of 3,000 \(max_pixels\)"
    ):
        read_image(photo, max_pixels=3000)
    assert read_image(photo, max_pixels=3072).shape == (48, 64, 3)
    monkeypatch.setenv("OVSS_MAX_PIXELS", "3000")
    with pytest.raises(ImageTooLargeError):
        read_image(photo)
    with pytest.raises(ImageTooLargeError):  # arrays and PIL images are held to the same limit
        read_image(np.zeros((48, 64, 3), np.uint8))
    pil_limit = Image.MAX_IMAGE_PIXELS
    assert read_image(photo, max_pixels=0).shape == (48, 64, 3)  # an explicit argument wins
    assert pil_limit == Image.MAX_IMAGE_PIXELS  # Pillow's process-wide bomb limit is left as it was
    monkeypatch.setenv("OVSS_MAX_PIXELS", "0")
    assert read_image(photo).shape == (48, 64, 3)
    monkeypatch.setenv("OVSS_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="OVSS_MAX_PIXELS='lots' is not a number of pixels"):
        read_image(photo)


def test_raising_the_limit_above_pillows_own_is_honoured(tmp_path, monkeypatch):
    photo = small_png(tmp_path / "p.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses > 2000 pixels by itself
    assert read_image(photo, max_pixels=5000).shape == (48, 64, 3)
    with pytest.raises(ImageTooLargeError):
        read_image(photo, max_pixels=3000)


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 5, 3), (7, 0), (0, 0)])
def test_empty_arrays_are_refused(shape):
    with pytest.raises(ImageReadError, match=r"holds no pixels; pass an image of at least 1x1"):
        read_image(np.zeros(shape, np.uint8))
    with pytest.raises(ImageReadError, match=r"holds no pixels; pass an image of at least 1x1"):
        read_image(Image.new("RGB", (shape[1], shape[0])))


def test_a_negative_pixel_limit_is_refused_not_taken_as_no_limit(monkeypatch):
    """--max-pixels -5 (or OVSS_MAX_PIXELS=-1) silently switched the decompression-bomb limit off."""
    from ovss.data.io import resolve_max_pixels
    from ovss.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^max_pixels=-5 is negative; give a number of pixels"):
        resolve_max_pixels(-5)
    monkeypatch.setenv("OVSS_MAX_PIXELS", "-1")
    with pytest.raises(ConfigError, match=r"^OVSS_MAX_PIXELS=-1 is negative; .*0 = no limit\)$"):
        resolve_max_pixels()
    assert resolve_max_pixels(0) is None and resolve_max_pixels(7) == 7
