"""bench/gpu_check.sh in its CPU dry run: every step (device line, device tests, bench_segment on every
tiny model, the compile trial) runs and reports; the GPU run itself needs a GPU machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


SCRIPT = str(REPO / "bench" / "gpu_check.sh")
TOOLS = shutil.which("bash") is not None and shutil.which("timeout") is not None


@pytest.mark.skipif(not TOOLS, reason="needs bash and timeout")
def test_dry_run_on_the_cpu_runs_every_step(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    proc = subprocess.run(
        ["bash", SCRIPT, "--device", "cpu", "--dry-run", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1500, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gpu_check: 0 failed step(s)" in proc.stdout
    assert "== deps: ok\n" in proc.stdout  # every dependency imports here: nothing installed
    assert "kind:" in (tmp_path / "device.log").read_text()
    assert " passed" in (tmp_path / "tests.log").read_text()
    rows = [json.loads(line) for line in (tmp_path / "segment.jsonl").read_text().splitlines()]
    runs = ["test-san-tiny", "test-catseg-tiny:inference=whole", "test-catseg-tiny:inference=slide"]
    assert sorted(r["run"] for r in rows) == sorted([*runs, "test-sed-tiny"])
    assert all(r["device"] == "cpu" and r["GFLOP"] > 0 and r["s/img"] > 0 for r in rows)
    compile_log = (tmp_path / "compile.log").read_text()
    assert "torch.compile: " in compile_log and "failed" not in compile_log
    assert "CUDA graph: skipped" in compile_log


def test_unknown_argument_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", SCRIPT, "--gpu"], capture_output=True,
                          text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--gpu" in proc.stderr
