"""The streaming PNG writer (ovss.data.png): round trips through Pillow, bands that do not fit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.mark.parametrize("band_rows", [1, 3, 1000])
@pytest.mark.parametrize("mode", ["RGB", "P", "L16"])
def test_streaming_png_round_trips_through_pillow(tmp_path, mode, band_rows):
    from ovss.data.png import save_png

    rng = np.random.default_rng(0)
    shape = (23, 31, 3) if mode == "RGB" else (23, 31)
    high = 65536 if mode == "L16" else 256
    image = rng.integers(0, high, shape).astype(np.uint16 if mode == "L16" else np.uint8)
    image[5:9] = image[4]  # repeated rows exercise the "Up" filter
    colours = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    bands = (image[r : r + band_rows] for r in range(0, 23, band_rows))
    path = save_png(tmp_path / "x.png", 31, 23, bands, mode, colours if mode == "P" else None)
    with Image.open(path) as decoded:
        assert decoded.size == (31, 23)
        if mode == "P":
            assert np.array_equal(np.asarray(decoded.getpalette(), np.uint8).reshape(-1, 3)[:256], colours)
        values = np.asarray(decoded)
    assert np.array_equal(values.astype(np.int64), image.astype(np.int64))


def test_streaming_png_refuses_bands_that_do_not_fit(tmp_path):
    from ovss.data.png import save_png

    with pytest.raises(ValueError, match="expected 4"):
        save_png(tmp_path / "x.png", 5, 4, [np.zeros((3, 5), np.uint8)], "P")
    with pytest.raises(ValueError, match="does not fit"):
        save_png(tmp_path / "y.png", 5, 4, [np.zeros((4, 6), np.uint8)], "P")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk, each CRC checked (CRC-32 over type + payload)."""
    import struct
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload), kind
        out.append((kind, payload))
        pos += 12 + length
    return out


def test_the_bytes_of_a_two_by_two_rgb_image(tmp_path):
    """IHDR (width, height, depth 8, colour type 2), then scanlines with the Up filter (type 2): each row
    minus the row above, modulo 256 (the first row minus zeros)."""
    import zlib

    from ovss.data.png import save_png

    image = np.array([[[10, 20, 30], [40, 50, 60]], [[15, 15, 15], [0, 255, 70]]], np.uint8)
    path = save_png(tmp_path / "x.png", 2, 2, [image], "RGB")
    chunks = _chunks(path.read_bytes())
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert chunks[0][1] == b"\x00\x00\x00\x02" b"\x00\x00\x00\x02" b"\x08\x02\x00\x00\x00"
    rows = zlib.decompress(chunks[1][1])
    assert rows == bytes([2, 10, 20, 30, 40, 50, 60, 2, 5, 251, 241, 216, 205, 10])


def test_sixteen_bit_is_big_endian_and_palette_images_carry_their_palette(tmp_path):
    import zlib

    from ovss.data.png import save_png

    path = save_png(tmp_path / "l16.png", 2, 1, [np.array([[0x1234, 65535]])], "L16")
    header, data = _chunks(path.read_bytes())[:2]
    assert header[1][8:10] == b"\x10\x00"  # depth 16, greyscale
    assert zlib.decompress(data[1]) == b"\x00\x12\x34\xff\xff"  # filter 0, then big-endian samples
    with Image.open(path) as decoded:
        assert decoded.getpixel((0, 0)) == 0x1234 and decoded.getpixel((1, 0)) == 65535
    colours = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    path = save_png(tmp_path / "p.png", 3, 1, [np.array([[1, 0, 1]], np.uint8)], "P", colours)
    chunks = dict(_chunks(path.read_bytes()))
    assert chunks[b"PLTE"] == bytes([1, 2, 3, 4, 5, 6])
    assert zlib.decompress(chunks[b"IDAT"]) == b"\x00\x01\x00\x01"


def test_compressed_data_is_split_into_idat_chunks_of_at_most_one_mebibyte(tmp_path):
    from ovss.data.png import save_png

    image = np.random.default_rng(1).integers(0, 256, (400, 1000, 3), dtype=np.uint8)  # 1.2 MB stored
    path = save_png(tmp_path / "big.png", 1000, 400, (image[r : r + 50] for r in range(0, 400, 50)), level=0)
    sizes = [len(p) for k, p in _chunks(path.read_bytes()) if k == b"IDAT"]
    assert len(sizes) == 2 and sizes[0] == 1 << 20 and sizes[1] < 1 << 20
    with Image.open(path) as decoded:
        assert np.array_equal(np.asarray(decoded), image)


def test_a_failing_band_source_leaves_no_file(tmp_path):
    from ovss.data.png import save_png

    def bands():
        yield np.zeros((2, 4, 3), np.uint8)
        raise RuntimeError("decoder failed")

    with pytest.raises(RuntimeError, match="decoder failed"):
        save_png(tmp_path / "x.png", 4, 4, bands())
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("height", "width", "budget", "expected"),
    [
        (10, 3, 7, [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]),  # 7 // 3 = 2 rows a band
        (3, 100, 10, [(0, 1), (1, 2), (2, 3)]),  # wider than the budget: one row a band
        (5, 4, 1000, [(0, 5)]),
        (0, 4, 10, []),
    ],
)
def test_row_bands_cover_the_height(height, width, budget, expected):
    from ovss.data.png import row_bands

    assert list(row_bands(height, width, budget)) == expected
