"""Shared CLI pieces: help with defaults, warnings, model options and their checks, writable outputs."""

from __future__ import annotations

import argparse
import os
import types

import pytest

from ovss.cli.common import (
    Parser,
    apply_inference_default,
    check_model_options,
    ensure_writable_dir,
    ensure_writable_file,
    family_lines,
    inference_choices,
    model_options,
    warn,
)
from ovss.errors import ConfigError, OutputPathError


def _help(**kwargs) -> str:
    parser = Parser(prog="x", **kwargs)
    parser.add_argument("--size", type=int, default=640, help="the size")
    parser.add_argument("--mode", default="fast", help="the mode (default: slow)")  # states its own
    parser.add_argument("--name", default=None, help="a name")
    parser.add_argument("--flag", action="store_true", help="a flag")
    parser.add_argument("--files", nargs="*", default=[], help="files")
    parser.add_argument("--code", default="x", help="run ``ovss models`` first")
    return " ".join(parser.format_help().split())


def test_help_shows_defaults_only_where_they_say_something():
    text = _help()
    assert "the size (default: 640)" in text
    assert "the mode (default: slow)" in text and "(default: fast)" not in text
    assert "a name (default" not in text and "a flag (default" not in text and "files (default" not in text
    assert "run ovss models first (default: x)" in text and "``" not in text  # reST literals as plain text


def test_parser_keeps_raw_descriptions_raw():
    raw = argparse.RawDescriptionHelpFormatter
    parser = Parser(prog="x", description="line one\n  indented two", formatter_class=raw)
    parser.add_argument("--size", type=int, default=3, help="n")
    text = parser.format_help()
    assert "line one\n  indented two" in text and "(default: 3)" in text


def test_warn_is_one_line_on_stderr(capsys):
    warn("fp16 on the CPU is slow; use --dtype bf16")
    captured = capsys.readouterr()
    assert captured.err == "ovss: warning: fp16 on the CPU is slow; use --dtype bf16\n" and captured.out == ""


def test_inference_choices_are_every_familys_modes_once():
    # SAN: d2, mmseg; CAT-Seg: whole, slide; CAT-Seg v1 adds mmseg (architecture.md, model contract)
    assert sorted(inference_choices()) == ["d2", "mmseg", "slide", "whole"]
    assert len(inference_choices()) == 4
    exported = inference_choices(exported=True)  # SAN bakes its config's protocol into the graph
    assert sorted(exported) == ["mmseg", "slide", "whole"]


def _args(**values) -> argparse.Namespace:
    base = {"inference": None, "fast": None, "topk": None}
    return argparse.Namespace(**{**base, **values})


def test_model_options_are_only_those_given():
    assert model_options(_args()) == {}
    assert model_options(_args(fast=True, topk=4)) == {"fast": True, "topk": 4}
    assert model_options(_args(inference="slide", tta=True)) == {"inference": "slide", "tta": True}
    with pytest.raises(ConfigError) as info:
        model_options(_args(topk=3))
    assert str(info.value) == "--topk only applies with --fast (SED's category early rejection); add --fast"
    with pytest.raises(ConfigError, match=r"^--topk must be >= 1, got 0$"):
        model_options(_args(fast=True, topk=0))


def test_another_familys_option_is_refused_in_cli_words():
    with pytest.raises(ConfigError) as info:
        check_model_options(_args(fast=True), "san", "san-vit-b16")
    assert str(info.value) == "--fast applies to SED models only; san-vit-b16 is a SAN model (remove --fast)"
    with pytest.raises(ConfigError) as info:
        check_model_options(_args(inference="slide"), "san", "san-vit-b16")
    assert str(info.value) == "--inference slide does not apply to san-vit-b16 (a SAN model); use d2 or mmseg"
    with pytest.raises(ConfigError) as info:
        check_model_options(_args(inference="whole"), "sed", "sed-convnext-b")
    assert str(info.value) == (
        "--inference applies to SAN and CAT-Seg models only; sed-convnext-b is a SED model "
        "(remove --inference)"
    )
    check_model_options(_args(inference="slide"), "catseg", "catseg-vit-b16")  # its own option: fine
    check_model_options(_args(fast=True, topk=2), "sed", "sed-convnext-b")


def test_family_lines_name_each_family_line_once():
    def fams(*titles):
        return [types.SimpleNamespace(title=t) for t in titles]

    assert family_lines(fams("SAN")) == "SAN"
    assert family_lines(fams("SAN", "CAT-Seg", "CAT-Seg v1")) == "SAN and CAT-Seg"
    assert family_lines(fams("SAN", "CAT-Seg", "SED")) == "SAN, CAT-Seg and SED"


def test_inference_default_per_command():
    from ovss.models.catseg import catseg_tiny
    from ovss.models.family import get_family

    option = get_family("catseg").inference
    args = _args()
    apply_inference_default(args, catseg_tiny(), "segment")
    assert args.inference == option.defaults["segment"] == "whole"  # one pass for segment (README)
    given = _args(inference="slide")
    apply_inference_default(given, catseg_tiny(), "segment")
    assert given.inference == "slide"  # the user's choice stays


def test_writable_dir_checks(tmp_path):
    assert ensure_writable_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, not created
    assert [p.name for p in tmp_path.iterdir()] == []  # and the probe file is gone
    file = tmp_path / "f.txt"
    file.write_text("x")
    with pytest.raises(OutputPathError) as info:
        ensure_writable_dir(file)
    assert str(info.value) == f"--out {file} is an existing file, not a folder; pass a folder path"
    with pytest.raises(OutputPathError) as info:
        ensure_writable_dir(file / "sub", flag="--data-root")
    expected = f"--data-root {file / 'sub'} cannot be created: {file} is a file; pass another folder"
    assert str(info.value) == expected


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_a_folder_where_nothing_can_be_created_is_refused():
    """Root passes access() everywhere; the probe file finds /proc unwritable anyway."""
    message = r"^--out /proc/ovss-out cannot be created: /proc is not writable \("
    with pytest.raises(OutputPathError, match=message):
        ensure_writable_dir("/proc/ovss-out")


def test_writable_file_checks(tmp_path):
    assert ensure_writable_file(tmp_path / "sub" / "m.onnx") == tmp_path / "sub" / "m.onnx"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputPathError) as info:
        ensure_writable_file(tmp_path)
    example = tmp_path / "model.onnx"
    assert str(info.value) == f"--out {tmp_path} is a folder; pass a file path (e.g. {example})"
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    message = r"^--out .*m\.onnx: the folder .*blocker is an existing file, not a folder; pass a folder path$"
    with pytest.raises(OutputPathError, match=message):
        ensure_writable_file(blocker / "m.onnx")


@pytest.mark.parametrize("command", ["segment", "eval"])
def test_commands_load_a_segmenter_without_the_image_cache(home, command):
    """segment, video and eval see each image once: no handle kept, no digest per image; the library
    default (the API's ``ovss.load``) keeps its cache."""
    import ovss
    from ovss.cli.common import load_segmenter
    from ovss.cli.main import build_parser

    argv = [command, "x.jpg", "--classes", "a"] if command == "segment" else [command, "--dataset", "voc20"]
    args = build_parser().parse_args([*argv, "--model", "test-san-tiny"])
    assert load_segmenter(args).image_cache.max_bytes == 0
    assert ovss.load("test-san-tiny").image_cache.max_bytes > 0
