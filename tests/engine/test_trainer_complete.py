"""``ovss train --resume`` on a run that has finished: it says so and changes nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ovss.cli.main import main

from ._synthetic import make_shapes


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, count=4, size=64)
    return root


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--config", "tiny-san", "--out", str(out), "--set",
        f"data.root={json.dumps(str(data))}", f"data.classes={json.dumps(str(data / 'classes.txt'))}",
        "solver.iterations=3", "checkpoint_period=2", "log_period=1", "eval.period=0", "keep_checkpoints=0",
        "tensorboard=false", "workers=0", *extra,
    ]


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_of_a_finished_run_changes_nothing(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(data, out)) == 0
    before = _snapshot(out)
    assert "model_final.safetensors" in before and "checkpoints/iter_0000003.pt" in " ".join(before)
    capsys.readouterr()
    assert main([*_args(data, out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert f"the run in {out} is already complete (3 of 3 iterations): nothing to do" in printed
    assert "iterations 4..3" not in printed and "wrote" not in printed
    assert _snapshot(out) == before  # every file untouched: same bytes, same mtimes


def test_resume_after_the_last_checkpoint_writes_only_the_missing_final_model(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(data, out)) == 0
    final = out / "model_final.safetensors"
    trained = load_file(str(final))
    final.unlink()  # killed between the last checkpoint and the export
    capsys.readouterr()
    assert main([*_args(data, out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "all 3 iterations done, writing the final model" in printed and "iterations 4..3" not in printed
    again = load_file(str(final))  # the same weights (the header's key order may differ)
    assert again.keys() == trained.keys() and all(torch.equal(again[k], trained[k]) for k in trained)
