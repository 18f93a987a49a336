"""atomic_write: files get the permissions the umask allows (not mkstemp's 0600); temp names are ours."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from ovss.utils import atomic_write, atomic_write_text, is_stale_temp_file, remove_stale_temp_files


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
