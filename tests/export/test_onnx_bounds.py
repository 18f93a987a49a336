"""ONNX export refuses a size or opset it cannot use, in one line, before the model loads."""

from __future__ import annotations

import pytest
import torch

from ovss.cli.main import main
from ovss.errors import OvssError
from tests.conftest import one_line_error


# --------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("size", [["65536", "65536"], ["4096", "4096"], ["8192", "32"], ["0", "32"]])
def test_export_size_is_bounded_before_the_model_loads(size, tmp_path, capsys, no_model_load):
    out = str(tmp_path / "m.onnx")
    assert main(["export", "--model", "test-san-tiny", "--size", *size, "--out", out]) == 1
    err = one_line_error(capsys)
    assert "is out of range: each side 1..4096 and H x W at most 4194304" in err, err


def test_export_onnx_checks_the_size_too():

    from ovss.export.onnx import check_export_size, export_onnx

    check_export_size((2048, 2048))
    check_export_size((4096, 1024))
    with pytest.raises(OvssError, match="out of range"):
        export_onnx(torch.nn.Identity(), torch.zeros(2, 4), "/nonexistent/m.onnx", size=(65536, 65536))


@pytest.mark.parametrize("opset", ["3", "13", "99"])
def test_export_refuses_an_unusable_opset_before_loading_the_model(tmp_path, capsys, no_model_load, opset):
    """--opset 3 (or 13: no scaled_dot_product_attention) gave torch's RuntimeError or a page of graph IR."""
    from ovss.cli.main import main

    out = str(tmp_path / "m.onnx")
    assert main(["export", "--model", "test-san-tiny", "--out", out, "--opset", opset]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ovss: error: ONNX opset {opset} is not supported: use 14..") and "\n" not in err
    assert err.endswith("(default 18; --opset N)") and not (tmp_path / "m.onnx").exists()
