from __future__ import annotations

import builtins

import numpy as np
import pytest

from ovss.demo.app import DemoBackend, build_app
from ovss.errors import MissingDependencyError, OvssError


def test_backend_segments_and_tabulates(data_dir):
    backend = DemoBackend("test-san-tiny")
    image = np.asarray(__import__("PIL.Image").Image.open(data_dir / "quokka.jpg").convert("RGB"))
    overlay, rows = backend(image, "quokka; grass; rock")
    assert overlay.height == image.shape[0] and overlay.width >= image.shape[1]
    assert rows and {r[0] for r in rows} <= {"quokka", "grass", "rock"}
    assert sum(r[1] for r in rows) == pytest.approx(100, abs=0.05)
    first = backend.segmenter()
    backend(image, "quokka", model="test-san-tiny")
    assert backend.segmenter() is first  # same model: not reloaded
    backend(image, "quokka", model="test-sed-tiny")
    assert backend.model_name == "test-sed-tiny" and backend.segmenter() is not first


def test_backend_errors_are_user_errors():
    with pytest.raises(OvssError, match="no image"):
        DemoBackend("test-san-tiny")(None, "cat")


def test_missing_gradio_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "gradio":
            raise ImportError("No module named 'gradio'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MissingDependencyError, match=r"pip install 'ovss\[demo\]'"):
        build_app(DemoBackend("test-san-tiny"), ["test-san-tiny"])
