"""The text-embedding cache size (OVSS_TEXT_CACHE_MB, memory_mb) is finite and bounded."""

from __future__ import annotations

import math

import pytest

from ovss.cli.main import main
from ovss.errors import CacheError
from tests.conftest import noise_photo, one_line_error


# ----------------------------------------------------------------------------------------- text cache
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "1e12"])
def test_text_cache_size_is_finite_and_bounded(value, monkeypatch, tmp_path, capsys):
    from ovss.vocab.embeddings import TextEmbedder, default_memory_mb

    monkeypatch.setenv("OVSS_TEXT_CACHE_MB", value)
    with pytest.raises(CacheError, match=rf"OVSS_TEXT_CACHE_MB='{value}' is out of range; .*from 0"):
        default_memory_mb()
    photo = noise_photo(tmp_path / "p.png")
    argv = ["segment", str(photo), "--model", "test-san-tiny", "--classes", "a; b", "--out", f"{tmp_path}/o"]
    assert main(argv) == 1
    assert "OVSS_TEXT_CACHE_MB" in one_line_error(capsys)
    monkeypatch.delenv("OVSS_TEXT_CACHE_MB")
    with pytest.raises(CacheError, match="memory_mb=nan is out of range"):
        TextEmbedder(lambda t: t, "vild", "first", memory_mb=math.nan)
