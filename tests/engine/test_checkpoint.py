"""Checkpoint files and the RNG state round trip."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from ovss.engine import checkpoint as ckpt
from ovss.errors import (
    CheckpointMismatchError,
)


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draws()
    path = ckpt.save_checkpoint(tmp_path / "iter_0000001.pt", {
        "model": {}, "optimizer": {}, "iteration": 1, "rng": [ckpt.rng_state()], "config": "{}",
    })
    expected = _draws()
    _draws()
    ckpt.set_rng_state(ckpt.load_checkpoint(path)["rng"][0])
    assert _draws() == expected


def test_latest_prune_and_temp_files_ignored(tmp_path):
    for it in (5, 10, 15):
        ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, it), {"iteration": it})
    (tmp_path / ".iter_0000020.pt.abc.tmp").write_bytes(b"half written")  # a kill during a save
    assert ckpt.latest_checkpoint(tmp_path).name == "iter_0000015.pt"
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [it for it, _ in ckpt.list_checkpoints(tmp_path)] == [10, 15]
    ckpt.prune_checkpoints(tmp_path, keep=0)
    assert len(ckpt.list_checkpoints(tmp_path)) == 2
    assert ckpt.latest_checkpoint(tmp_path / "missing") is None


def test_load_rejects_corrupt_or_foreign_files(tmp_path):
    bad = tmp_path / "iter_0000001.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="cannot read training checkpoint"):
        ckpt.load_checkpoint(bad)
    torch.save({"model": {}}, bad)
    with pytest.raises(CheckpointMismatchError, match="not an ovss training checkpoint"):
        ckpt.load_checkpoint(bad)


def test_a_full_disk_during_a_checkpoint_is_enospc_with_no_temp_file(tmp_path, monkeypatch):
    """torch.save on a full disk raises RuntimeError ("unexpected pos 128 vs 0"): ovss train printed
    a traceback. It is now OSError(ENOSPC) naming the checkpoint, and the temp file is gone."""
    import errno
    import shutil

    import ovss.engine.checkpoint as ckpt

    def full_disk(state, path):
        with open(path, "wb") as f:
            f.write(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    target = tmp_path / "iter_0000002.pt"
    with pytest.raises(OSError) as info:
        ckpt.save_checkpoint(target, {"a": 1})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert os.listdir(tmp_path) == []
