"""The demo's request inputs: limits, the class list, the uploaded image and the upload gate."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovss.demo import inputs
from ovss.demo.display import DemoUserError
from ovss.demo.inputs import DemoLimits, UploadGate
from ovss.errors import OvssError

LIMITS = DemoLimits(max_pixels=1_000_000, max_classes=5, max_upload_mb=1)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (no pixel data): a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_parse_classes_synonyms_and_json():
    assert inputs.parse_classes(" cat; sofa, couch ;wall; ", LIMITS) == [["cat"], ["sofa", "couch"], ["wall"]]
    assert inputs.parse_classes('["cat", ["sofa", "couch"]]', LIMITS) == [["cat"], ["sofa", "couch"]]


@pytest.mark.parametrize("text", [None, "", "   ", ";;", " , ; ,"])
def test_parse_classes_empty_is_one_clear_message(text):
    with pytest.raises(DemoUserError, match=r"^no classes: type class names separated by ';'"):
        inputs.parse_classes(text, LIMITS)


def test_parse_classes_limits_and_bad_json():
    with pytest.raises(DemoUserError, match=r"^6 classes given; this demo accepts up to 5 per request$"):
        inputs.parse_classes("a; b; c; d; e; f", LIMITS)
    with pytest.raises(DemoUserError, match=r"characters long; this demo accepts up to 100,000$"):
        inputs.parse_classes("a" * 100_001, LIMITS)
    with pytest.raises(DemoUserError, match=r"starts with '\[' but is not valid JSON"):
        inputs.parse_classes('["cat", ', LIMITS)
    with pytest.raises(DemoUserError, match="must hold names or lists of synonyms"):
        inputs.parse_classes("[1, 2]", LIMITS)


def test_parse_classes_never_reads_a_server_file(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password\n")
    assert inputs.parse_classes(str(secret), LIMITS) == [[str(secret)]]


def test_upload_path_and_missing_image():
    assert inputs.upload_path({"path": "/x/a.jpg", "orig_name": "a.jpg"}) == Path("/x/a.jpg")
    for value in (None, "", {"path": None}):
        with pytest.raises(DemoUserError, match=r"^no image: upload an image"):
            inputs.upload_path(value)


def test_read_upload_checks_size_pixels_and_format(tmp_path, data_dir):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * (2**20 + 1))
    with pytest.raises(DemoUserError, match=r"^the upload is 1.0 MB; this demo accepts files up to 1 MB$"):
        inputs.read_upload(big, LIMITS)
    wide = tmp_path / "wide.png"
    wide.write_bytes(png_header(2000, 1000))  # 2 MP: over the limit, read from the header only
    with pytest.raises(
        DemoUserError, match=r"^the image is 2000x1000 pixels; this demo accepts up to 1 million"
    ):
        inputs.read_upload(wide, LIMITS)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(40000, 40000))  # 1.6 G pixels: over Pillow's own bomb limit
    with pytest.raises(
        DemoUserError, match=r"^the image has far too many pixels; this demo accepts up to 1 "
    ):
        inputs.read_upload(bomb, LIMITS)
    text = tmp_path / "text.png"
    text.write_text("not an image")
    with pytest.raises(DemoUserError, match=r"^the upload is not an image this demo can read; use a JPEG"):
        inputs.read_upload(text, LIMITS)
    with pytest.raises(
        DemoUserError, match=r"^the uploaded image is no longer on the server; upload it again$"
    ):
        inputs.read_upload(tmp_path / "gone.jpg", LIMITS)
    photo = inputs.read_upload(data_dir / "quokka.jpg", DemoLimits())
    expected = np.asarray(Image.open(data_dir / "quokka.jpg").convert("RGB"))
    assert photo.dtype == np.uint8 and np.array_equal(photo, expected)


def test_limits_are_validated():
    with pytest.raises(OvssError, match=r"^demo limit max_classes must be > 0, got 0$"):
        DemoLimits(max_classes=0)


def test_gate_admits_only_uploads_and_examples(tmp_path):
    uploads = {str(tmp_path / "gradio" / "abc" / "cat.png")}
    gate = UploadGate(lambda: uploads, examples=[tmp_path / "gradio" / "ex" / "quokka.jpg"])
    assert gate.admits(tmp_path / "gradio" / "abc" / "cat.png")
    assert gate.admits(str(tmp_path / "gradio" / "ex" / "quokka.jpg"))
    # A path that normalises onto an admitted file is the same file; any other path is not.
    assert gate.admits(f"{tmp_path}/gradio/abc/../abc/cat.png")
    for other in ("/etc/passwd", f"{tmp_path}/gradio/abc", f"{tmp_path}/gradio/abc/cat.png/..", "cat.png"):
        assert not gate.admits(other), other
    uploads.add(str(tmp_path / "later.png"))  # read at each request: a new upload is admitted at once
    assert gate.admits(tmp_path / "later.png")
    assert not UploadGate().admits(tmp_path / "gradio" / "abc" / "cat.png")  # the default admits nothing
