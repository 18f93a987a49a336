"""The weights pipeline's own habits: progress lines through logging (shown by the CLI only), the hub
called as library "ovss", and stale partial downloads removed only for hub versions whose layout is known."""

from __future__ import annotations

import logging
import os
import time

import huggingface_hub
import pytest
import torch

from ovss.cli.main import main
from ovss.errors import WeightsNotFoundError
from ovss.models.build import build_model
from ovss.weights import cache, resolve
from ovss.weights.registry import get_weight_spec


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OVSS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OVSS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "home"


def _tiny_state_dict(path):
    torch.manual_seed(0)
    torch.save(build_model(get_weight_spec("test-san-tiny").config()).state_dict(), path)
    return path


def test_library_logs_progress_and_the_cli_prints_it(home, tmp_path, capsys, caplog):
    source = _tiny_state_dict(tmp_path / "tiny.pth")
    spec = get_weight_spec("test-san-tiny")
    with caplog.at_level(logging.INFO, logger="ovss.weights"):
        cache.convert_checkpoint(spec, source, tmp_path / "a.safetensors")
    assert capsys.readouterr().err == ""  # library code does not write to the terminal
    messages = [r.getMessage() for r in caplog.records if r.name == "ovss.weights"]
    assert messages[0] == f"converting tiny.pth into {tmp_path / 'a.safetensors'} ..."
    assert messages[1].startswith("converted test-san-tiny in ")
    assert main(["convert", "test-san-tiny", str(source), "--out", str(tmp_path / "b.safetensors")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"ovss: converting tiny.pth into {tmp_path / 'b.safetensors'} ..."
    assert err[1].startswith("ovss: converted test-san-tiny in ")
    assert not logging.getLogger("ovss.weights").handlers  # the CLI's handler is gone after the command


def test_downloads_name_ovss_as_the_library(home, monkeypatch):
    calls = []

    def download(*args, **kwargs):
        calls.append(kwargs)
        raise OSError("no network in tests")

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(WeightsNotFoundError, match="OSError: no network in tests"):
        resolve.fetch_source(get_weight_spec("san-vit-b16"))
    assert calls[0]["library_name"] == "ovss" and calls[0]["library_version"]


@pytest.mark.parametrize(("version", "removed"), [("2.4.0", True), ("2.10.1", True), ("0.36.0", False),
                                                  ("1.2.0", False), ("3.0.0", False), ("dev", False)])
def test_stale_partials_are_removed_only_for_known_hub_versions(tmp_path, version, removed):
    blobs = tmp_path / "models--a--b" / "blobs"
    blobs.mkdir(parents=True)
    stale, live = blobs / "abc1.0badc0de.incomplete", blobs / "abc2.1badc0de.incomplete"
    shared = blobs / "abc3.incomplete"
    for path in (stale, live, shared):
        path.write_bytes(b"x")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(shared, (old, old))  # an older hub's shared, resumable name: never touched
    gone = resolve._remove_stale_partials(tmp_path, version)
    assert gone == ([stale] if removed else [])
    assert stale.exists() is not removed and live.exists() and shared.exists()
