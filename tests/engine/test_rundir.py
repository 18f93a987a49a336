"""``ovss train`` run folders: no silent mixing of two runs, no junk left by kills, clear data errors.

Tiny SAN runs of a few iterations on a synthetic shapes dataset, through the real command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovss.cli.main import main
from ovss.engine.logging import read_metrics

from ._synthetic import make_shapes

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, count=4, size=64)
    return root


def _args(data: Path, out: Path, iterations: int = 4, *extra: str, period: int = 2) -> list[str]:
    return [
        "train", "--config", "tiny-san", "--out", str(out), "--set",
        f"data.root={json.dumps(str(data))}", f"data.classes={json.dumps(str(data / 'classes.txt'))}",
        f"solver.iterations={iterations}", f"checkpoint_period={period}", "log_period=1", "eval.period=0",
        "keep_checkpoints=0", "tensorboard=false", *extra,
    ]


def _checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_a_new_run_refuses_a_folder_holding_an_earlier_run(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(data, out, 4)) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()

    assert main(_args(data, out, 4)) == 1  # same command again, without --resume
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith(f"ovss: error: --out {out} is not empty (checkpoints, config.json,")
    assert "pass --resume to continue that run, --overwrite to replace it" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing touched

    # --overwrite: a 3-iteration run replaces the 4-iteration one; nothing of the old one survives
    assert main([*_args(data, out, 3, period=3), "--overwrite"]) == 0
    assert "removed the previous run in" in capsys.readouterr().out
    assert _checkpoints(out) == ["iter_0000003.pt"]  # old iter_2 / iter_4 gone
    assert [e["iteration"] for e in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]

    # --resume names the checkpoint it continues; the metrics read as one run
    assert main([*_args(data, out, 5, period=3), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert f"resuming from {out / 'checkpoints' / 'iter_0000003.pt'} (iteration 3 of 5)" in printed
    assert [e["iteration"] for e in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5]

    with pytest.raises(SystemExit) as exit_info:  # argparse: not together
        main([*_args(data, out, 5), "--resume", "--overwrite"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_start_line_and_progress_with_eta(data, tmp_path, capsys):
    assert main(_args(data, tmp_path / "run", 2, period=2)) == 0
    out = capsys.readouterr().out
    assert (f"training tiny-san: 4 images ({data}), 4 classes (background, red square, green disc, blue "
            "bar); device cpu, 1 process(es), fp32, 0 data worker(s); iterations 1..2 x batch 4;") in out
    lines = [line for line in out.splitlines() if line.startswith("iter 2/2: ")]
    assert len(lines) == 1 and lines[0].split()[-2] == "eta" and lines[0].endswith("0:00:00")


def test_stale_temp_files_of_killed_writes_are_removed_on_start_and_resume(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(data, out, 2, period=2)) == 0
    dead = "999999999-0123abcd"  # atomic_write's "<pid>-<hex>" of a writer that no longer runs
    ours = [out / "checkpoints" / f".iter_0000004.pt.{dead}.tmp", out / f".metrics.jsonl.{dead}.tmp",
            out / f".model_final.safetensors.{dead}.tmp", out / f".config.json.{dead}.tmp"]
    others = [out / "checkpoints" / "notes.tmp", out / ".mydata.tmp", out / "checkpoints" / ".iter_x.pt.tmp",
              out / "checkpoints" / f".iter_0000005.pt.{os.getpid()}-0123abcd.tmp"]  # a live writer's
    for path in ours + others:
        path.write_bytes(b"\0" * 100)
    capsys.readouterr()
    assert main([*_args(data, out, 3, period=3), "--resume"]) == 0
    assert "removed the stale temporary files in" in capsys.readouterr().out
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in others)  # not ovss's own naming, or its writer runs: left alone


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_kill_9_during_training_then_resume_leaves_no_temp_files(data, tmp_path):
    """Bounded loop: kill -9 at a random moment after the first checkpoint, resume, twice; then finish."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "ovss.cli.main", *_args(data, out, 24, period=1)]
    rng = np.random.default_rng(0)
    for attempt in range(2):
        proc = subprocess.Popen(command + (["--resume"] if attempt else []), env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            if line.startswith("saved checkpoint"):
                time.sleep(float(rng.uniform(0.0, 0.3)))
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=120)
        proc.stdout.close()
    done = subprocess.run([*command, "--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not [p.name for p in out.rglob("*.tmp")]
    assert [e["iteration"] for e in read_metrics(out / "metrics.jsonl")] == list(range(1, 25))


@pytest.mark.parametrize("workers", [0, 1])
def test_label_values_outside_the_class_list_name_the_file(data, tmp_path, capsys, workers):
    bad = tmp_path / "data"
    (bad / "images").mkdir(parents=True)
    (bad / "labels").mkdir()
    for image in sorted((data / "images").iterdir()):
        (bad / "images" / image.name).write_bytes(image.read_bytes())
        label = np.array(Image.open(data / "labels" / image.name))
        if image.name == "img002.png":
            label[:3, :3] = 7
            label[5, 5] = 12
        Image.fromarray(label).save(bad / "labels" / image.name)
    (bad / "classes.txt").write_text((data / "classes.txt").read_text())
    code = main(_args(bad, tmp_path / "run", 8, f"workers={workers}"))
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err, err
    assert err == (
        f"ovss: error: label file {bad / 'labels' / 'img002.png'} holds values 7, 12, which are not class "
        "ids 0..3 (the class list has 4 names) nor the ignore value 255; fix the labels or the class list"
    )


def test_fp16_on_the_cpu_trains_in_fp32_with_a_warning_and_workers_are_capped(data, tmp_path, capsys):
    from ovss.engine.trainer import _workers

    assert main(_args(data, tmp_path / "run", 1, "precision=\"fp16\"", "workers=512", period=1)) == 0
    captured = capsys.readouterr()
    assert "ovss: warning: precision fp16 on the CPU is very slow (no fp16 kernels); training in fp32" in (
        captured.err
    )
    assert ".py:" not in captured.err  # one line, no file:line of a Python warning
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert f", fp32, {cpus} data worker(s);" in captured.out
    assert _workers(512, 1) == cpus and _workers(1, 1) == 1 and _workers(512, 2 * cpus) == 1


def test_a_batch_the_ranks_cannot_split_fails_before_overwrite_deletes_anything(tmp_path):
    from ovss.engine.recipes import load_config
    from ovss.engine.trainer import train
    from ovss.errors import ConfigError

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"iteration": 1, "loss": 1.0}\n')  # an earlier run's file
    cfg = load_config("tiny-san").override("solver.batch_size=3", "solver.accumulation=2")
    with pytest.raises(ConfigError, match="not divisible by world size 1 x accumulation 2"):
        train(cfg, out, overwrite=True)
    assert (out / "metrics.jsonl").read_text() == '{"iteration": 1, "loss": 1.0}\n'
