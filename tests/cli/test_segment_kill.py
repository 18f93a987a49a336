"""``ovss segment`` killed at random points: no temp files left, the re-run finishes the job exactly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ovss.cli.main import main
from ovss.cli.segment import STATE_DIR

REPO = Path(__file__).resolve().parents[2]
CLASSES = "person; bus; car"


def _args(images: list[Path], out: Path) -> list[str]:
    # --dtype fp32: the child processes must resolve the dtype as this process does (tests pin auto to
    # fp32 in-process only), else the re-run meets other settings
    return [
        "segment", *map(str, images), "--model", "test-san-tiny", "--classes", CLASSES, "--out", str(out),
        "--dtype", "fp32",
    ]


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def _done_lines(out: Path) -> int:
    log = out / STATE_DIR / "done-rank0.jsonl"
    return len(log.read_bytes().splitlines()) if log.is_file() else 0


def test_kill_9_then_rerun_leaves_no_junk_and_equals_a_clean_run(tmp_path, fast_model):
    rng = np.random.default_rng(0)
    images = []
    for i in range(12):  # noise photos: large PNG writes, so kills often land inside one
        images.append(tmp_path / "in" / f"p{i}.png")
        images[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(images[-1])
    assert main(_args(images, tmp_path / "clean")) == 0
    clean = _outputs(tmp_path / "clean")

    out = tmp_path / "out"
    path = os.pathsep.join([str(REPO / "src"), str(REPO)])  # this checkout's ovss, not an installed one
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    seed = random.randrange(2**32)
    pick = random.Random(seed)
    kills: list[list[str]] = []
    def landed_mid_write() -> bool:
        return any(name.endswith(".tmp") for names in kills for name in names)

    # Bounded: rounds kill while a temp file is open (round 2 at a random time after an image), until
    # one kill has landed inside a write (a busy machine can let the writer rename first) and
    # three rounds have run, or the run completes.
    for round_ in range(8):
        if round_ >= 3 and landed_mid_write():
            break
        before = _done_lines(out)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cli._segment_fast", *_args(images, out)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if round_ != 2 and out.is_dir() and any(out.glob(".*.tmp")):
                break
            if round_ == 2 and _done_lines(out) > before:
                time.sleep(pick.uniform(0.0, 0.4))
                break
            time.sleep(0.002)
        if proc.poll() is not None:
            break  # finished before the kill: nothing left to interrupt
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(sorted(p.name for p in out.iterdir() if p.is_file()))
    assert kills, "no run was killed"
    assert landed_mid_write(), f"seed {seed}: {kills}"

    assert main(_args(images, out)) == 0
    leftovers = [p.name for p in out.rglob("*.tmp")]
    assert not leftovers, f"seed {seed}: temp files left {leftovers}"
    assert _outputs(out) == clean, f"seed {seed}: resumed outputs differ from a clean run"
