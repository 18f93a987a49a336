"""Images as http(s) URLs: read_image, Segmenter.predict and ``ovss segment`` against a local server.

The server is ``http.server`` on 127.0.0.1 in a thread; nothing else is ever contacted.
"""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from ovss.cli.main import main
from ovss.data.io import read_image
from ovss.data.remote import url_stem
from ovss.errors import ConfigError, ImageReadError, ImageTooLargeError

PIXELS = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(PIXELS).save(buffer, format="PNG")
    return buffer.getvalue()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    requests: ClassVar[list[str]] = []
    release = threading.Event()

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        body = _png()
        if self.path.startswith("/img/"):
            self._send(200, body, length=True)
        elif self.path == "/stream.png":  # no Content-Length: the body ends when the connection closes
            self._send(200, body * 40, length=False)
        elif self.path == "/slow.png":
            type(self).release.wait(30)  # answers only when the test ends
            self._send(200, body, length=True)
        elif self.path == "/cut.png":  # the connection ends before the declared length
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:10])
        elif self.path == "/to-ftp":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/x.png")
            self.end_headers()
        else:
            self._send(404, b"not found", length=True)

    def _send(self, code: int, body: bytes, length: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "image/png")
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def server(monkeypatch):
    """Base URL of a local server; proxies are bypassed for it."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "OVSS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    _Handler.requests = []
    _Handler.release.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    _Handler.release.set()
    httpd.shutdown()
    httpd.server_close()


def test_a_url_reads_like_the_file(server, tmp_path):
    np.testing.assert_array_equal(read_image(f"{server}/img/cat.png"), PIXELS)
    np.testing.assert_array_equal(read_image(f"{server}/img/cat.png?size=1#x"), PIXELS)
    np.testing.assert_array_equal(read_image(f"{server}/img/a café.png"), PIXELS)  # sent as %XX
    assert _Handler.requests[-1] == "/img/a%20caf%C3%A9.png"


def test_limits_errors_and_schemes_are_one_line(server, monkeypatch):
    with pytest.raises(ImageTooLargeError, match=f"image {server}/img/cat.png is 30x20 = 600 pixels, above"):
        read_image(f"{server}/img/cat.png", max_pixels=100)
    monkeypatch.setenv("OVSS_URL_MAX_MB", "0.001")  # 1000 bytes
    with pytest.raises(ImageReadError, match=r"img/cat.png is 0.0 MB; URLs are downloaded up to 0.001 MB"):
        read_image(f"{server}/img/cat.png")
    with pytest.raises(
        ImageReadError, match=r"stream.png is larger than the limit; .* raise OVSS_URL_MAX_MB"
    ):
        read_image(f"{server}/stream.png")  # no Content-Length: cut off once past the limit
    monkeypatch.setenv("OVSS_URL_MAX_MB", "nan")
    with pytest.raises(ConfigError, match="OVSS_URL_MAX_MB='nan' is not a positive number"):
        read_image(f"{server}/img/cat.png")
    monkeypatch.delenv("OVSS_URL_MAX_MB")
    with pytest.raises(ImageReadError) as missing:
        read_image(f"{server}/missing.jpg")
    assert str(missing.value) == f"cannot download {server}/missing.jpg: HTTP 404 Not Found; check the URL"
    monkeypatch.setenv("OVSS_URL_TIMEOUT", "0.2")
    with pytest.raises(
        ImageReadError, match=r"slow.png: no answer within 0.2 s; retry, raise OVSS_URL_TIMEOUT"
    ):
        read_image(f"{server}/slow.png")
    with pytest.raises(
        ImageReadError, match=r"cannot download .*/cut.png: the connection ended after 10 of \d+ bytes; retry"
    ):
        read_image(f"{server}/cut.png")
    with pytest.raises(ImageReadError, match=r"redirects to ftp://127.0.0.1/x.png: not an http\(s\) URL"):
        read_image(f"{server}/to-ftp")
    for url in ("file:///etc/hostname", "ftp://127.0.0.1/x.png"):
        with pytest.raises(ImageReadError) as refused:
            read_image(url)
        scheme = url.split(":")[0]
        assert str(refused.value) == (
            f"{url}: {scheme}:// URLs are not supported; pass an http(s) URL or a local file path"
        )


def test_offline_mode_refuses_urls_before_any_request(server, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ImageReadError, match="offline mode is on"):
        read_image(f"{server}/img/cat.png")
    assert (
        main(["segment", f"{server}/img/cat.png", "--classes", "a; b", "--out", str(tmp_path / "out")]) == 1
    )
    err = capsys.readouterr().err.strip()
    assert err == (
        f"ovss: error: {server}/img/cat.png: offline mode is on (OVSS_OFFLINE / HF_HUB_OFFLINE), so URLs are "
        "not downloaded; download the image yourself and pass the file, or unset offline mode"
    )
    assert _Handler.requests == [] and not (tmp_path / "out").exists()


def test_url_stems_are_safe_file_names():
    assert url_stem("https://example.com/photos/cat.jpg?x=1") == "cat"
    assert url_stem("https://example.com/a%2F..%2F..%2Fb.png") == "b"  # never a path
    assert url_stem("https://example.com/x%00y%3A.png") == "x_y_"
    assert url_stem("https://example.com/") == "image"
    assert url_stem("https://example.com/..") == "image"
    assert url_stem("https://example.com/x/caf%C3%A9.tar.png") == "café.tar"


def test_predict_and_segment_take_urls(server, tmp_path, capsys):
    import ovss

    seg = ovss.load("test-san-tiny")
    from_url = seg.predict(f"{server}/img/cat.png", "a; b")
    np.testing.assert_array_equal(from_url.label_map, seg.predict(PIXELS, "a; b").label_map)
    out = tmp_path / "out"
    url = f"{server}/img/cat.png"
    missing = f"{server}/missing.jpg"
    args = [
        "segment",
        url,
        f"{server}/img/cat.png?v=2",
        missing,
        "--model",
        "test-san-tiny",
        "--classes",
        "a; b",
    ]
    assert (
        main([*args, "--out", str(out), "--dtype", "fp32"]) == 1
    )  # the missing one is listed, the others done
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.glob("*_label.png")) == ["cat_1_label.png", "cat_label.png"]
    assert json.loads((out / "cat.json").read_text())["source"] == url
    assert f"ovss: failed: {missing}: cannot download {missing}: HTTP 404" in captured.err  # "//" kept
    assert main([*args, "--out", str(out), "--dtype", "fp32"]) == 1
    assert "2 of 3 image(s) already done" in capsys.readouterr().out
