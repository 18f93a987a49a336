"""``ovss export`` (cli/export.py): the command line, its help, its checks before the model loads."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime")

import onnxruntime as ort

from ovss.cli.main import main


def test_export_cli(tmp_path, capsys):
    out = tmp_path / "san.onnx"
    argv = ["export", "--model", "test-san-tiny", "--classes", "a; b", "--size", "64", "64"]
    argv += ["--out", str(out)]
    assert main(argv) == 0
    assert out.is_file()
    assert "onnxruntime vs eager at K = 1, 2, 7: max abs err" in capsys.readouterr().out


def test_export_cli_inference_is_catseg_only(tmp_path, capsys):
    argv = ["export", "--model", "test-san-tiny", "--inference", "slide", "--out", str(tmp_path / "m.onnx")]
    assert main(argv) == 1
    assert "--inference is a CAT-Seg option" in capsys.readouterr().err


def test_export_help_is_complete(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "The vocabulary size K is dynamic" in text
    for expected in (
        "ONNX opset version (default: 18)",
        "(default: the model's test size, 640 640)",
        '(default: "object; background")',
        "CAT-Seg: the inference protocol baked into the graph (default: whole)",
    ):
        assert expected in text


def test_export_cli_traces_fp32_where_auto_is_bf16(tmp_path, capsys, monkeypatch):
    """On a CPU with bf16 units ``ovss.load``'s auto is bf16; export still traces (and writes) float32."""
    import ovss.cpu

    monkeypatch.setattr(ovss.cpu, "native_bf16_cpu", lambda: True)
    assert ovss.load("test-san-tiny").dtype == torch.bfloat16  # the resolution a user's CPU makes
    out = tmp_path / "san.onnx"
    argv = ["export", "--model", "test-san-tiny", "--classes", "a; b", "--size", "64", "64"]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.type for i in session.get_inputs()] == ["tensor(float)", "tensor(float)"]


def test_bf16_export_is_refused_before_loading(tmp_path, capsys, no_model_load):
    argv = ["export", "--model", "test-san-tiny", "--dtype", "bf16", "--out", str(tmp_path / "m.onnx")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "onnxruntime refuses the graph; export fp32" in err
    assert not (tmp_path / "m.onnx").exists()


def test_an_out_folder_is_refused_before_loading(tmp_path, capsys, no_model_load):
    assert main(["export", "--model", "test-san-tiny", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    example = tmp_path / "model.onnx"
    assert err == f"ovss: error: --out {tmp_path} is a folder; pass a file path (e.g. {example})\n"


def test_another_familys_inference_mode_is_refused(tmp_path, capsys):
    """CAT-Seg v1's ``mmseg`` mode is an exported mode, but not one of CAT-Seg's."""
    out = tmp_path / "m.onnx"
    argv = ["export", "--model", "test-catseg-tiny", "--inference", "mmseg", "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "ovss: error: --inference mmseg does not apply to test-catseg-tiny (a CAT-Seg model); "
        "use whole or slide"
    )
    assert not out.exists()


def test_catseg_v1_exports_whole_by_default(tmp_path, capsys):
    """CAT-Seg v1 end to end: its descriptor's export default (whole) is baked in, K stays dynamic."""
    import numpy as np

    import ovss
    from ovss.export.onnx import random_text

    out = tmp_path / "v1.onnx"
    argv = ["export", "--model", "test-catseg-v1-tiny", "--classes", "a; b; c", "--size", "64", "96"]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    assert "onnxruntime vs eager at K = 1, 3, 8" in capsys.readouterr().out
    model = ovss.load("test-catseg-v1-tiny", dtype="fp32").model
    assert model.config.inference == "whole"
    images = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 255  # RGB 0..255
    text = random_text(torch.zeros(1, 80, 32), 5, seed=2)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, {"images": images.numpy(), "text": text.numpy()})
    with torch.no_grad():
        ref = model.predict(images, text, (64, 96), (64, 96), inference="whole").numpy()
        slide = model.predict(images, text, (64, 96), (64, 96), inference="slide").numpy()
    assert scores.shape == (1, 5, 64, 96)
    assert np.linalg.norm(scores - ref) / np.linalg.norm(ref) < 1e-4
    assert np.abs(ref - slide).max() > 1e-3  # the protocols differ: the check above tells them apart


def test_catseg_v1_refuses_a_mode_it_lacks_in_one_line(tmp_path, capsys):
    """SAN's d2 protocol is no ``ovss export`` mode: refused by the option's choices, nothing written."""
    out = tmp_path / "m.onnx"
    with pytest.raises(SystemExit):
        main(["export", "--model", "test-catseg-v1-tiny", "--inference", "d2", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert "invalid choice: 'd2'" in err[-1] and "mmseg" in err[-1]
    assert not out.exists()
