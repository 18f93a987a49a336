"""ONNX export: one file runs any vocabulary size K, with the numbers of eager PyTorch."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

import onnxruntime as ort

import ovss
from ovss.cli.main import main
from ovss.errors import OvssError
from ovss.export.onnx import example_images, export_onnx, random_text
from ovss.models.build import build_model
from ovss.models.catseg import catseg_tiny

SIZE = (64, 96)


def _catseg(**overrides: object):
    """Tiny CAT-Seg at a 96 px CLIP input (fast); ``pad_len`` overridable to test the class budget."""
    torch.manual_seed(0)
    extra = (f"{k}={v}" for k, v in overrides.items())
    return build_model(catseg_tiny().override("clip_resolution=96", *extra))


def _text(model, k: int) -> torch.Tensor:
    """(k, ...) text embeddings of k made-up classes in the model's layout."""
    seg = ovss.Segmenter(model)
    seg.set_vocabulary([f"class {i}" for i in range(k)])
    return seg.text_embeddings


def _run(path, images: torch.Tensor, text: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.numpy(), "text": text.numpy()})[0]


def _eager(model, images, text, size, **options) -> np.ndarray:
    with torch.no_grad():
        return model.predict(images, text, size, size, **options).numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# (model factory, options, K values checked): traced at K = 3; K below, at and above it.
FAMILIES = {
    "san": (lambda: ovss.load("test-san-tiny").model, {}, (1, 3, 7, 40)),
    "sed": (lambda: ovss.load("test-sed-tiny").model, {}, (1, 3, 7)),
    # pad_len=4: K = 1, 3 below the class budget, 4 at it, 7 above it (top-4 per image, -100 logits else)
    "catseg-whole": (lambda: _catseg(pad_len=4), {"inference": "whole"}, (1, 3, 4, 7)),
    "catseg-slide": (lambda: _catseg(pad_len=4), {"inference": "slide"}, (1, 3, 7)),
    # CAT-Seg v1, every protocol its descriptor exports; K = 20 is above its decoder's class chunk (16)
    "catseg-v1-whole": (lambda: ovss.load("test-catseg-v1-tiny").model, {"inference": "whole"}, (1, 3, 20)),
    "catseg-v1-slide": (lambda: ovss.load("test-catseg-v1-tiny").model, {"inference": "slide"}, (1, 3, 20)),
    "catseg-v1-mmseg": (
        lambda: ovss.load("test-catseg-v1-tiny.mmseg").model, {"inference": "mmseg"}, (1, 3, 20)
    ),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_file_runs_every_vocabulary_size(family, tmp_path):
    factory, options, ks = FAMILIES[family]
    model = factory()
    text = _text(model, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the expected tracer/exporter warnings are silenced, no others
        report = export_onnx(model, text, tmp_path / "m.onnx", size=SIZE, check_classes=ks, **options)
    assert report["classes"] == list(ks) and report["rel_err"] < 1e-4, report
    images = example_images(model, SIZE, seed=1)  # another image too (export traced and checked seed 0)
    for k in (2, 9):
        t = random_text(text, k, seed=10 + k)
        out = _run(tmp_path / "m.onnx", images, t)
        assert out.shape == (1, k, *SIZE)
        assert _rel(out, _eager(model, images, t, SIZE, **options)) < 1e-4


@pytest.mark.parametrize("name", ["test-san-tiny", "test-catseg-v1-tiny"])
def test_export_checks_images_on_the_models_own_scale(name):
    """The traced and checked input is an RGB image in 0..255 normalised as the predictor does: CLIP
    mean/std for most models, the raw 0..255 scale for CAT-Seg v1 (it normalises inside)."""
    model = ovss.load(name).model
    images = example_images(model, (32, 48))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (model.config.pixel_mean, model.config.pixel_std))
    rgb = images * std + mean
    assert images.shape == (1, 3, 32, 48)
    assert rgb.min() >= -1e-3 and rgb.max() <= 255 + 1e-3 and rgb.std() > 50  # a full-range image
    assert torch.equal(example_images(model, (32, 48)), images)  # reproducible


def test_catseg_above_the_256_class_budget(tmp_path):
    """Traced at K = 3 (padding branch), run at K = 300: each image keeps its top 256 classes."""
    model = _catseg()
    assert model.config.pad_len == 256
    text = _text(model, 3)
    path = tmp_path / "m.onnx"
    report = export_onnx(model, text, path, size=SIZE, check_classes=(3, 300), inference="whole")
    assert report["rel_err"] < 1e-4, report
    images = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(2))
    t = random_text(text, 300, seed=3)
    out = _run(tmp_path / "m.onnx", images, t)
    ref = _eager(model, images, t, SIZE, inference="whole")
    dropped = (ref < 1e-30).all(axis=(2, 3))  # sigmoid(-100): the 44 classes outside the budget
    assert out.shape == (1, 300, *SIZE) and dropped.sum() == 300 - 256
    assert _rel(out, ref) < 1e-4


