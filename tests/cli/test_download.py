"""``ovss download``: built-in names, typos before any download, damaged converted files, --force."""

from __future__ import annotations

import pytest

from ovss.cli.main import main
from tests.conftest import one_line_error


@pytest.fixture
def calls(monkeypatch):
    """Record fetch and convert instead of touching the network (what the command asks for, in order)."""
    import ovss.weights.cache
    import ovss.weights.resolve

    seen: list[tuple] = []

    def fetch(spec):
        seen.append(("fetch", spec.name))
        return ovss.weights.resolve.Fetched("SRC", "0" * 64)

    def convert(spec, source, target, sha256=None):
        assert sha256 == "0" * 64  # the digest taken while fetching: the file is not hashed again
        seen.append(("convert", source, target))

    monkeypatch.setattr(ovss.weights.resolve, "fetch_source", fetch)
    monkeypatch.setattr(ovss.weights.cache, "convert_checkpoint", convert)
    return seen


def test_built_in_random_weights_need_no_download(home, calls, capsys):
    assert main(["download", "test-san-tiny", "test-sed-tiny"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "test-san-tiny: built in (random weights), nothing to download",
        "test-sed-tiny: built in (random weights), nothing to download",
    ]
    assert calls == []


def test_a_typo_fails_before_anything_is_downloaded(home, calls, capsys):
    assert main(["download", "san-vit-b16", "san-vit-b61"]) == 1
    err = one_line_error(capsys)
    assert "san-vit-b61" in err and calls == []


def test_a_damaged_converted_file_is_converted_again(home, calls, capsys):
    from ovss.weights.resolve import converted_path

    target = converted_path("san-vit-b16")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"not a safetensors file")
    assert main(["download", "san-vit-b16"]) == 0
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith("ovss: san-vit-b16: the converted file is damaged (")
    assert line.endswith("); converting again")
    assert calls == [("fetch", "san-vit-b16"), ("convert", "SRC", target)]
    assert captured.out == f"san-vit-b16: {target}\n"


def test_force_converts_without_checking(home, calls, capsys):
    from ovss.weights.resolve import converted_path

    target = converted_path("san-vit-b16")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"anything")
    assert main(["download", "san-vit-b16", "--force"]) == 0
    assert capsys.readouterr().err == ""  # not even opened
    assert calls == [("fetch", "san-vit-b16"), ("convert", "SRC", target)]
