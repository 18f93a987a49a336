"""Fixtures of the CLI tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def fast_model(monkeypatch):
    """``ovss segment`` runs test-san-tiny at a 64-pixel short side (see ``_segment_fast.py``)."""
    import ovss.cli.segment as segment_cli
    from ovss.models.base import ResizeConfig

    original = segment_cli.load_segmenter

    def load(args):
        seg = original(args)
        seg.model.config.test_resize = ResizeConfig(size=64, max_size=256)
        return seg

    monkeypatch.setattr(segment_cli, "load_segmenter", load)