def test_default_size_640(tmp_path):
    seg = ovss.load("test-san-tiny")
    seg.set_vocabulary("a; b; c")
    report = export_onnx(seg.model, seg.text_embeddings, tmp_path / "m.onnx", size=(640, 640))
    assert report["classes"] == [1, 3, 8] and report["rel_err"] < 1e-4, report


def test_sed_fast_mode_is_refused(tmp_path):
    seg = ovss.load("test-sed-tiny")
    seg.set_vocabulary("a; b")
    with pytest.raises(OvssError, match="SED fast mode .* cannot be exported to ONNX; export without --fast"):
        export_onnx(seg.model, seg.text_embeddings, tmp_path / "m.onnx", size=SIZE, fast=True)


def test_export_size_must_fit_the_model(tmp_path):
    seg = ovss.load("test-san-tiny")
    seg.set_vocabulary("a")
    with pytest.raises(OvssError, match=r"multiples of 32 \(H W\); e\.g\. --size 64 64$"):
        export_onnx(seg.model, seg.text_embeddings, tmp_path / "m.onnx", size=(50, 64))


def test_san_mmseg_protocol_exports(tmp_path):
    """A SAN with the mmseg protocol (the .mmseg weights) traces its own post-processing."""
    import dataclasses

    seg = ovss.load("test-san-tiny")
    seg.model.config = dataclasses.replace(seg.model.config, inference="mmseg")
    seg.set_vocabulary("a; b; c")
    report = export_onnx(seg.model, seg.text_embeddings, tmp_path / "m.onnx", size=SIZE)
    assert report["rel_err"] < 1e-4, report


def test_export_cli_size_error_suggests_a_pair(tmp_path, capsys):
    argv = ["export", "--model", "test-san-tiny", "--size", "500", "700", "--out", str(tmp_path / "m.onnx")]
    assert main(argv) == 1
    assert capsys.readouterr().err.strip().endswith("e.g. --size 512 704")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("model", ["test-san-tiny", "test-sed-tiny"])
def test_export_cli_fp16_runs_in_onnxruntime(model, tmp_path, capsys):
    out = tmp_path / "half.onnx"
    argv = ["export", "--model", model, "--classes", "a; b", "--size", "64", "64", "--dtype", "fp16"]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    seg = ovss.load(model, dtype="fp32")
    seg.set_vocabulary("a; b")
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    scores = _run(out, images.half(), seg.text_embeddings.half())
    assert scores.dtype == np.float16 and scores.shape == (1, 2, 64, 64)
    assert _rel(scores.astype(np.float32), _eager(seg.model, images, seg.text_embeddings, (64, 64))) < 2e-2


def test_bf16_model_is_refused_with_one_line(tmp_path):
    seg = ovss.load("test-san-tiny", dtype="bf16")
    seg.set_vocabulary("a")
    with pytest.raises(OvssError, match=r"a bfloat16 model cannot be exported to ONNX .*dtype='fp32'"):
        export_onnx(seg.model, seg.text_embeddings, tmp_path / "m.onnx", size=(64, 64))
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("options", [{"inference": "d2"}, {"fast": True}])
def test_catseg_v1_refuses_what_it_cannot_export_in_one_line(options, tmp_path):
    seg = ovss.load("test-catseg-v1-tiny")
    seg.set_vocabulary(["a"])
    refused = r"^(CAT-Seg v1 inference='d2' is not one of|unknown CAT-Seg v1 option)"
    with pytest.raises(OvssError, match=refused) as e:
        export_onnx(seg.model, seg.text_embeddings, tmp_path / "m.onnx", size=SIZE, **options)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "m.onnx").exists()
