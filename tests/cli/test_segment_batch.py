"""``ovss segment`` as a batch job: unique names, bad images, resume, own outputs, shards, temp files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from ovss.cli.main import main
from ovss.cli.segment import STATE_DIR, plan_names
from ovss.data.io import read_label
from tests.conftest import noise_photo
from tests.data.test_io_inputs import png_header_only

CLASSES = "person; bus; car"


@pytest.fixture(autouse=True)
def _fast(fast_model):
    """Every test here runs test-san-tiny at a 64-pixel short side."""


def photo(path: Path, h: int, w: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return noise_photo(path, h, w, seed)


def segment(*args, out: Path) -> int:
    return main(
        ["segment", *map(str, args), "--model", "test-san-tiny", "--classes", CLASSES, "--out", str(out)]
    )


def outputs(out: Path) -> dict[str, bytes]:
    """Every output file (not the state folder) -> its bytes."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_plan_names_are_unique_against_every_name_of_the_run():
    sources = ["/a/x.jpg", "/b/x.jpg", "/c/x_1.jpg", "/d/X.png", "/e/y.jpg"]
    assert plan_names(sources, {}) == ["x", "x_2", "x_1", "X_3", "y"]
    # names of earlier runs into the same --out are kept; new sources avoid them
    assert plan_names(["/e/y.jpg", "/f/y.jpg", "/a/x.jpg"], {"/f/y.jpg": "y", "/z/x.jpg": "x"}) == [
        "y_1",
        "y",
        "x_1",
    ]
    # a partly done run plans the same names as a fresh one (the kill-and-resume case)
    full = plan_names(sources, {})
    assert plan_names(sources, {sources[3]: full[3], sources[1]: full[1]}) == full


def test_duplicate_stems_never_overwrite_each_other(tmp_path, capsys):
    a, b, c = (
        photo(tmp_path / "a/x.jpg", 20, 30),
        photo(tmp_path / "b/x.jpg", 21, 31),
        photo(tmp_path / "c/x_1.jpg", 22, 32),
    )
    out = tmp_path / "out"
    assert segment(a, b, c, out=out) == 0
    assert sorted(outputs(out)) == sorted(
        f"{n}{s}" for n in ("x", "x_1", "x_2") for s in (".json", "_label.png", "_overlay.png")
    )
    for name, source in [("x", a), ("x_2", b), ("x_1", c)]:
        record = json.loads((out / f"{name}.json").read_text())
        assert record["source"] == str(source.resolve())
        assert record["vocabulary"] == [["person"], ["bus"], ["car"]]
        with Image.open(source) as image:
            assert read_label(out / f"{name}_label.png").shape == (image.height, image.width)
    assert "wrote 3 result(s)" in capsys.readouterr().out


@pytest.mark.parametrize("batch_size", [1, 2])
def test_bad_images_are_listed_at_the_end_and_every_good_result_is_kept(tmp_path, capsys, batch_size):
    good = [photo(tmp_path / f"in/good{i}.png", 24, 32, seed=i) for i in range(3)]
    truncated = tmp_path / "in/truncated.jpg"
    truncated.write_bytes(photo(tmp_path / "full.jpg", 240, 320).read_bytes()[:3000])  # cut in the scan data
    fifo = tmp_path / "in/pipe.png"
    os.mkfifo(fifo)
    bomb = png_header_only(tmp_path / "in/bomb.png", 30000, 20000)
    thin = photo(tmp_path / "in/thin.png", 1, 6000)
    inputs = [good[0], truncated, fifo, good[1], bomb, thin, good[2]]
    assert (
        main(
            [
                "segment",
                *map(str, inputs),
                "--model",
                "test-san-tiny",
                "--classes",
                CLASSES,
                "--out",
                str(tmp_path / "out"),
                "--batch-size",
                str(batch_size),
            ]
        )
        == 1
    )
    assert sorted(p.name for p in (tmp_path / "out").glob("*_label.png")) == [
        "good0_label.png",
        "good1_label.png",
        "good2_label.png",
    ]
    captured = capsys.readouterr()
    failed = [line for line in captured.err.splitlines() if line.startswith("ovss: failed: ")]
    assert [line.split(": ")[2] for line in failed] == [str(truncated), str(fifo), str(bomb), str(thin)]
    assert "named pipe" in failed[1] and "--max-pixels" in failed[2] and "too elongated" in failed[3]
    assert captured.err.strip().splitlines()[-1] == (
        "ovss: error: 4 of 7 image(s) could not be segmented (listed above); fix or remove them and re-run "
        "the same command to finish"
    )
    assert "Traceback" not in captured.err and "wrote 3 result(s)" in captured.out


