"""A run killed with SIGKILL and resumed from its last checkpoint continues exactly.

Three ``ovss train`` subprocesses on the tiny SAN (the family with the most randomness: Hungarian
matching and importance sampling draw random points every step; one DataLoader worker process):

1. the reference, uninterrupted;
2. the same run, killed (SIGKILL) right after it reports its second checkpoint;
3. ``--resume`` of the killed run.

The losses logged by 2+3 for every iteration must equal the reference's, and so must the final
weights (bitwise on one CPU thread; the bar is 1e-7).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ovss.engine.logging import read_metrics
from ovss.engine.recipes import load_config

from ._synthetic import make_shapes

ITERATIONS, PERIOD = 30, 5
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _command(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ovss.cli.main", "train", "--config", str(config), "--out", str(out),
            *extra]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    classes = make_shapes(tmp_path / "data", count=6, size=64)
    cfg = load_config("tiny-san").override(
        f"data.root={json.dumps(str(tmp_path / 'data'))}", f"data.classes={json.dumps(str(classes))}",
        f"solver.iterations={ITERATIONS}", f"checkpoint_period={PERIOD}", "log_period=1", "workers=1",
        "eval.period=0", "keep_checkpoints=2",
    )
    config = tmp_path / "config.json"
    cfg.to_json(config)

    ref = tmp_path / "reference"
    subprocess.run(_command(config, ref), env=ENV, check=True, capture_output=True, timeout=300)

    run = tmp_path / "interrupted"
    proc = subprocess.Popen(_command(config, run), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    killed_after = None
    for line in proc.stdout:
        if line.startswith("saved checkpoint") and f"(iteration {2 * PERIOD})" in line:
            proc.send_signal(signal.SIGKILL)
            killed_after = 2 * PERIOD
            break
    proc.wait(timeout=60)
    proc.stdout.close()
    assert killed_after is not None and proc.returncode == -signal.SIGKILL
    assert not (run / "model_final.safetensors").exists()  # it really died mid-run
    logged = max(e["iteration"] for e in read_metrics(run / "metrics.jsonl"))
    assert killed_after <= logged < ITERATIONS

    subprocess.run(_command(config, run, "--resume"), env=ENV, check=True, capture_output=True, timeout=300)

    expected = read_metrics(ref / "metrics.jsonl")
    got = read_metrics(run / "metrics.jsonl")
    assert [e["iteration"] for e in got] == list(range(1, ITERATIONS + 1))  # no gap, no duplicate
    for a, b in zip(expected, got):
        for key in ("loss", "loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"):
            assert b[key] == pytest.approx(a[key], rel=1e-7, abs=1e-7), (a["iteration"], key)
    from safetensors.torch import load_file

    final_ref = load_file(str(ref / "model_final.safetensors"))
    final_run = load_file(str(run / "model_final.safetensors"))
    assert final_ref.keys() == final_run.keys()
    assert max(float((final_ref[k] - final_run[k]).abs().max()) for k in final_ref) <= 1e-7
    start = torch.load(run / "checkpoints" / f"iter_{ITERATIONS:07d}.pt", weights_only=True)
    assert start["iteration"] == ITERATIONS and start["data_position"] == ITERATIONS * cfg.solver.batch_size
