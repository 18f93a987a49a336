from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")

import ovss
from ovss.cli.main import main
from ovss.errors import OvssError
from ovss.export.onnx import export_onnx

CASES = [("test-san-tiny", {}), ("test-catseg-tiny", {"inference": "whole"}), ("test-sed-tiny", {})]


@pytest.mark.parametrize(("name", "options"), CASES, ids=[c[0] for c in CASES])
def test_export_matches_eager(name, options, tmp_path):
    seg = ovss.load(name)
    seg.set_vocabulary("person; car; road")
    report = export_onnx(seg.model, seg.text_embeddings, tmp_path / "m.onnx", size=(64, 96), **options)
    assert report["rel_err"] < 1e-4, report


@pytest.mark.parametrize(("name", "options"), CASES, ids=[c[0] for c in CASES])
def test_export_with_another_vocabulary_size(name, options, tmp_path):
    import numpy as np
    import onnxruntime as ort
    import torch

    seg = ovss.load(name)
    seg.set_vocabulary("a; b")
    export_onnx(seg.model, seg.text_embeddings, tmp_path / "m.onnx", size=(64, 64), check=False, **options)
    seg.set_vocabulary("a; b; c; d; e")  # K is a dynamic axis
    images = torch.randn(1, 3, 64, 64)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"images": images.numpy(), "text": seg.text_embeddings.numpy()})
    with torch.no_grad():
        ref = seg.model.predict(images, seg.text_embeddings, (64, 64), (64, 64), **options).numpy()
    assert out.shape == (1, 5, 64, 64)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-4


def test_export_size_must_fit_the_model(tmp_path):
    seg = ovss.load("test-san-tiny")
    seg.set_vocabulary("a")
    with pytest.raises(OvssError, match="multiple of 32"):
        export_onnx(seg.model, seg.text_embeddings, tmp_path / "m.onnx", size=(50, 64))


def test_export_cli(tmp_path, capsys):
    out = tmp_path / "san.onnx"
    assert (
        main(
            [
                "export",
                "--model",
                "test-san-tiny",
                "--classes",
                "a; b",
                "--size",
                "64",
                "64",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.is_file() and "onnxruntime vs eager" in capsys.readouterr().out
