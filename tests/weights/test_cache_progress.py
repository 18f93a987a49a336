"""convert_checkpoint logs its progress lines (logger ``ovss.weights``); the CLI shows them."""

from __future__ import annotations

import logging

import torch

from ovss.cli.main import main
from ovss.models.build import build_model
from ovss.weights import cache
from ovss.weights.registry import get_weight_spec


def _tiny_state_dict(path):
    torch.manual_seed(0)
    torch.save(build_model(get_weight_spec("test-san-tiny").config()).state_dict(), path)
    return path


def test_library_logs_progress_and_the_cli_prints_it(home, tmp_path, capsys, caplog):
    source = _tiny_state_dict(tmp_path / "tiny.pth")
    spec = get_weight_spec("test-san-tiny")
    with caplog.at_level(logging.INFO, logger="ovss.weights"):
        cache.convert_checkpoint(spec, source, tmp_path / "a.safetensors")
    assert capsys.readouterr().err == ""  # library code does not write to the terminal
    messages = [r.getMessage() for r in caplog.records if r.name == "ovss.weights"]
    assert messages[0] == f"converting tiny.pth into {tmp_path / 'a.safetensors'} ..."
    assert messages[1].startswith("converted test-san-tiny in ")
    assert main(["convert", "test-san-tiny", str(source), "--out", str(tmp_path / "b.safetensors")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"ovss: converting tiny.pth into {tmp_path / 'b.safetensors'} ..."
    assert err[1].startswith("ovss: converted test-san-tiny in ")
    assert not logging.getLogger("ovss.weights").handlers  # the CLI's handler is gone after the command
