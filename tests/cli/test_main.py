"""``ovss`` itself (cli/main.py): --version and a closed output pipe."""

from __future__ import annotations

import pytest

from ovss import __version__
from ovss.cli.main import main


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_a_closed_output_pipe_is_a_quiet_exit(monkeypatch, capsys):
    """``ovss models | head``: the reader going away is exit 141 without a message, not an OSError
    traceback (BrokenPipeError is an OSError: its handler must come first)."""
    import ovss.cli.models as models_cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(models_cli, "run", broken)
    monkeypatch.setattr("os.dup2", lambda *a: None)  # keep pytest's stdout
    assert main(["models"]) == 141
    assert capsys.readouterr().err == ""
