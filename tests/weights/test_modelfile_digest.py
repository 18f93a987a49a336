"""The integrity digest of a converted weights file covers what drives the model (config, family,
tensor names) as well as the tensor data; files of the earlier formats are converted again."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import ovss
from ovss.cli.main import main
from ovss.errors import WeightsFileError
from ovss.weights import modelfile
from ovss.weights.cache import load_model
from ovss.weights.modelfile import save_model_file
from ovss.weights.resolve import converted_path


def _metadata(path: Path) -> dict[str, str]:
    return modelfile.open_model_file(path).metadata


def _rewrite(path: Path, metadata: dict[str, str], tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write the file again with other metadata (or tensors), keeping its recorded digest: an edit."""
    save_file(tensors if tensors is not None else load_file(str(path)), str(path), metadata=metadata)


def _edited_mean(meta: dict[str, str]) -> dict[str, str]:
    config = json.loads(meta["config"])
    config["pixel_mean"] = [100.0, 100.0, 100.0]
    return {**meta, "config": json.dumps(config)}


EDITS = {
    "pixel mean": lambda meta, tensors: (_edited_mean(meta), tensors),
    "name": lambda meta, tensors: ({**meta, "name": "other"}, tensors),
    "tensor names": lambda meta, tensors: (meta, _swap_two(tensors)),
    "data": lambda meta, tensors: (meta, {**tensors, "bg_embed": tensors["bg_embed"] + 1}),
}


def _swap_two(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Exchange the data of two same-shaped tensors (the data region stays the same bytes reordered)."""
    by_shape: dict[tuple, list[str]] = {}
    for k, v in tensors.items():
        by_shape.setdefault((tuple(v.shape), v.dtype), []).append(k)
    a, b = next(names for names in by_shape.values() if len(names) > 1 and not torch.equal(
        tensors[names[0]], tensors[names[1]]))[:2]
    return {**tensors, a: tensors[b], b: tensors[a]}


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edited_file_is_refused_by_path_and_in_the_cache(edit, tiny, tmp_path, home, capsys):
    state, config = tiny
    path = save_model_file(tmp_path / "m.safetensors", state, config, "san", name="test-san-tiny")
    load_model(path)  # intact
    meta, tensors = EDITS[edit](_metadata(path), load_file(str(path)))
    _rewrite(path, meta, tensors)
    with pytest.raises(WeightsFileError, match=r"m.safetensors is corrupt or was edited: its content \("):
        load_model(path)
    # the converted-weights cache, whose stamp skips the check only while the file is unchanged
    target = converted_path("san-vit-b16")
    save_model_file(target, state, config, "san", name="san-vit-b16")
    modelfile.write_stamp(target)
    ovss.load("san-vit-b16")
    meta, tensors = EDITS[edit](_metadata(target), load_file(str(target)))
    _rewrite(target, meta, tensors)
    img = tmp_path / "x.png"
    from tests.conftest import noise_photo

    noise_photo(img)
    argv = ["segment", str(img), "--model", "san-vit-b16", "--classes", "a; b", "--out", f"{tmp_path}/o"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is corrupt or was edited" in err[0], err
    assert "delete it and run 'ovss download san-vit-b16'" in err[0]


def test_an_in_place_edit_keeping_size_and_mtime_is_refused(tiny, tmp_path, home):
    """One digit of the stored pixel mean changed in place (same length, mtime restored)."""
    state, config = tiny
    path = save_model_file(tmp_path / "m.safetensors", state, config, "san")
    raw = path.read_bytes()
    mean = f"{config.pixel_mean[0]}".encode()
    assert raw.count(mean) >= 1
    st = path.stat()
    at = raw.index(mean)
    digit = raw[at:at + 1]
    path.write_bytes(raw[:at] + (b"9" if digit != b"9" else b"8") + raw[at + 1:])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(WeightsFileError, match="is corrupt or was edited"):
        load_model(path)


def test_the_digest_is_recorded_once_and_covers_the_whole_file(tiny, tmp_path):
    state, config = tiny
    path = save_model_file(tmp_path / "m.safetensors", state, config, "san")
    meta = _metadata(path)
    assert meta["ovss_format"] == "3" and "data_sha256" not in meta
    recorded = meta["content_sha256"]
    raw = path.read_bytes()
    assert raw.count(recorded.encode()) == 1
    expected = hashlib.sha256(raw.replace(recorded.encode(), b"pending" + b"0" * 57)).hexdigest()
    assert recorded == expected
    # the digest written twice (an edited header) is refused, not guessed
    _rewrite(path, {**meta, "note": recorded})
    with pytest.raises(WeightsFileError, match="records its content_sha256 more than once"):
        load_model(path)
    _rewrite(path, {k: v for k, v in meta.items() if k != "content_sha256"})
    with pytest.raises(WeightsFileError, match="records no valid content_sha256"):
        load_model(path)


def _write_format_2(path: Path, state, config) -> Path:
    """A file as the previous ovss wrote it: format 2, sha256 of the data region only."""
    placeholder = "pending" + "0" * 57
    meta = {"ovss_format": "2", "family": "san", "config": config.to_json(), "name": "test-san-tiny",
            "data_sha256": placeholder}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    digest = hashlib.sha256(raw[8 + n:]).hexdigest()
    path.write_bytes(raw.replace(placeholder.encode(), digest.encode()))
    return path


def test_a_file_of_the_previous_format_is_converted_again(tiny, tmp_path, home, capsys):
    state, config = tiny
    old = _write_format_2(tmp_path / "old.safetensors", state, config)
    with pytest.raises(WeightsFileError) as info:
        load_model(old)
    msg = str(info.value)
    assert "was written by an earlier ovss (ovss_format 2), whose integrity check does not cover" in msg
    assert f"convert it again: ovss convert test-san-tiny {old} --out NEW.safetensors" in msg
    new = tmp_path / "new.safetensors"
    assert main(["convert", "test-san-tiny", str(old), "--out", str(new)]) == 0
    model, _ = load_model(new)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert _metadata(new)["ovss_format"] == "3"
    # the old file's data digest is still checked when it is converted
    raw = bytearray(old.read_bytes())
    raw[-10] ^= 0x5A
    old.write_bytes(bytes(raw))
    assert main(["convert", "test-san-tiny", str(old), "--out", str(tmp_path / "bad.safetensors")]) == 1
    assert "is corrupt or was edited: its data has sha256" in capsys.readouterr().err
    # in the cache: delete and download again
    target = converted_path("san-vit-b16")
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_format_2(target, state, config)
    with pytest.raises(WeightsFileError, match=r"ovss_format 2\).*delete it and run 'ovss download san-vit"):
        ovss.load("san-vit-b16")
