"""``ovss demo`` before the server starts: help, missing gradio, port in use, limit options."""

from __future__ import annotations

import builtins

import pytest

from ovss.cli.main import build_parser, main
from ovss.demo.backend import DemoBackend
from ovss.errors import MissingDependencyError


def test_help_describes_every_option(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "nothing is ever downloaded inside a web request" in text
    for option, shown in [
        ("--port PORT", "TCP port to serve on (default: 7860)"),
        ("--device DEVICE", "cpu, cuda, cuda:N or auto (default: cpu)"),
        ("--dtype {auto,fp32,bf16,fp16}", "(default: auto)"),
        ("--host HOST", "(default: 127.0.0.1)"),
        ("--max-pixels N", "(default: 25000000)"),
        ("--max-classes N", "(default: 1000)"),
        ("--max-upload-mb MB", "(default: 25.0)"),
        ("--queue-size N", "(default: 20)"),
        ("--keep-files SECONDS", "(default: 1800)"),
        ("--examples DIR", "'none'"),
        ("--share", "public gradio.live link"),
    ]:
        assert option in text and shown in text, option


def test_missing_gradio_is_reported_before_the_model_loads(monkeypatch, capsys, no_model_load):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "gradio" or name.startswith("gradio."):
            raise ImportError("No module named 'gradio'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    assert main(["demo", "--model", "test-san-tiny"]) == 1
    err = capsys.readouterr().err
    assert err == "ovss: error: gradio is not installed; install it with: pip install 'ovss[demo]'\n"
    with pytest.raises(MissingDependencyError):
        from ovss.demo.app import build_app

        build_app(DemoBackend("test-san-tiny"))


def test_port_in_use_is_one_line_before_the_model_loads(busy_port, capsys, no_model_load):
    pytest.importorskip("gradio", reason="gradio not installed (pip install 'ovss[demo]')")
    assert main(["demo", "--model", "test-san-tiny", "--port", str(busy_port)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ovss: error: cannot serve on 127.0.0.1:{busy_port}: Address already in use")
    assert err.endswith("choose another port with --port N\n") and err.count("\n") == 1


def test_limit_options_are_checked_before_the_model_loads(capsys, no_model_load):
    pytest.importorskip("gradio", reason="gradio not installed (pip install 'ovss[demo]')")
    assert main(["demo", "--model", "test-san-tiny", "--keep-files", "0"]) == 1
    assert capsys.readouterr().err == "ovss: error: --keep-files must be > 0, got 0\n"
