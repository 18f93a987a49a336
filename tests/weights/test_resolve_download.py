"""The download path end to end, against a local server speaking the Hugging Face Hub file protocol.

``hf_hub_download`` asks ``HEAD {endpoint}/[spaces/]{repo}/resolve/{revision}/{file}`` for the commit
(``X-Repo-Commit``), the ETag (``X-Linked-Etag`` for LFS files: their sha256) and the size, then
``GET``s the same URL, with ``Range: bytes=N-`` when it resumes a partial download. The server below
serves a tiny official-format SAN checkpoint built from the parity fixture, can cut a transfer short,
fail, lie about the ETag, and counts every request, so offline mode can be shown to send none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import ovss
import ovss.home
from ovss.cli.main import main
from ovss.errors import DigestMismatchError, WeightsNotFoundError
from ovss.weights import cache, modelfile, registry, resolve
from tests.conftest import count_file_hashes, noise_photo, parity_dir

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Files by URL path; ``cut`` bytes of the next GET are sent before the connection drops."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.cut: int | None = None  # bytes of the next GET sent before the connection drops
        self.broken = False  # answer every GET with 500
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _head(self) -> bytes | None:
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
                body = hub.files.get(self.path.split("?")[0])
                if body is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return body

            def do_HEAD(self) -> None:
                body = self._head()
                if body is not None:
                    self.send_response(200)
                    self._meta(body)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()

            def do_GET(self) -> None:
                body = self._head()
                if body is None:
                    return
                start = 0
                rng = self.headers.get("Range")
                if hub.broken:
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self._meta(body)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if hub.cut is not None:
                    self.wfile.write(body[start : hub.cut])
                    self.wfile.flush()
                    hub.cut, hub.broken = None, True
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body[start:])

            def _meta(self, body: bytes) -> None:
                path = self.path.split("?")[0]
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha1(body).hexdigest()}"')
                sha = hub.etags.get(path, hashlib.sha256(body).hexdigest())
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("Accept-Ranges", "bytes")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, spec: registry.WeightSpec, body: bytes) -> str:
        prefix = "/spaces" if spec.hub_repo_type == "space" else ""
        path = f"{prefix}/{spec.hub_repo}/resolve/main/{spec.hub_file}"
        self.files[path] = body
        return path


@pytest.fixture
def hub(monkeypatch, tmp_path):
    server = FakeHub()
    server.thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("OVSS_HOME", str(tmp_path / "home"))
    for var in ("OVSS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture(scope="module")
def official_bytes(tmp_path_factory) -> bytes:
    """A tiny SAN release file: ``torch.save({"model": sd, "iteration": n})`` in the official detectron2
    layout (the parity fixture's weights); without the fixture, an ovss file of test-san-tiny (the
    download path is the same, ``ovss convert`` accepts both)."""
    fixture = parity_dir() / "san_a" / "state_dict.safetensors"
    if not fixture.is_file():
        model, _ = cache.load_model("test-san-tiny")
        path = tmp_path_factory.mktemp("release") / "san.safetensors"
        return modelfile.save_model_file(path, model.state_dict(), model.config, "san").read_bytes()
    from safetensors.torch import load_file

    buf = io.BytesIO()
    torch.save({"model": load_file(str(fixture)), "iteration": 90000}, buf)
    return buf.getvalue()


def tiny_spec(monkeypatch, name: str = "san-tiny-hub", **changes: object) -> registry.WeightSpec:
    """A registry entry shaped like the fixture, published on the (fake) hub."""
    spec = dataclasses.replace(
        registry.get_weight_spec("test-san-tiny"),
        name=name, source_format="san_d2", hub_repo="ovss-test/san-tiny", hub_file="model_final.pth",
        **changes,
    )  # fmt: skip
    monkeypatch.setitem(registry._BY_NAME, name, spec)
    return spec


def photo(tmp_path: Path) -> Path:
    return noise_photo(tmp_path / "photo.png")


def test_download_convert_segment(hub, official_bytes, monkeypatch, tmp_path, capsys):
    spec = tiny_spec(monkeypatch)
    hub.add(spec, official_bytes)
    assert main(["download", spec.name]) == 0
    target = resolve.converted_path(spec.name)
    assert f"{spec.name}: {target}" in capsys.readouterr().out
    # our probe, hf's HEAD, the file (huggingface_hub may also ask /api/... for its own telemetry)
    assert [r[0] for r in hub.requests if "/resolve/" in r[1]] == ["HEAD", "HEAD", "GET"]
    meta = modelfile.open_model_file(target).metadata
    assert meta["source_sha256"] == hashlib.sha256(official_bytes).hexdigest()
    assert meta["source_format"] == ("san_d2" if official_bytes.startswith(b"PK") else "ovss")
    # the converted weights are the fixture's, through the production path
    seg = ovss.load(spec.name)
    ref, _ = cache.load_model("test-san-tiny", weights=_saved(tmp_path, official_bytes))
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(seg.model.state_dict()[key], value, rtol=0, atol=0)
    # segment with it, offline: no request at all
    monkeypatch.setenv("OVSS_OFFLINE", "1")
    before = len(hub.requests)
    out = tmp_path / "out"
    args = ["segment", str(photo(tmp_path)), "--model", spec.name, "--classes", "a; b", "--out", str(out)]
    assert main(args) == 0
    assert json.loads((out / "photo.json").read_text())["model"] == spec.name
    assert len(hub.requests) == before
    # a second download is a no-op
    assert main(["download", spec.name]) == 0
    assert "already at" in capsys.readouterr().out and len(hub.requests) == before


def test_a_download_is_hashed_once_per_load(hub, official_bytes, monkeypatch):
    """The digest checked while fetching is the one the conversion records: the file is read for its
    sha256 once (``ovss.load`` of a name not yet converted: fetch, check, convert, load)."""
    spec = tiny_spec(monkeypatch)
    hub.add(spec, official_bytes)
    hashed = count_file_hashes(monkeypatch)
    seg = ovss.load(spec.name)
    digest = hashlib.sha256(official_bytes).hexdigest()
    assert len(hashed) == 1 and hashed[0].read_bytes() == official_bytes
    assert modelfile.open_model_file(resolve.converted_path(spec.name)).metadata["source_sha256"] == digest
    assert seg.digest == digest
    # a pinned digest that the download does not have is still refused
    pinned = tiny_spec(monkeypatch, name="san-tiny-pinned", sha256="0" * 64)
    hub.add(pinned, official_bytes)
    with pytest.raises(DigestMismatchError, match="expected 0000000000000000"):
        ovss.load(pinned.name)
    assert not resolve.converted_path(pinned.name).exists()


def _saved(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "official.pth"
    path.write_bytes(data)
    return path


def test_interrupted_download_restarts_cleanly(hub, official_bytes, monkeypatch, capsys):
    spec = tiny_spec(monkeypatch)
    hub.add(spec, official_bytes)
    hub.cut = 1 << 20  # the transfer stops after 1 MiB, and the server then fails
    assert main(["download", spec.name]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ovss: error: downloading model_final.pth from") and "Traceback" not in err
    assert f"run 'ovss download {spec.name}' again" in err
    assert not resolve.converted_path(spec.name).exists()
    hub.broken = False
    assert main(["download", spec.name]) == 0
    assert resolve.fetch_source(spec).path.read_bytes() == official_bytes
    assert not list((ovss.home.ovss_home() / "hub").rglob("*.incomplete"))  # no partial file left


def test_partial_files_of_killed_downloads_are_removed(hub, official_bytes, monkeypatch):
    """huggingface_hub downloads into a per-process ``<etag>.<id>.incomplete`` file and restarts an
    interrupted download; a kill -9 leaves that file behind, which the next download removes once it
    has not been written to for 10 minutes (a live download writes to it continuously)."""
    spec = tiny_spec(monkeypatch)
    hub.add(spec, official_bytes)
    sha = hashlib.sha256(official_bytes).hexdigest()
    blobs = ovss.home.ovss_home() / "hub" / "models--ovss-test--san-tiny" / "blobs"
    blobs.mkdir(parents=True)
    stale, live = blobs / f"{sha}.0badc0de.incomplete", blobs / f"{sha}.1badc0de.incomplete"
    stale.write_bytes(official_bytes[:3000])
    live.write_bytes(official_bytes[:3000])
    old = time.time() - 3600
    os.utime(stale, (old, old))
    source = resolve.fetch_source(spec)
    assert source.path.read_bytes() == official_bytes and source.sha256 == sha
    assert not stale.exists() and live.exists()


def test_checksum_mismatch_is_refused_and_removed(hub, official_bytes, monkeypatch, capsys):
    # a Space (like CAT-Seg's weights), whose LFS sha256 (X-Linked-Etag) does not match the bytes
    spec = tiny_spec(monkeypatch, hub_repo_type="space")
    path = hub.add(spec, official_bytes)
    assert path.startswith("/spaces/ovss-test/san-tiny/resolve/main/")
    hub.etags[path] = "f" * 64
    assert main(["download", spec.name]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ovss: error: ") and "has sha256" in err and "expected ffffffffffffffff" in err
    assert "the file was removed from the cache" in err
    assert not resolve.converted_path(spec.name).exists()
    assert not list((ovss.home.ovss_home() / "hub").rglob("f" * 64))
    # a pinned digest is checked the same way
    pinned = tiny_spec(monkeypatch, name="san-tiny-pinned", sha256="0" * 64)
    hub.add(pinned, official_bytes)
    with pytest.raises(DigestMismatchError, match="expected 0000000000000000"):
        resolve.fetch_source(pinned)


def test_offline_never_touches_the_network(hub, official_bytes, monkeypatch, capsys):
    spec = tiny_spec(monkeypatch)
    hub.add(spec, official_bytes)
    for var in ("OVSS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
        assert main(["download", spec.name]) == 1
        err = capsys.readouterr().err
        assert "offline mode is on" in err and "--weights" not in err
        monkeypatch.delenv(var)
    assert hub.requests == []
    # the segment path may suggest --weights (download may not)
    monkeypatch.setenv("OVSS_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match=r"--weights FILE"):
        ovss.load(spec.name)
    # downloaded once, the converted file lost: offline re-conversion from the hub cache, no request
    monkeypatch.delenv("OVSS_OFFLINE")
    assert main(["download", spec.name]) == 0
    resolve.converted_path(spec.name).unlink()
    before = len(hub.requests)
    monkeypatch.setenv("OVSS_OFFLINE", "1")
    assert main(["download", spec.name]) == 0
    assert len(hub.requests) == before and resolve.converted_path(spec.name).is_file()
    capsys.readouterr()
    # a damaged converted file is converted again (from the cached source)
    target = resolve.converted_path(spec.name)
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    assert main(["download", spec.name]) == 0
    assert "the converted file is damaged" in capsys.readouterr().err
    ovss.load(spec.name)


def test_unreachable_endpoint_fails_at_once_with_one_line(monkeypatch, tmp_path, capsys):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OVSS_HOME", str(tmp_path / "home"))
    for var in ("OVSS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    spec = tiny_spec(monkeypatch)
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)  # retries back off with time.sleep
    assert main(["download", spec.name]) == 1
    err = capsys.readouterr().err.strip()
    assert sleeps == [] and len(err.splitlines()) == 1, err
    assert f"cannot reach http://127.0.0.1:{port}/ovss-test/san-tiny/resolve/main/model_final.pth" in err
    assert "OVSS_OFFLINE=1" in err and "--weights" not in err


def test_missing_file_on_the_hub_and_catseg_space_link(hub, monkeypatch, capsys):
    spec = tiny_spec(monkeypatch)  # nothing served
    assert main(["download", spec.name]) == 1
    assert "the hub answered 404" in capsys.readouterr().err
    monkeypatch.setenv("OVSS_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        resolve.fetch_source(registry.get_weight_spec("catseg-vit-b16"))
    assert "model_base.pth from https://huggingface.co/spaces/hamacojr/CAT-Seg-weights" in str(info.value)
