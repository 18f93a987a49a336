"""weights/detect.py: format detection and the registry formats it knows."""

from __future__ import annotations

from ovss.weights import detect


def test_meta_check_helpers_see_registry_formats():
    assert detect.model_formats()["san_d2"] == "san" and detect.model_formats()["catseg_d2"] == "catseg"
