"""``ovss segment`` inputs: symbolic link loops, non-UTF-8 file names, --recursive folders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ovss.cli.main import main
from ovss.cli.segment import STATE_DIR
from ovss.data.io import read_label
from tests.conftest import noise_photo


@pytest.fixture(autouse=True)
def _fast(fast_model):
    """Every run here uses test-san-tiny at a 64-pixel short side."""


def _segment(*inputs, out: Path, extra: tuple[str, ...] = ()) -> int:
    return main(
        [
            "segment",
            *map(str, inputs),
            "--model",
            "test-san-tiny",
            "--classes",
            "a; b",
            "--out",
            str(out),
            *extra,
        ]
    )


def _photo(path: Path, h: int = 24, w: int = 32, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return noise_photo(path, h, w, seed)


def _files(out: Path) -> list[str]:
    return sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and STATE_DIR not in p.parts
    )


def test_symbolic_link_loops_in_a_folder_are_skipped_with_one_line(tmp_path, capsys):
    folder = tmp_path / "in"
    _photo(folder / "a.png")
    os.symlink("self.jpg", folder / "self.jpg")  # a link to itself
    os.symlink("pong.png", folder / "ping.png")  # two links to each other
    os.symlink("ping.png", folder / "pong.png")
    os.symlink(".", folder / "here")  # a folder link back to its folder
    assert _segment(folder, out=tmp_path / "out") == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("ovss: warning: ")]
    assert warnings == [
        f"ovss: warning: skipped {folder / name}: a symbolic link loop"
        for name in ("ping.png", "pong.png", "self.jpg")
    ]
    assert "wrote 1 result(s)" in captured.out and _files(tmp_path / "out") == [
        "a.json",
        "a_label.png",
        "a_overlay.png",
    ]
    # --recursive: the folder link back to its parent is a loop too; the walk ends
    assert _segment(folder, out=tmp_path / "rec", extra=("--recursive",)) == 0
    err = capsys.readouterr().err
    assert (
        f"ovss: warning: skipped {folder / 'here'}: a symbolic link loop (it leads back to {folder})" in err
    )


def test_a_non_utf8_file_name_is_segmented_logged_and_resumed(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.png"  # Latin-1 bytes: not UTF-8
    noise_photo(Path(os.fsdecode(raw)), 24, 32)
    _photo(folder / "b.png", seed=1)
    out = tmp_path / "out"
    for _ in range(2):  # the first run writes the log, every re-run reads it back
        assert _segment(folder, out=out) == 0
    printed = capsys.readouterr().out
    assert f"{folder}/caf\\xe9.png: " in printed  # shown with the byte escaped, not a crash
    assert "2 of 2 image(s) already done" in printed
    assert os.fsencode(out) + b"/caf\xe9_label.png" in [os.fsencode(p) for p in out.iterdir()]
    record = json.loads(Path(os.fsdecode(os.fsencode(out) + b"/caf\xe9.json")).read_text())
    assert os.fsencode(record["source"]) == raw
    log = (out / STATE_DIR / "done-rank0.jsonl").read_bytes()
    assert b"caf\\udce9" in log and log.isascii()
    # named explicitly, as a shell passes it
    assert _segment(Path(os.fsdecode(raw)), out=tmp_path / "explicit") == 0


def test_recursive_keeps_relative_paths_and_resumes(tmp_path, capsys):
    root = tmp_path / "in"
    for rel, seed in [("x.png", 0), ("a/x.png", 1), ("a/b/x.jpg", 2), ("c/x.png", 3), ("c/d/y.png", 4)]:
        _photo(root / rel, 20 + seed, 30, seed)
    other = _photo(tmp_path / "other/a/x.png", 25, 30, seed=5)
    out = tmp_path / "out"
    assert _segment(root, other.parent.parent, out=out, extra=("--recursive", "--outputs", "label,json")) == 0
    assert _files(out) == sorted(
        f"{n}{s}" for n in ("x", "a/x", "a/b/x", "c/x", "c/d/y", "a/x_1") for s in ("_label.png", ".json")
    )
    for name, source in [("a/b/x", root / "a/b/x.jpg"), ("a/x_1", other), ("c/d/y", root / "c/d/y.png")]:
        assert json.loads((out / f"{name}.json").read_text())["source"] == str(source.resolve())
        assert read_label(out / f"{name}_label.png").shape[0] == int(
            json.loads((out / f"{name}.json").read_text())["height"]
        )
    capsys.readouterr()
    assert _segment(root, other.parent.parent, out=out, extra=("--recursive", "--outputs", "label,json")) == 0
    assert "6 of 6 image(s) already done" in capsys.readouterr().out
    # without --recursive: the top level only, as before; a folder of sub-folders only says how to go on
    assert _segment(root, out=tmp_path / "flat") == 0
    assert _files(tmp_path / "flat") == ["x.json", "x_label.png", "x_overlay.png"]
    assert _segment(tmp_path / "other", out=tmp_path / "none") == 1
    assert "add --recursive to take the images of its sub-folders" in capsys.readouterr().err


def test_recursive_into_an_out_inside_the_input_folder_skips_the_outputs(tmp_path, capsys):
    root = tmp_path / "in"
    _photo(root / "x.png")
    _photo(root / "a/y.png", seed=1)
    for _ in range(2):
        assert _segment(root, out=root / "labels", extra=("--recursive",)) == 0
    printed = capsys.readouterr().out
    assert "2 of 2 image(s) already done" in printed and "skipped 4 ovss output(s)" in printed
    assert _files(root / "labels") == sorted(
        f"{n}{s}" for n in ("x", "a/y") for s in ("_label.png", "_overlay.png", ".json")
    )
    # --overwrite with other settings removes the sub-folders it emptied
    shutil.rmtree(root / "a")
    assert (
        main(
            [
                "segment",
                str(root),
                "--model",
                "test-san-tiny",
                "--classes",
                "c; d",
                "--out",
                str(root / "labels"),
                "--recursive",
                "--overwrite",
            ]
        )
        == 0
    )
    assert _files(root / "labels") == ["x.json", "x_label.png", "x_overlay.png"]
    assert not (root / "labels" / "a").exists()
