"""Weights files and the weights cache: every bad file is one clear error, nothing corrupt is used.

Issue 10 items 5 (integrity of converted weights), 6 (a crafted config asking for a huge model),
10 (corrupt / truncated / empty / random files, metadata without a family), 12 (OVSS_HOME and its
folders of the wrong kind) and 20 (``ovss convert`` and ``--weights`` given a folder).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import ovss
from ovss.cli.main import main
from ovss.errors import CacheError, WeightsFileError
from ovss.weights import modelfile, read, registry
from ovss.weights.cache import load_model
from ovss.weights.modelfile import save_model_file
from ovss.weights.resolve import converted_path
from tests.conftest import needs, parity_dir

V3 = modelfile.FORMAT_VERSION


def write_tiny(path: Path, tiny, **meta: str) -> Path:
    state, config = tiny
    return save_model_file(path, state, config, "san", **meta)


def small_png(path: Path) -> Path:
    Image.fromarray(np.full((32, 40, 3), 90, dtype=np.uint8)).save(path)
    return path


def flip_byte(path: Path, offset_from_end: int = 100) -> None:
    """Flip one byte in the data region, keeping the mtime (as silent disk corruption would)."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size - offset_from_end)
        b = f.read(1)
        f.seek(st.st_size - offset_from_end)
        f.write(bytes([b[0] ^ 0x5A]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def one_line_cli_error(capsys) -> str:
    """The error line (progress lines such as 'ovss: converting ...' may precede it)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("ovss: error: ") and err.count("ovss: error: ") == 1, err
    return last


# ----------------------------------------------------------------------------------------- item 10
def _corruptions(good: bytes) -> dict[str, bytes]:
    return {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "short": b"\x01\x02\x03",
        "huge_header_length": (2**40).to_bytes(8, "little") + b"{}",
        "bad_json": (9).to_bytes(8, "little") + b"{not json",
        "padded": good + b"\0" * 64,
    }


@pytest.mark.parametrize(
    "kind", ["empty", "truncated", "random", "short", "huge_header_length", "bad_json", "padded"]
)
def test_corrupt_safetensors_is_one_clear_error(kind, tiny, tmp_path, home):
    good = write_tiny(tmp_path / "good.safetensors", tiny).read_bytes()
    bad = tmp_path / f"{kind}.safetensors"
    bad.write_bytes(_corruptions(good)[kind])
    with pytest.raises(WeightsFileError) as info:
        ovss.load(bad)
    msg = str(info.value)
    assert "\n" not in msg and str(bad) in msg
    assert "is not a valid safetensors file" in msg and "re-download or re-convert it" in msg
    # the same through --weights for a registry name
    with pytest.raises(WeightsFileError):
        load_model("test-san-tiny", weights=bad)


def test_corrupt_weights_through_the_cli(tiny, tmp_path, home, capsys):
    good = write_tiny(tmp_path / "good.safetensors", tiny).read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(good[: len(good) - 1000])
    img = small_png(tmp_path / "x.png")
    args = ["segment", str(img), "--classes", "a; b", "--out", str(tmp_path / "out")]
    assert main([*args, "--model", "test-san-tiny", "--weights", str(bad)]) == 1
    assert "cut.safetensors is not a valid safetensors file (the tensors cover" in one_line_cli_error(capsys)
    assert main([*args, "--model", str(bad)]) == 1
    assert "truncated" in one_line_cli_error(capsys)


def test_metadata_without_family_is_a_clear_error(tiny, tmp_path, home):
    state, config = tiny
    path = tmp_path / "nofamily.safetensors"
    save_file(dict(state), str(path), metadata={"ovss_format": V3, "config": config.to_json()})
    with pytest.raises(
        WeightsFileError, match=r"has no 'family' entry in its metadata \(expected one of san"
    ):
        ovss.load(path)
    save_file(dict(state), str(path), metadata={"ovss_format": V3, "family": "san", "config": "{bad"})
    with pytest.raises(WeightsFileError, match="has an invalid model config in its metadata"):
        ovss.load(path)
    save_file(dict(state), str(path), metadata={"ovss_format": "9", "family": "san", "config": "{}"})
    with pytest.raises(WeightsFileError, match="ovss_format '9', which this ovss does not know"):
        ovss.load(path)


def test_corrupt_cache_file_says_to_delete_it_and_download(tiny, home):
    target = converted_path("san-vit-b16")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\0" * 10)
    with pytest.raises(WeightsFileError) as info:
        ovss.load("san-vit-b16")
    msg = str(info.value)
    assert str(target) in msg and "delete it and run 'ovss download san-vit-b16'" in msg and "\n" not in msg


# ----------------------------------------------------------------------------------------- item 5
def test_flipped_bytes_in_the_cache_are_detected(tiny, home, monkeypatch):
    target = converted_path("san-vit-b16")
    write_tiny(target, tiny, name="san-vit-b16", source_format="san_d2", source_sha256="ab" * 32)
    meta = modelfile.open_model_file(target).metadata
    assert len(meta["content_sha256"]) == 64 and meta["ovss_format"] == "3"
    seg = ovss.load("san-vit-b16")  # first use: full check, then a stamp
    assert seg.name == "san-vit-b16" and modelfile.stamp_path(target).is_file()
    # unchanged file: the stamp makes the check free (no hashing)
    with monkeypatch.context() as m:
        m.setattr(modelfile.ModelFile, "_hash", lambda *a: pytest.fail("hashed an unchanged cache file"))
        ovss.load("san-vit-b16")
    flip_byte(target)
    with pytest.raises(WeightsFileError) as info:
        ovss.load("san-vit-b16")
    msg = str(info.value)
    assert "is corrupt or was edited: its content (config, names and data) has sha256" in msg
    assert "delete it and run 'ovss download san-vit-b16'" in msg


def test_flipped_bytes_in_a_file_given_by_path_are_detected(tiny, tmp_path, home):
    path = write_tiny(tmp_path / "mine.safetensors", tiny)
    _, info = load_model(path)
    assert len(info["digest"]) == 64
    flip_byte(path, offset_from_end=7)
    with pytest.raises(WeightsFileError, match="mine.safetensors is corrupt"):
        load_model(path)


def test_legacy_cache_file_without_digest_is_refused_with_the_fix(tiny, home):
    state, config = tiny
    target = converted_path("san-vit-b16")
    target.parent.mkdir(parents=True)
    meta = {"ovss_format": "1", "family": "san", "config": config.to_json(), "name": "san-vit-b16"}
    save_file(dict(state), str(target), metadata=meta)
    expected = r"earlier ovss \(ovss_format 1\).*delete it and run 'ovss download"
    with pytest.raises(WeightsFileError, match=expected):
        ovss.load("san-vit-b16")


# ----------------------------------------------------------------------------------------- item 6
def test_crafted_config_asking_for_a_huge_model_does_not_allocate(tiny, tmp_path, home):
    """A 2 KB file whose config asks for ~56 GB of parameters: refused before anything is allocated.

    Run in a child limited to 3 GiB of address space: building the real model would fail there with
    an allocation error instead of the one-line ovss error.
    """
    _, config = tiny
    huge = dataclasses.replace(config, side_depth=20000, deep_supervision=(20000,))
    path = tmp_path / "crafted.safetensors"
    save_file({"x": torch.zeros(4)}, str(path), metadata={"ovss_format": V3, "family": "san",
                                                         "config": huge.to_json()})  # fmt: skip
    assert path.stat().st_size < 4096
    child = textwrap.dedent(
        f"""
        import resource, sys
        import ovss
        from ovss.errors import OvssError
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        try:
            ovss.load({str(path)!r})
        except OvssError as e:
            print(type(e).__name__, e)
            sys.exit(3)
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 3, done.stderr[-2000:]
    assert done.stdout.startswith("CheckpointMismatchError")
    assert "asks for a model far larger than the 1 tensors" in done.stdout


# ----------------------------------------------------------------------------------------- item 12
def test_weights_folder_that_is_a_file_and_cache_file_that_is_a_folder(home):
    home.mkdir()
    (home / "weights").write_text("x")
    with pytest.raises(CacheError, match="weights is a file, not a folder"):
        ovss.load("san-vit-b16")
    (home / "weights").unlink()
    converted_path("san-vit-b16").mkdir(parents=True)
    with pytest.raises(
        CacheError, match="san-vit-b16.safetensors is a folder, expected a file; delete or move"
    ):
        ovss.load("san-vit-b16")


# ----------------------------------------------------------------------------------------- item 20 (convert)
def test_folder_given_as_weights_is_a_folder_not_missing(tmp_path, home, capsys):
    img = small_png(tmp_path / "x.png")
    args = [
        "segment",
        str(img),
        "--classes",
        "a; b",
        "--out",
        str(tmp_path / "out"),
        "--model",
        "test-san-tiny",
    ]
    assert main([*args, "--weights", str(tmp_path)]) == 1
    err = one_line_cli_error(capsys)
    assert "is a folder, expected a file" in err and "does not exist" not in err
    assert main(["convert", "san-vit-b16", str(tmp_path)]) == 1
    assert "is a folder, expected a file" in one_line_cli_error(capsys)


@pytest.fixture
def tiny_release(monkeypatch):
    """A registry entry shaped like test-san-tiny whose release format is the official SAN one."""
    spec = dataclasses.replace(
        registry.get_weight_spec("test-san-tiny"), name="san-tiny", source_format="san_d2"
    )
    monkeypatch.setitem(registry._BY_NAME, "san-tiny", spec)
    return spec


def test_convert_accepts_an_ovss_safetensors(tiny, tiny_release, tmp_path, home, capsys):
    source = write_tiny(tmp_path / "trained.safetensors", tiny, name="my-run", source_sha256="cd" * 32)
    assert main(["convert", "san-tiny", str(source)]) == 0
    out = capsys.readouterr()
    assert (
        f"san-tiny: {converted_path('san-tiny')}" in out.out and "converting trained.safetensors" in out.err
    )
    meta = modelfile.open_model_file(converted_path("san-tiny")).metadata
    assert meta["name"] == "san-tiny" and meta["source_sha256"] == "cd" * 32
    model, _ = load_model("san-tiny")
    for key, value in tiny[0].items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    # a file of another family is refused by name
    catseg, _ = load_model("test-catseg-tiny")
    other = save_model_file(tmp_path / "c.safetensors", catseg.state_dict(), catseg.config, "catseg")
    assert main(["convert", "san-tiny", str(other)]) == 1
    assert "holds a catseg model (ovss file), not san-tiny" in one_line_cli_error(capsys)


def test_convert_names_the_detected_format(tmp_path, home, capsys):
    fixture = needs(parity_dir() / "san_a" / "state_dict.safetensors")
    from safetensors.torch import load_file

    san = tmp_path / "san.pth"
    torch.save({"model": load_file(str(fixture)), "iteration": 3}, san)
    assert main(["convert", "catseg-vit-b16", str(san)]) == 1
    err = one_line_cli_error(capsys)
    assert "CAT-Seg v1" not in err
    assert "is an official SAN (detectron2) checkpoint (a SAN model), not a CAT-Seg checkpoint" in err
    assert "san-vit-b16 or san-vit-l14" in err
    assert not converted_path("catseg-vit-b16").exists()


def test_segment_reads_and_checks_a_weights_file_once(tiny, tmp_path, home, monkeypatch):
    path = write_tiny(tmp_path / "mine.safetensors", tiny)
    opened, hashed, loaded = [], [], []
    real_open, real_hash = modelfile.open_model_file, modelfile.ModelFile._hash
    real_load = modelfile.ModelFile.load_tensors
    monkeypatch.setattr(read, "open_model_file", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    monkeypatch.setattr(modelfile.ModelFile, "_hash", lambda s, *a: hashed.append(1) or real_hash(s, *a))
    monkeypatch.setattr(modelfile.ModelFile, "load_tensors", lambda self: loaded.append(1) or real_load(self))
    img = small_png(tmp_path / "x.png")
    args = ["segment", str(img), "--model", str(path), "--classes", "a; b", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    assert (len(opened), len(hashed), len(loaded)) == (1, 1, 1)


def test_weights_of_an_unknown_layout_for_a_test_model_name_the_layout_problem(tmp_path):
    """--model test-san-tiny --weights foreign.pth said "unknown checkpoint format 'random'"."""
    from ovss.errors import CheckpointMismatchError
    from ovss.weights.cache import load_model

    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointMismatchError, match=r"key layout matches \(first keys: foo\.weight\)"):
        load_model("test-san-tiny", weights=tmp_path / "foreign.pth")
