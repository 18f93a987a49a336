"""ovss.distributed: one setup/teardown for train, eval and segment; real 2-process torchrun runs.

The runs use gloo on the CPU through ``tests._subprocess.torchrun`` (no fixed port). A process that
exits with a live gloo group can abort in the interpreter's shutdown ("terminate called without an
active exception", exit code -6) after its work is done, so every run here must exit 0.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ovss.distributed import distributed_session, rank_and_world, teardown
from tests._subprocess import child_env, torchrun
from tests.conftest import noise_photo

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")


def test_without_a_launcher_the_session_is_one_process():
    with distributed_session("cpu") as info:
        assert (info.rank, info.world_size, info.is_main) == (0, 1, True)
        assert rank_and_world() == (0, 1)
        assert not torch.distributed.is_initialized()
    teardown(wait_for_all=True)  # nothing to leave: a no-op


class FakeGroup:
    """Stands in for ``torch.distributed`` inside ovss.distributed: a 2-rank group in which this process
    is rank 0 and every collective returns its own values. Records joins, barriers and leaves."""

    class ReduceOp:
        SUM = "sum"

    def __init__(self) -> None:
        self.live, self.calls = False, []

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.live

    def init_process_group(self, **kwargs) -> None:
        self.live = True
        self.calls.append("init")

    def destroy_process_group(self) -> None:
        self.live = False
        self.calls.append("destroy")

    def get_world_size(self) -> int:
        return 2

    def get_rank(self) -> int:
        return 0

    def get_backend(self) -> str:
        return "gloo"

    def barrier(self) -> None:
        self.calls.append("barrier")

    def all_reduce(self, tensor, op=None) -> None:
        pass

    def all_gather_object(self, out: list, obj) -> None:
        out[:] = [obj] * len(out)

    def broadcast_object_list(self, box: list, src: int = 0) -> None:
        pass  # rank 0 keeps its own objects


@pytest.fixture
def fake_group(monkeypatch) -> FakeGroup:
    import ovss.distributed

    group = FakeGroup()
    monkeypatch.setattr(ovss.distributed, "dist", group)
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    return group


@pytest.mark.parametrize("command", ["eval", "eval-error", "segment", "segment-error", "train-error"])
def test_every_command_leaves_the_group_it_joined(command, fake_group, tmp_path, capsys):
    """eval never left its group (the -6 exits); every command now does, after a barrier when it
    succeeded, at once after an error (a barrier could wait for a failed rank)."""
    from ovss.cli.main import main
    from tests.engine._synthetic import make_shapes

    failing = command.endswith("error")
    data = tmp_path / "data"
    classes = tmp_path / "missing.txt" if failing else make_shapes(data, count=2, size=32)
    argv = {
        "eval": ["eval", "--folder", str(data), "--classes", str(classes)],
        "segment": ["segment", str(data), "--classes", str(classes), "--dtype", "fp32"],
        "train": ["train", "--config", "tiny-san", "--resume"],  # no checkpoint to resume: an error
    }[command.removesuffix("-error")]
    if command != "train-error":
        argv += ["--model", "test-san-tiny"]
    if command == "segment":
        argv[1] = str(data / "images")
    (data / "images").mkdir(parents=True, exist_ok=True)
    assert main([*argv, "--out", str(tmp_path / "out")]) == int(failing)
    err = capsys.readouterr().err
    assert ("ovss: error:" in err) == failing, err
    # the teardown's barrier comes last before "destroy"; segment has one more (every rank reads its
    # progress before anyone writes), train one before its resume check
    assert fake_group.calls == {
        "eval": ["init", "barrier", "destroy"], "segment": ["init", "barrier", "barrier", "destroy"],
        "eval-error": ["init", "destroy"], "segment-error": ["init", "destroy"],
        "train-error": ["init", "barrier", "destroy"],
    }[command]
    assert not fake_group.live


@pytest.mark.parametrize("mode", ["ok", "error"])
def test_the_session_always_leaves_the_group_and_only_its_own(tmp_path, mode):
    done = torchrun(["-m", "tests._dist_session_worker", str(tmp_path / "seen"), mode])
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {"inside": True, "sum": 3.0, "nested_keeps_outer": True, "after": False}
    if mode == "error":
        expected["raised"] = True
    for rank in (0, 1):
        assert json.loads((tmp_path / f"seen.{rank}.json").read_text()) == expected


def _outputs(out: Path) -> dict[str, bytes]:
    """Every result file of a segment run (not its progress state) -> bytes."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_segment_two_processes_write_the_files_of_one(tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    for i in range(5):
        noise_photo(images / f"p{i}.png", 24 + 8 * i, 40, seed=i)
    common = ["segment", str(images), "--model", "test-san-tiny", "--classes", "cat; sky, cloud; road",
              "--dtype", "fp32"]  # not auto: bf16 on some CPUs
    one = subprocess.run([sys.executable, "-m", "ovss.cli.main", *common, "--out", str(tmp_path / "one")],
                         env=child_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = torchrun(["-m", "ovss.cli.main", *common, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert "terminate called" not in two.stderr
    assert two.stdout.count(f"wrote 5 result(s) to {tmp_path / 'two'}") == 1  # totals of both ranks, once
    single, sharded = _outputs(tmp_path / "one"), _outputs(tmp_path / "two")
    assert len(single) == 15 and sharded == single  # label, overlay and JSON of each image, same bytes
    logs = sorted(p.name for p in (tmp_path / "two" / ".ovss-segment").glob("done-rank*.jsonl"))
    assert logs == ["done-rank0.jsonl", "done-rank1.jsonl"]


def test_segment_error_under_torchrun_is_one_line_per_rank_and_every_rank_exits(tmp_path):
    photo = noise_photo(tmp_path / "p.png")
    args = ["-m", "ovss.cli.main", "segment", str(photo), "--model", "test-san-tiny", "--classes",
            str(tmp_path / "missing.txt"), "--out", str(tmp_path / "out"), "--dtype", "fp32"]
    done = torchrun(args, timeout=200)  # a rank waiting for a failed peer would hang until the timeout
    assert done.returncode == 1
    assert "terminate called" not in done.stderr
    assert not re.search(r'File ".*ovss[/\\]', done.stderr)  # no ovss traceback (torchrun prints its own)
    errors = [line for line in done.stderr.splitlines() if "ovss: error:" in line]
    # each rank writes its line in one write, so two ranks' lines never merge into one
    assert len(errors) == 2 and all(line.count("ovss: error:") == 1 for line in errors), done.stderr[-3000:]
    assert all("missing.txt" in line for line in errors)
