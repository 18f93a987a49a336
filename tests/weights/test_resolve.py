"""resolve's hub habits: the hub called as library "ovss", and stale partial downloads removed only for hub
versions whose layout is known (downloads end to end: test_resolve_download.py)."""

from __future__ import annotations

import os
import time

import huggingface_hub
import pytest

from ovss.errors import WeightsNotFoundError
from ovss.weights import resolve
from ovss.weights.registry import get_weight_spec


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OVSS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OVSS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "home"


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
