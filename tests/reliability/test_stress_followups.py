"""Defects found by the repeated stress run (issue 10), one regression test each."""

from __future__ import annotations

import os
import stat

import torch

from ovss.utils import atomic_write


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
