"""``ovss prepare``: the flags reach ``prepare``; bad --workers or --out fail before any reading."""

from __future__ import annotations

import pytest

from ovss.cli.main import main
from tests.conftest import one_line_error


@pytest.fixture
def prepared(monkeypatch):
    """Replace the conversion (tested in tests/data) by a recorder of its arguments."""
    import ovss.data.prepare

    calls = []

    class Report:
        def summary(self) -> str:
            return "prepared: 2 images"

    def prepare(name, raw, out, **kwargs):
        calls.append((name, raw, out, kwargs))
        return Report()

    monkeypatch.setattr(ovss.data.prepare, "prepare", prepare)
    return calls


def test_the_flags_reach_prepare_and_the_summary_is_printed(tmp_path, prepared, capsys):
    raw, out = tmp_path / "raw", tmp_path / "data"
    argv = ["prepare", "coco171", "--raw", str(raw), "--out", str(out), "--split", "train", "--workers", "0",
            "--no-count-check"]
    assert main(argv) == 0
    assert prepared == [("coco171", raw, out, {"workers": 0, "progress": True, "split": "train",
                                               "check_counts": False})]
    assert capsys.readouterr().out == "prepared: 2 images\n"
    assert main(["prepare", "ade150", "--raw", str(raw), "--out", str(out)]) == 0
    defaults = {"workers": 2, "progress": True, "split": "val", "check_counts": True}
    assert prepared[1][3] == defaults


def test_bad_workers_and_out_are_one_line_before_reading(tmp_path, prepared, capsys):
    argv = ["prepare", "ade150", "--raw", str(tmp_path)]
    assert main([*argv, "--out", str(tmp_path / "d"), "--workers", "-1"]) == 1
    assert one_line_error(capsys) == (
        "ovss: error: --workers must be >= 0 (0 or 1: convert in this process), got -1"
    )
    file = tmp_path / "file"
    file.write_text("")
    assert main([*argv, "--out", str(file)]) == 1
    assert one_line_error(capsys).endswith("is an existing file, not a folder; pass a folder path")
    assert prepared == []
