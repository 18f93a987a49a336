"""Read-ahead and write-behind of ``ovss segment``: order, bounded memory, errors, stopping."""

from __future__ import annotations

import json
import threading
import time

import pytest

from ovss.cli.pipeline import WriteBehind, read_ahead


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_read_ahead_keeps_order_hands_errors_over_and_stays_bounded() -> None:
    reads: list[int] = []

    def read(i: int) -> int:
        reads.append(i)
        if i == 3:
            raise ValueError("bad image 3")
        return i * 10

    got = []
    items = read_ahead(range(8), read, depth=2)
    first = next(items)
    time.sleep(0.3)  # give a runaway reader time to run ahead (it must not)
    assert len(reads) <= 1 + 2 + 1  # consumed + queued + the one waiting to be queued
    got.append(first)
    got.extend(items)
    assert [(k, v) for k, v, _ in got] == [(0, 0), (1, 10), (2, 20), (3, None), (4, 40), (5, 50), (6, 60),
                                          (7, 70)]
    assert str(got[3][2]) == "bad image 3" and all(e is None for k, _, e in got if k != 3)
    assert not _threads("ovss-read-ahead")


def test_read_ahead_stops_its_thread_when_the_consumer_stops() -> None:
    items = read_ahead(range(10**6), lambda i: i, depth=2)
    assert next(items)[0] == 0
    items.close()  # e.g. an error or Ctrl-C in the model
    assert not _threads("ovss-read-ahead")


def test_read_ahead_raises_an_error_of_the_keys_themselves() -> None:
    def keys():
        yield 1
        raise KeyboardInterrupt

    items = read_ahead(keys(), lambda i: i)
    assert next(items)[0] == 1
    with pytest.raises(KeyboardInterrupt):
        next(items)


def test_write_behind_runs_jobs_in_order_and_waits_for_them() -> None:
    done: list[int] = []
    with WriteBehind(depth=2) as writer:
        for i in range(20):
            writer.submit(lambda i=i: (time.sleep(0.001), done.append(i)))
    assert done == list(range(20)) and not _threads("ovss-write-behind")


def test_a_job_error_comes_back_to_the_caller_and_stops_the_rest() -> None:
    done: list[int] = []
    release = threading.Event()

    def failing() -> None:
        release.wait(5)
        raise OSError(28, "No space left on device")

    writer = WriteBehind(depth=4)
    writer.submit(failing)
    writer.submit(lambda: done.append(1))  # queued behind the failing job: dropped
    release.set()
    with pytest.raises(OSError, match="No space left"):
        writer.close()
    assert done == [] and not _threads("ovss-write-behind")


def test_cancel_drops_the_waiting_jobs_and_finishes_the_running_one() -> None:
    done: list[int] = []
    started, release = threading.Event(), threading.Event()

    def running() -> None:
        started.set()
        release.wait(5)
        done.append(0)

    with pytest.raises(KeyboardInterrupt), WriteBehind(depth=4) as writer:
        writer.submit(running)
        writer.submit(lambda: done.append(1))
        started.wait(5)
        threading.Timer(0.05, release.set).start()
        raise KeyboardInterrupt  # Ctrl-C in the model: the running write completes, the rest go
    assert done == [0] and not _threads("ovss-write-behind")


@pytest.mark.usefixtures("fast_model")
def test_ctrl_c_mid_folder_keeps_the_done_images_and_a_rerun_finishes(tmp_path, monkeypatch) -> None:
    from ovss.api.segmenter import Segmenter
    from ovss.cli.main import main
    from ovss.cli.segment import STATE_DIR
    from tests.conftest import noise_photo

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        noise_photo(folder / f"p{i}.png", 24, 32, seed=i)
    out = tmp_path / "o"
    args = ["segment", str(folder), "--model", "test-san-tiny", "--classes", "a; b", "--out", str(out)]
    real, calls = Segmenter._finish, [0]

    def interrupted(self, *a, **k):
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt
        yield from real(self, *a, **k)

    monkeypatch.setattr(Segmenter, "_finish", interrupted)
    assert main(args) == 130  # "ovss: interrupted"
    assert not _threads("ovss-read-ahead") and not _threads("ovss-write-behind")
    log = (tmp_path / "o" / STATE_DIR / "done-rank0.jsonl").read_text().splitlines()
    logged = [json.loads(line)["name"] for line in log]
    # in order; the queued writes after the interrupt may be dropped (how many: timing), never reordered
    assert logged == ["p0", "p1", "p2"][: len(logged)]
    assert all((tmp_path / "o" / f"{name}_label.png").is_file() for name in logged)
    assert not list((tmp_path / "o").glob("p[34]*"))  # never computed: nothing written
    monkeypatch.setattr(Segmenter, "_finish", real)
    assert main(args) == 0
    log = (tmp_path / "o" / STATE_DIR / "done-rank0.jsonl").read_text().splitlines()
    assert [json.loads(line)["name"] for line in log] == ["p0", "p1", "p2", "p3", "p4"]
