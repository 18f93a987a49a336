"""ovss.home: $OVSS_HOME and offline mode from the environment, a home that is a file."""

from __future__ import annotations

import pytest

import ovss
import ovss.home
from ovss.cli.main import main
from ovss.errors import CacheError
from ovss.weights import resolve
from tests.weights.test_cache_files import one_line_cli_error


def test_home_and_offline_from_environment(home, monkeypatch):
    assert ovss.home.ovss_home() == home
    assert resolve.converted_path("san-vit-b16") == home / "weights" / "san-vit-b16.safetensors"
    assert ovss.home.is_offline()
    monkeypatch.setenv("OVSS_OFFLINE", "0")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert not ovss.home.is_offline()


def test_ovss_home_that_is_a_file(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.write_text("not a folder")
    monkeypatch.setenv("OVSS_HOME", str(home))
    monkeypatch.setenv("OVSS_OFFLINE", "1")
    with pytest.raises(CacheError, match=rf"OVSS_HOME={home} is a file, not a folder"):
        ovss.load("san-vit-b16")
    assert main(["download", "san-vit-b16"]) == 1
    assert "is a file, not a folder; move it away or set OVSS_HOME to a folder" in one_line_cli_error(capsys)
