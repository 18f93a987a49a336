"""``ovss segment``: options checked before the model loads, one-line errors, complete --help."""

from __future__ import annotations

import os

import pytest

import ovss.cli.segment as segment_cli
from ovss.cli.main import main


@pytest.fixture
def no_model(monkeypatch):
    """Fail loudly if a test reaches the model: every check here must happen before it loads."""

    def load(args):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(segment_cli, "load_segmenter", load)


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("ovss: error: ") and "\n" not in err and "Traceback" not in err
    return err.removeprefix("ovss: error: ")


def _segment(image, out, *extra) -> int:
    return main(
        ["segment", str(image), "--model", "test-san-tiny", "--classes", "a; b", "--out", str(out), *extra]
    )


def test_out_that_is_a_file_or_under_a_file_fails_before_the_model_loads(
    tmp_path, data_dir, no_model, capsys
):
    photo = data_dir / "quokka.jpg"
    file = tmp_path / "results.txt"
    file.write_text("not a folder")
    assert _segment(photo, file) == 1
    assert _error(capsys) == f"--out {file} is an existing file, not a folder; pass a folder path"
    assert _segment(photo, file / "sub" / "dir") == 1
    assert (
        _error(capsys)
        == f"--out {file / 'sub' / 'dir'} cannot be created: {file} is a file; pass another folder"
    )
    assert file.read_text() == "not a folder"


def test_out_that_cannot_be_written_fails_before_the_model_loads(
    tmp_path, data_dir, no_model, capsys, monkeypatch
):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:  # a real read-only folder (root writes anyway, so simulate it there)
        locked.chmod(0o555)
    else:
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode)
        )
    try:
        assert _segment(data_dir / "quokka.jpg", locked) == 1
        assert _error(capsys) == f"--out {locked} is not writable; pass a folder you can write to"
        assert _segment(data_dir / "quokka.jpg", locked / "new") == 1
        assert (
            _error(capsys) == f"--out {locked / 'new'} cannot be created: {locked} is not writable; "
            "pass a folder you can write to"
        )
    finally:
        locked.chmod(0o755)
    assert not (locked / "new").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--batch-size", "-3"], "--batch-size must be >= 1, got -3"),
        (["--outputs", "label,mask"], "--outputs 'label,mask': choose one or more of label, overlay, json"),
    ],
)
def test_bad_options_are_one_line(tmp_path, data_dir, no_model, capsys, extra, message):
    assert _segment(data_dir / "quokka.jpg", tmp_path / "out", *extra) == 1
    assert _error(capsys).startswith(message)
    assert not (tmp_path / "out").exists()


def test_help_describes_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in [
        "--out OUT output folder (default: ovss_out)",
        "--outputs OUTPUTS comma-separated outputs per image among label, overlay, json "
        "(default: label,overlay,json)",
        "--batch-size BATCH_SIZE images of one size per forward pass (default: 1)",
        "--max-pixels MAX_PIXELS refuse larger images (default: $OVSS_MAX_PIXELS or 100000000; 0 = no limit)",
        "--overwrite recompute images already done in --out (default: skip them)",
        "a 16-bit grayscale PNG above 256",
        "torchrun --nproc_per_node 4 -m ovss.cli.main segment",
        "skips the images already done",
    ]:
        assert expected in text, expected
