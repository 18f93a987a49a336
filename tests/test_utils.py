"""atomic_write: files get the permissions the umask allows (not mkstemp's 0600); temp names are ours.
check_regular_file: one line per refusal, the problem and the fix."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from ovss.errors import OvssError
from ovss.utils import (
    atomic_write,
    atomic_write_text,
    check_regular_file,
    is_stale_temp_file,
    remove_stale_temp_files,
    short_path,
)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_honours_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "shared" / "file.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert path.read_text() == "{}\n" and os.listdir(path.parent) == ["file.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = atomic_write_text(tmp_path / "a.txt", "old")

    def boom(tmp):
        tmp.write_text("half")
        assert is_stale_temp_file(tmp) is False  # our own live writer
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_only_stale_ovss_temp_files_are_removed(tmp_path):
    names = {
        ".x.png.999999999-0123abcd.tmp": True,  # pid that cannot exist: writer gone
        f".x.png.{os.getpid()}-0123abcd.tmp": False,  # a live writer
        ".x.png.tmp": False,  # not an ovss name
        "x.999999999-0123abcd.tmp": False,  # not hidden: not an ovss name
    }
    for name in names:
        (tmp_path / name).write_text("x")
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(n for n, stale in names.items() if stale)
    assert remove_stale_temp_files(tmp_path / "missing") == []


def test_atomic_write_keeps_the_umask_mode_when_the_writer_recreates_the_file(tmp_path):
    """safetensors' save_file re-creates its target with 0600; the published file must still be 0644."""
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "w.st", lambda tmp: save_file({"a": torch.zeros(2)}, str(tmp)))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["w.st"]


class _MissingError(OvssError):
    pass


class _RefusedError(OvssError):
    pass


def test_check_regular_file_names_the_problem_and_the_fix_in_one_line(tmp_path, monkeypatch):
    """The one regular-file check (weights, images, class files): each refusal is one line with what
    the file is, the problem and a fix (the caller's, or one per problem); a FIFO is refused without
    opening it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("x")
    os.mkfifo(tmp_path / "pipe")
    assert check_regular_file(Path("a.txt"), "class file", _MissingError, _RefusedError) == Path("a.txt")
    pipe = "pipe is not a regular file (a named pipe); pass a file (save the stream to a file first)"
    here = f"(relative to {tmp_path})"
    nul = "cannot read class file a\\x00b (embedded null byte); pass a real file name"
    cases = [
        ("b.txt", _MissingError, f"b.txt does not exist; check the path {here}"),
        (str(tmp_path / "b.txt"), _MissingError, f"{tmp_path}/b.txt does not exist; check the path"),
        ("a.txt/b", _MissingError, f"a.txt/b does not exist; check the path {here}"),
        (".", _RefusedError, ". is a folder, expected a file; pass the file inside it"),
        ("pipe", _RefusedError, pipe),
        ("/dev/null", _RefusedError, "/dev/null is not a regular file (a device or socket); pass a file"),
        ("a\x00b", _RefusedError, nul),
    ]
    for path, error, message in cases:
        with pytest.raises(error) as info:
            check_regular_file(Path(path), "class file", _MissingError, _RefusedError)
        expected = message if message.startswith("cannot") else f"class file {message}"
        assert type(info.value) is error and str(info.value) == expected
    with pytest.raises(_RefusedError) as info:
        check_regular_file(Path("pipe"), "class file", _MissingError, _RefusedError, "pass a .txt file")
    assert str(info.value) == "class file pipe is not a regular file (a named pipe); pass a .txt file"
    (tmp_path / "two\nlines").mkdir()  # a folder whose name breaks the line: still one line
    with pytest.raises(_RefusedError) as info:
        check_regular_file(Path("two\nlines"), "class file", _MissingError, _RefusedError)
    assert str(info.value) == "class file two\\nlines is a folder, expected a file; pass the file inside it"


def test_short_path_keeps_the_start_and_the_name_of_a_long_path():
    long = Path("/data/" + "x" * 300 + "/classes.txt")
    shown = short_path(long)
    assert len(shown) == 119 and shown.startswith("/data/xx") and shown.endswith("x/classes.txt")
    assert "..." in shown and short_path(Path("/data/a.txt")) == "/data/a.txt"
