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
