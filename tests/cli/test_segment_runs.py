"""``ovss segment`` owns its --out: one run at a time, settings recorded, outputs re-checked on resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ovss.cli.main import main
from ovss.cli.segment import STATE_DIR
from ovss.cli.segment_runs import OutputLock, describe_changes
from tests.conftest import noise_photo

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fast(fast_model):
    """Every in-process run here uses test-san-tiny at a 64-pixel short side."""


def _args(images, out: Path, classes: str = "person; bus; car", *extra: str) -> list[str]:
    return [
        "segment",
        *map(str, images),
        "--model",
        "test-san-tiny",
        "--classes",
        classes,
        "--out",
        str(out),
        "--dtype",
        "fp32",
        *extra,
    ]


def _child(args: list[str], **env: str) -> subprocess.Popen:
    environ = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tests.cli._segment_fast", *args],
        cwd=REPO,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first run never took --out"
        time.sleep(0.01)


def _photos(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [noise_photo(folder / f"p{i}.png", 24, 32 + i, seed=i) for i in range(n)]


def _vocabularies(out: Path) -> set[str]:
    return {json.dumps(json.loads(p.read_text())["vocabulary"]) for p in out.glob("*.json")}


def test_a_second_concurrent_run_stops_at_once_and_outputs_never_mix(tmp_path):
    images = _photos(tmp_path / "in", 4)
    out, gate = tmp_path / "out", tmp_path / "gate"
    first = _child(_args(images, out), OVSS_TEST_GATE=str(gate))
    _wait_for(Path(f"{gate}.waiting"), first)  # the first run holds --out and waits at the gate
    second = _child(_args(images, out, "a; b"))
    _, err = second.communicate(timeout=300)
    assert second.returncode == 1
    assert err.strip().splitlines() == [
        f"ovss: error: --out {out} is in use by another ovss segment run (pid {first.pid} on "
        f"{os.uname().nodename}, started "
        + err.split(", started ")[1].split(")")[0]
        + "); wait for it to end, "
        "add --wait to start when it ends, or choose another --out"
    ]
    gate.write_text("go")
    stdout, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert "wrote 4 result(s)" in stdout
    assert len(list(out.glob("*_label.png"))) == 4
    assert _vocabularies(out) == {json.dumps([["person"], ["bus"], ["car"]])}  # nothing of the second run


def test_wait_starts_when_the_holder_ends_and_the_lock_never_outlives_a_kill(tmp_path):
    images = _photos(tmp_path / "in", 1)
    out = tmp_path / "out"
    lock = OutputLock(out / STATE_DIR).acquire(out)  # another run holds --out
    waiting = _child(_args(images, out, "person; bus; car", "--wait"))
    assert waiting.stderr is not None
    line = waiting.stderr.readline()  # blocks until the child reports that it waits
    assert line.startswith(f"ovss: waiting for the run using --out {out} to end (pid {os.getpid()} on ")
    assert waiting.poll() is None and not list(out.glob("*.png"))
    lock.release()
    stdout, _ = waiting.communicate(timeout=300)
    assert waiting.returncode == 0 and "wrote 1 result(s)" in stdout
    # a killed holder leaves no stale lock: the kernel releases it with the process
    gate = tmp_path / "gate"
    holder = _child(_args(images, tmp_path / "out2"), OVSS_TEST_GATE=str(gate))
    _wait_for(Path(f"{gate}.waiting"), holder)
    holder.kill()
    holder.communicate()
    assert main(_args(images, tmp_path / "out2")) == 0


def test_a_rerun_with_other_settings_names_the_change_and_overwrite_replaces_cleanly(tmp_path, capsys):
    images = _photos(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert main(_args(images[:2], out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    recorded = json.loads((out / STATE_DIR / "settings.json").read_text())["settings"]
    assert recorded["classes"] == ["person", "bus", "car"] and recorded["dtype"] == "fp32"
    assert recorded["model"] == "test-san-tiny" and recorded["digest"] and recorded["tta"] == "False"
    capsys.readouterr()
    assert main(_args(images[1:], out, "person; bus; car", "--tta")) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ovss: error: --out {out} holds results made with other settings (options: ")
    assert "; tta: 'False' -> 'True'); " in err
    assert err.endswith(
        "re-run with the same settings to resume, add --overwrite to replace those results, "
        "or choose another --out"
    )
    assert "\n" not in err and {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # --overwrite: every earlier output goes (p0 too, which this run does not redo), then the new ones
    assert main(_args(images[1:], out, "cat; dog", "--overwrite")) == 0
    assert "deleted the results of other settings" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "p1.json",
        "p1_label.png",
        "p1_overlay.png",
        "p2.json",
        "p2_label.png",
        "p2_overlay.png",
    ]
    assert _vocabularies(out) == {json.dumps([["cat"], ["dog"]])}
    # fewer or more outputs with the same settings are no conflict: only files are added
    assert main(_args(images[1:], out, "cat; dog", "--outputs", "label")) == 0
    assert "2 of 2 image(s) already done" in capsys.readouterr().out


def test_describe_changes_names_each_setting_that_differs():
    old = {"classes": ["a", "b"], "dtype": "fp32", "options": {"inference": "whole"}, "outputs": ["label"]}
    new = {
        "classes": ["a", "c", "d"],
        "dtype": "bf16",
        "options": {"inference": "slide"},
        "outputs": ["json"],
    }
    assert describe_changes(old, new) == (
        "classes: 2 -> 3 items, #2 'b' -> 'c'; dtype: 'fp32' -> 'bf16'; "
        'options: {"inference": "whole"} -> {"inference": "slide"}'
    )
    assert describe_changes(old, {**old, "min_score": 0.3}) == "min_score: '(not recorded)' -> 0.3"


def test_resume_redoes_truncated_altered_or_missing_outputs(tmp_path, capsys):
    images = _photos(tmp_path / "in", 4)
    out = tmp_path / "out"
    assert main(_args(images, out)) == 0
    clean = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    record = json.loads((out / STATE_DIR / "done-rank0.jsonl").read_text().splitlines()[0])
    assert record["files"]["label"] == [
        {"path": "p0_label.png", "size": len(clean["p0_label.png"]), "sha256": _sha(clean["p0_label.png"])}
    ]
    (out / "p0_label.png").write_bytes(clean["p0_label.png"][:-20])  # truncated after the run
    altered = bytearray(clean["p1_overlay.png"])
    altered[-30] ^= 0xFF  # same size, other content
    (out / "p1_overlay.png").write_bytes(bytes(altered))
    (out / "p2.json").unlink()
    capsys.readouterr()
    assert main(_args(images, out)) == 0
    printed = capsys.readouterr().out
    assert "1 of 4 image(s) already done" in printed
    assert "3 image(s) done earlier have outputs that are missing, truncated or changed: redone" in printed
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == clean


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_other_settings_are_free_while_no_image_is_done(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    out = tmp_path / "out"
    assert main(_args([bad], out)) == 1  # nothing done: settings recorded, no results
    assert main(_args(_photos(tmp_path / "in", 1), out, "cat; dog")) == 0
    assert _vocabularies(out) == {json.dumps([["cat"], ["dog"]])}
    (out / STATE_DIR / "settings.json").write_text("{not json")
    capsys.readouterr()
    assert main(_args(_photos(tmp_path / "in", 1), out, "cat; dog")) == 1
    assert "settings.json is unreadable (" in capsys.readouterr().err
    assert main(_args(_photos(tmp_path / "in", 1), out, "cat; dog", "--overwrite")) == 0
    (out / STATE_DIR / "lock").unlink()
    (out / STATE_DIR / "lock").mkdir()  # a lock file that cannot be opened: one line
    capsys.readouterr()
    assert main(_args(_photos(tmp_path / "in", 1), out, "cat; dog")) == 1
    assert capsys.readouterr().err.strip() == (
        f"ovss: error: cannot open the lock file {out / STATE_DIR / 'lock'}: Is a directory; move it away or "
        "choose another --out"
    )


def test_torchrun_ranks_share_the_lock_of_their_run(tmp_path):
    """Rank 0 holds --out for the whole run: its ranks never lock each other out, and when another
    run holds --out every rank stops with the one line (none waits forever for rank 0)."""
    images = _photos(tmp_path / "in", 3)
    out = tmp_path / "out"
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = [sys.executable, *torchrun, "-m", "tests.cli._segment_fast", *_args(images, out)]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
    }
    lock = OutputLock(out / STATE_DIR).acquire(out)
    try:
        held = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    finally:
        lock.release()
    assert held.returncode != 0
    lines = [line for line in held.stderr.splitlines() if line.startswith("ovss: error: ")]
    assert len(lines) == 2 and all(
        f"--out {out} is in use by another ovss segment run (pid {os.getpid()}" in x for x in lines
    )
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wrote 3 result(s)" in done.stdout
    assert sorted(p.name for p in out.glob("*_label.png")) == ["p0_label.png", "p1_label.png", "p2_label.png"]


def test_a_run_that_fails_before_recording_its_settings_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "new" / "out"
    photo = _photos(tmp_path / "in", 1)[0]
    assert main(_args([photo], out, "a; b", "--weights", str(tmp_path / "missing.safetensors"))) == 1
    assert "missing.safetensors does not exist" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # no lock file, no folder left by the failed command
