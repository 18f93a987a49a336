"""The command line as a user meets it: bad --out caught before any work, options worded for the CLI,
complete help, ``eval --dataset all`` going on past unprepared benchmarks."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovss.cli.main import build_parser, main
from ovss.errors import OvssError
from tests.conftest import one_line_error

from ._small_eval import shrink_eval_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bad_outs(tmp_path) -> dict[str, Path]:
    file = tmp_path / "file.txt"
    file.write_text("x")
    return {"a file": file, "under a file": file / "sub", "not creatable": Path("/proc/ovss-test-out")}


@pytest.mark.parametrize("kind", ["a file", "under a file", "not creatable"])
def test_bad_out_is_reported_before_any_work(kind, bad_outs, tmp_path, capsys, no_model_load):
    if kind == "not creatable" and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc (a folder nobody can create entries in, root included)")
    out = str(bad_outs[kind])
    expected = {"a file": "is an existing file, not a folder", "under a file": "is a file",
                "not creatable": "cannot be created: /proc is not writable"}[kind]
    commands = {
        "eval": ["eval", "--folder", str(tmp_path), "--classes", "a; b", "--model", "test-san-tiny",
                 "--out", out],
        "train": ["train", "--config", "tiny-san", "--out", out, "--set", "data.root=/nonexistent"],
        "prepare": ["prepare", "ade150", "--raw", str(tmp_path / "missing"), "--out", out],
    }
    for name, argv in commands.items():
        assert main(argv) == 1, name
        err = one_line_error(capsys)
        assert f"--out {out}" in err and expected in err, (name, err)
    if (REPO / "src" / "ovss" / "cli" / "export.py").is_file():
        assert main(["export", "--model", "test-san-tiny", "--out", str(bad_outs[kind] / "m.onnx")]) == 1
        err = one_line_error(capsys)
        assert f"--out {bad_outs[kind] / 'm.onnx'}: the folder" in err, err
        assert expected in err, err


def test_eval_options_are_checked_in_cli_words_before_loading(tmp_path, capsys, no_model_load):
    base = ["eval", "--folder", str(tmp_path), "--classes", "a; b", "--out", str(tmp_path / "o")]
    assert main([*base, "--model", "test-san-tiny", "--inference", "slide"]) == 1
    assert one_line_error(capsys) == (
        "ovss: error: --inference slide does not apply to test-san-tiny (a SAN model); use d2 or mmseg"
    )
    assert main([*base, "--model", "test-catseg-tiny", "--inference", "d2"]) == 1
    assert "--inference d2 does not apply to test-catseg-tiny (a CAT-Seg model); use whole or slide" in (
        one_line_error(capsys)
    )
    assert main([*base, "--model", "test-sed-tiny", "--inference", "whole"]) == 1
    assert one_line_error(capsys) == (
        "ovss: error: --inference applies to SAN and CAT-Seg models only; test-sed-tiny is a SED model "
        "(remove --inference)"
    )
    assert main([*base, "--model", "test-catseg-tiny", "--fast"]) == 1
    assert "--fast applies to SED models only; test-catseg-tiny is a CAT-Seg model" in one_line_error(capsys)
    assert main([*base, "--model", "test-sed-tiny", "--topk", "4"]) == 1
    assert one_line_error(capsys) == (
        "ovss: error: --topk only applies with --fast (SED's category early rejection); add --fast"
    )
    assert main([*base, "--model", "test-sed-tiny", "--fast", "--topk", "0"]) == 1
    assert "--topk must be >= 1, got 0" in one_line_error(capsys)
    assert main(["eval", "--dataset", "ade150", "--classes", "a; b", "--model", "test-san-tiny"]) == 1
    assert "--classes applies to --folder only" in one_line_error(capsys)


@pytest.mark.parametrize("size", ["0", "-3"])
def test_segment_batch_size_below_one_is_refused(size, tmp_path, capsys, no_model_load):
    code = main(["segment", str(tmp_path / "x.png"), "--classes", "a; b", "--model", "test-san-tiny",
                 "--batch-size", size, "--out", str(tmp_path / "o")])
    assert code == 1 and f"--batch-size must be >= 1, got {size}" in one_line_error(capsys)


def test_debug_is_accepted_after_the_subcommand(tmp_path, capsys):
    assert main(["models", "--debug"]) == 0

    with pytest.raises(OvssError):  # --debug: the traceback instead of the one-line message
        main(["train", "--config", "tiny-san", "--set", "solver.lrr=1", "--out", str(tmp_path / "r"),
              "--debug"])
    assert main(["train", "--config", "tiny-san", "--set", "solver.lrr=1", "--out", str(tmp_path / "r")]) == 1


def test_fp16_on_the_cpu_warns_once_in_one_line(tmp_path, capsys):
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(image)
    args = ["segment", str(image), "--classes", "cat; dog", "--model", "test-san-tiny", "--dtype", "fp16"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warned == [  # said once, by the API (ovss.load), not again by the CLI
        "ovss: warning: dtype fp16 on the CPU is about 3x slower than fp32 (no fast fp16 kernels); use "
        "fp32 (exact) or bf16"
    ]


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_help_is_complete_for_every_command():
    for name, parser in _commands().items():
        assert parser.description, f"ovss {name} has no description"
        text = parser.format_help()
        assert "``" not in text, f"ovss {name} --help shows raw markup"
        for action in parser._actions:
            assert action.help, f"ovss {name} {action.option_strings or action.dest} has no help"
    helps = {name: " ".join(p.format_help().split()) for name, p in _commands().items()}
    assert "(default: ovss_eval/MODEL" in helps["eval"] and "$OVSS_DATA" in helps["eval"]
    assert "(default: 2)" in helps["prepare"]
    usage = _commands()["train"].format_usage()
    assert "--out DIR" in usage and "[--out" not in usage  # shown required


def test_prepare_count_error_names_the_flag(tmp_path):
    from ovss.data.catalog import get_benchmark
    from ovss.data.prepare._common import check_found
    from ovss.errors import DatasetError

    with pytest.raises(DatasetError, match="pass --no-count-check"):
        check_found(get_benchmark("ade150"), "val", 3, tmp_path, True)


def _prepared_voc20(root: Path) -> None:
    rng = np.random.default_rng(0)
    for folder in ("images", "labels"):
        (root / "voc20" / folder / "val").mkdir(parents=True)
    for i in range(2):
        image = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "voc20/images/val" / f"{i}.jpg")
        label = rng.integers(0, 20, (24, 32), dtype=np.uint8)
        Image.fromarray(label).save(root / "voc20/labels/val" / f"{i}.png")


def test_eval_all_skips_unprepared_benchmarks_and_writes_per_model(tmp_path, capsys, monkeypatch):
    shrink_eval_model(monkeypatch, 32)
    _prepared_voc20(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OVSS_DATA", str(tmp_path / "data"))
    code = main(["eval", "--dataset", "all", "--model", "test-san-tiny", "--limit", "1"])
    captured = capsys.readouterr()
    assert code == 1  # something asked for was not evaluated
    skipped = [line for line in captured.err.splitlines() if line.startswith("ovss: warning: skipping ")]
    assert [line.split()[3] for line in skipped] == ["ade847:", "pc459:", "ade150:", "pc59:"]
    assert "ovss: warning: voc20/val under" in captured.err  # the count warning, one line
    assert ".py:" not in captured.err and "UserWarning" not in captured.err
    assert "not prepared, skipped: ade847, pc459, ade150, pc59" in captured.out
    assert "<dataset>" not in captured.out
    assert (tmp_path / "ovss_eval" / "test-san-tiny-limit1" / "voc20" / "metrics.json").is_file()
    assert re.search(r"^voc20 +detectron2 +1 ", captured.out, re.MULTILINE)
    assert os.environ["OVSS_DATA"] in captured.err


def test_the_cli_reports_a_full_disk_in_one_line(monkeypatch, capsys):
    import errno

    import ovss.cli.train as train_cli
    from ovss.cli.main import main

    def run(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/r/checkpoints/iter_0000002.pt")

    monkeypatch.setattr(train_cli, "run", run)
    assert main(["train", "--config", "tiny-san", "--out", "/r"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "ovss: error: cannot write /r/checkpoints/iter_0000002.pt: No space left on device; free space or "
        "choose another folder, then re-run the same command (it continues where it stopped; ovss train: "
        "add --resume)\n"
    )


def test_the_library_logs_and_the_cli_shows_its_lines_as_before(monkeypatch, capsys):
    """ovss.engine logs its progress lines to ``ovss.train`` (engine and demo print nothing themselves);
    the CLI shows information on stdout unchanged and a warning as one ``ovss: warning:`` line."""
    import ast
    import logging
    from pathlib import Path

    import ovss
    from ovss.cli.main import _progress_lines

    package = Path(ovss.__file__).parent
    printing = [
        f"{path.name}:{node.lineno}"
        for path in sorted([*package.glob("engine/*.py"), *package.glob("demo/*.py")])
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"
    ]
    assert printing == []
    log = logging.getLogger("ovss.train")
    monkeypatch.setattr(log, "handlers", [])  # as in a program that imports ovss without the CLI
    monkeypatch.setattr(log, "level", logging.NOTSET)
    log.info("saved checkpoint c.pt (iteration 2)")
    assert capsys.readouterr().out == ""
    with _progress_lines():  # what main() does around every command
        log.info("saved checkpoint %s (iteration %d)", "c.pt", 2)
        log.warning("the data   loader\nis slow")
    log.info("after the command")  # the handler leaves with the command
    captured = capsys.readouterr()
    assert captured.out == "saved checkpoint c.pt (iteration 2)\n"
    assert captured.err == "ovss: warning: the data loader is slow\n"
