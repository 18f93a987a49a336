"""Weights published at a plain URL (the mmseg SAN files on download.openmmlab.com), end to end.

A local server on 127.0.0.1 serves a tiny model-zoo-style mmseg SAN file built from the ``sanmm_a``
parity fixture: a FLAT state dict plus the two unused extras, named ``<name>-<sha256[:8]>.pth`` as
OpenMMLab publishes them. ``ovss download`` fetches it, checks the hash in the name, records the full
digest, converts it, and later runs never touch the network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import ovss.home
from ovss.cli.main import main
from ovss.errors import DigestMismatchError, WeightsNotFoundError
from ovss.weights import cache, modelfile, registry, resolve
from ovss.weights.urlfetch import fetch_url, name_hash_prefix
from tests.conftest import count_file_hashes, parity_dir


class Server:
    """Files by URL path over HTTP on 127.0.0.1; every request is counted."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        files, requests = self.files, self.requests

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                requests.append(self.path)
                body = files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def server(monkeypatch, tmp_path):
    srv = Server()
    monkeypatch.setenv("OVSS_HOME", str(tmp_path / "home"))
    for var in ("OVSS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    yield srv
    srv.server.shutdown()
    srv.server.server_close()


@pytest.fixture(scope="module")
def zoo_bytes() -> bytes:
    """The fixture's mmseg state dict saved as the model zoo does: flat, plus the two extras."""
    folder = parity_dir() / "sanmm_a"
    if not (folder / "state_dict.safetensors").is_file():
        pytest.skip(f"{folder} not found")
    from safetensors.torch import load_file

    sd = load_file(str(folder / "state_dict.safetensors"))
    sd["criterion.empty_weight"] = torch.ones(8)
    sd["text_encoder.attn_mask"] = torch.full((77, 77), float("-inf")).triu(1)
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def _spec(monkeypatch, url: str) -> registry.WeightSpec:
    """``san-vit-b16.mmseg`` with the fixture's architecture and the local URL."""
    from tests.parity._common import read_config
    from tests.parity.test_sanmm_parity import fixture_config

    cfg = read_config(parity_dir() / "sanmm_a")
    spec = dataclasses.replace(
        registry.get_weight_spec("san-vit-b16.mmseg"),
        name="san-tiny.mmseg", url=url, manual_url=url, config=lambda: fixture_config(cfg, "sanmm_a"),
    )  # fmt: skip
    monkeypatch.setitem(registry._BY_NAME, spec.name, spec)
    return spec


def test_registry_names_the_official_urls() -> None:
    for name, prefix in (("san-vit-b16.mmseg", "fd0a7684"), ("san-vit-l14.mmseg", "a11e098f")):
        spec = registry.get_weight_spec(name)
        assert spec.url.startswith("https://download.openmmlab.com/mmsegmentation/v0.5/san/")
        assert name_hash_prefix(spec.url) == prefix and spec.downloadable
        assert {p.protocol for p in spec.published} == {"single scale", "ms+flip"}
        assert {p.benchmark for p in spec.published} == {"coco171"}
        assert spec.config().inference == "mmseg"


def test_download_checks_the_name_hash_and_converts(server, zoo_bytes, monkeypatch, capsys):
    digest = hashlib.sha256(zoo_bytes).hexdigest()
    server.files[f"/san/san-tiny_20230906-{digest[:8]}.pth"] = zoo_bytes
    spec = _spec(monkeypatch, f"{server.base}/san/san-tiny_20230906-{digest[:8]}.pth")
    hashed = count_file_hashes(monkeypatch)
    assert main(["download", spec.name]) == 0
    assert len(server.requests) == 1 and len(hashed) == 1  # the digest taken at the download is recorded
    target = resolve.converted_path(spec.name)
    assert f"{spec.name}: {target}" in capsys.readouterr().out
    meta = modelfile.open_model_file(target).metadata
    assert meta["source_sha256"] == digest and meta["source_format"] == "san_mmseg"
    model, _ = cache.load_model(spec.name)
    assert model.config.inference == "mmseg"
    record = ovss.home.cache_folder("hub") / "url" / f"san-tiny_20230906-{digest[:8]}.pth.sha256"
    assert record.read_text().strip() == digest  # the full digest, recorded on first download
    # later: from the cache, no request, the recorded digest checked
    assert fetch_url(spec.name, spec.url) == (record.with_suffix(""), digest) and len(server.requests) == 1
    source = record.with_suffix("")
    damaged = bytearray(zoo_bytes)
    damaged[len(damaged) // 2] ^= 0xFF
    source.write_bytes(bytes(damaged))  # changed after the download
    with pytest.raises(DigestMismatchError, match="expected " + digest[:16]):
        fetch_url(spec.name, spec.url)
    assert not source.exists() and not record.exists()


def test_a_file_whose_hash_does_not_match_its_name_is_refused(server, zoo_bytes, monkeypatch) -> None:
    server.files["/san/san-tiny_20230906-00000000.pth"] = zoo_bytes
    spec = _spec(monkeypatch, f"{server.base}/san/san-tiny_20230906-00000000.pth")
    with pytest.raises(DigestMismatchError, match="00000000 \\(the hash in its name\\)"):
        resolve.fetch_source(spec)
    assert not list((ovss.home.cache_folder("hub") / "url").glob("san-tiny*"))


def test_failed_and_offline_downloads_give_the_url(server, monkeypatch, capsys) -> None:
    url = f"{server.base}/san/missing-12345678.pth"
    spec = _spec(monkeypatch, url)
    with pytest.raises(WeightsNotFoundError) as err:
        resolve.fetch_source(spec)
    message = str(err.value)
    assert url in message and f"ovss convert {spec.name} FILE" in message and "\n" not in message
    assert main(["download", spec.name]) != 0  # the CLI prints that one line
    assert url in capsys.readouterr().err
    monkeypatch.setenv("OVSS_OFFLINE", "1")
    before = len(server.requests)
    with pytest.raises(WeightsNotFoundError, match="offline mode is on.*" + url.replace(".", r"\.")):
        resolve.fetch_source(spec)
    assert len(server.requests) == before


def test_file_name_hash_prefix() -> None:
    assert name_hash_prefix("https://x/san-vit-b16_20230906-fd0a7684.pth") == "fd0a7684"
    assert name_hash_prefix("https://x/model_final.pth") is None