def test_rerun_skips_complete_images_and_completes_partial_ones(tmp_path, capsys):
    images = [photo(tmp_path / f"in/p{i}.png", 24 + i, 32, seed=i) for i in range(3)]
    out = tmp_path / "out"
    assert segment(*images, out=out) == 0
    first = outputs(out)
    (out / "p0_overlay.png").unlink()  # as a kill between two outputs of an image leaves it
    (out / "p1.json").unlink()
    images.append(photo(tmp_path / "in/p3.png", 20, 20, seed=3))
    capsys.readouterr()
    assert segment(*images, out=out) == 0
    printed = capsys.readouterr().out
    assert (
        "1 of 4 image(s) already done" in printed
        and "wrote 3 result(s)" in printed
        and "(1 already done)" in printed
    )
    assert f"{images[2]}:" not in printed  # the complete image was not segmented again
    again = outputs(out)
    assert {k: again[k] for k in first} == first  # bit for bit what the first run wrote
    assert {"p3_label.png", "p3_overlay.png", "p3.json"} <= set(again)
    # --overwrite recomputes everything; another vocabulary stops, unless --overwrite replaces the results
    assert segment(*images, "--overwrite", out=out) == 0
    assert "already done" not in capsys.readouterr().out
    other = ["segment", *map(str, images), "--model", "test-san-tiny", "--classes", "a; b", "--out", str(out)]
    assert main(other) == 1
    assert "other settings (classes: 3 -> 2 items, #1 'person' -> 'a')" in capsys.readouterr().err
    assert outputs(out) == again
    assert main([*other, "--overwrite"]) == 0
    assert "already done" not in capsys.readouterr().out
    assert json.loads((out / "p0.json").read_text())["vocabulary"] == [["a"], ["b"]]
    assert sorted(outputs(out)) == sorted(again)


def test_compact_outputs_then_full_outputs(tmp_path, capsys):
    images = [photo(tmp_path / f"in/p{i}.png", 24, 32, seed=i) for i in range(2)]
    out = tmp_path / "out"
    assert segment(*images, "--outputs", "label", out=out) == 0
    assert sorted(outputs(out)) == ["p0_label.png", "p1_label.png"]
    done = [json.loads(line) for line in (out / STATE_DIR / "done-rank0.jsonl").read_text().splitlines()]
    assert [(d["source"], d["name"], d["outputs"]) for d in done] == [
        (str(p.resolve()), p.stem, ["label"]) for p in images
    ]
    capsys.readouterr()
    assert segment(*images, "--outputs", "label,overlay,json", out=out) == 0  # the JSON/overlay are missing
    printed = capsys.readouterr().out
    assert "already done" not in printed and "redone" not in printed and len(outputs(out)) == 6


def test_own_outputs_and_label_pngs_in_a_folder_are_skipped(tmp_path, data_dir, capsys):
    folder = tmp_path / "photos"
    for p in [photo(folder / "a.png", 24, 32), photo(folder / "b.jpg", 20, 30, seed=1)]:
        assert p.is_file()
    assert segment(folder, out=folder) == 0  # --out is the input folder
    capsys.readouterr()
    assert segment(folder, out=folder) == 0
    printed = capsys.readouterr().out
    assert "2 of 2 image(s) already done" in printed and "skipped 4 ovss output(s)/label map(s)" in printed
    assert not list(folder.glob("*_label_label.png")) and not list(folder.glob("*_overlay_*"))
    # PASCAL VOC layout: photo.jpg beside its palette label photo.png; only the photos are segmented
    voc = tmp_path / "voc"
    shutil.copytree(data_dir / "voc", voc)
    assert segment(voc, "--outputs", "label", out=tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        f"{p.stem}_label.png" for p in sorted(voc.glob("*.jpg"))
    ]
    assert "skipped 3 ovss output(s)/label map(s)" in capsys.readouterr().out
    # a label map named explicitly is segmented like any image
    assert segment(voc / "2011_000003.png", "--outputs", "label", out=tmp_path / "explicit") == 0


def test_stale_temp_files_of_killed_runs_are_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = out / ".p0_overlay.png.999999999-0123abcd.tmp"  # no such process
    live = out / f".p0.json.{os.getpid()}-89abcdef.tmp"  # a writer that is still running
    mine = out / ".notes.tmp"  # not an ovss name
    for p in (dead, live, mine):
        p.write_bytes(b"partial")
    assert segment(photo(tmp_path / "p0.png", 24, 32), out=out) == 0
    assert not dead.exists() and live.exists() and mine.exists()


def test_ranks_take_disjoint_slices_that_add_up_to_one_run(tmp_path, monkeypatch, capsys):
    import ovss.distributed

    images = [photo(tmp_path / f"in/p{i}.png", 24, 30 + i, seed=i) for i in range(5)]
    assert segment(*images, out=tmp_path / "single") == 0
    for rank in (1, 0):  # the order the ranks finish in does not matter
        monkeypatch.setattr(ovss.distributed, "rank_and_world", lambda rank=rank: (rank, 2))
        assert segment(*images, out=tmp_path / "sharded") == 0
    logs = {
        r: (tmp_path / "sharded" / STATE_DIR / f"done-rank{r}.jsonl").read_text().splitlines() for r in (0, 1)
    }
    names = {r: [json.loads(line)["name"] for line in lines] for r, lines in logs.items()}
    assert names == {0: ["p0", "p2", "p4"], 1: ["p1", "p3"]}
    assert outputs(tmp_path / "sharded") == outputs(tmp_path / "single")


def test_a_full_disk_stops_the_job_with_one_line(tmp_path, monkeypatch, capsys):
    from ovss.api.result import SegmentationResult

    def full(self, out_dir, stem, outputs=()):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SegmentationResult, "save", full)
    image = photo(tmp_path / "p0.png", 24, 32)
    assert segment(image, out=tmp_path / "out") == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"ovss: error: cannot write the results of {image} into {tmp_path / 'out'}: No space left on device; "
        "free space or fix the folder, then re-run the same command to finish"
    )
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / STATE_DIR).write_text("not a folder")
    assert segment(image, out=tmp_path / "out2") == 1
    assert "is a file, but ovss keeps its progress there; move it away" in capsys.readouterr().err
