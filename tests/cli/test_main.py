"""``ovss`` itself (cli/main.py): --version, a closed output pipe, errors on one line."""

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


def test_an_error_naming_a_path_with_a_line_break_is_still_one_line(tmp_path, capsys):
    """A file name may hold a newline; the message shows it as ``\\n`` instead of breaking the line."""
    raw = tmp_path / "raw\ndata"
    assert main(["prepare", "ade150", "--raw", str(raw), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ovss: error: raw data folder ")
    assert f"{tmp_path}/raw\\ndata does not exist" in err


@pytest.mark.parametrize(
    ("argv", "problem", "command"),
    [
        (["segment", "x.jpg", "--classes", "a", "--inference", "no"], "invalid choice: 'no'", "ovss segment"),
        (["export", "--model", "m", "--out", "o", "--inference", "no"], "choice: 'no'", "ovss export"),
        (["segment"], "the following arguments are required", "ovss segment"),
        (["no-such-command"], "invalid choice: 'no-such-command'", "ovss"),
        (["models", "x", "--no-such-flag", "a\nb"], "unrecognized arguments: --no-such-flag a\\nb", "ovss"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_problem_and_the_help(argv, problem, command, capsys):
    """argparse's own error prints the whole usage block above the message; ovss prints one line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"{command}: error: ") and problem in err
    assert err.endswith(f"; see {command} --help\n")
