"""Defects found by the repeated stress run (issue 10), one regression test each."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from ovss.utils import atomic_write


@pytest.fixture(scope="module")
def tiny_san():
    import ovss

    return ovss.load("test-san-tiny")


def test_atomic_write_keeps_the_umask_mode_when_the_writer_recreates_the_file(tmp_path):
    """safetensors' save_file re-creates its target with 0600; the published file must still be 0644."""
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "w.st", lambda tmp: save_file({"a": torch.zeros(2)}, str(tmp)))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["w.st"]


def test_a_bad_pickle_is_one_line_without_torchs_weights_only_false_hint(tmp_path, recwarn):
    """Random bytes or a pickle of arbitrary objects: no advice to re-run with weights_only=False, no
    torch 'please file an issue' warning, and the object's code never runs."""
    import pickle

    from ovss.errors import CheckpointMismatchError
    from ovss.weights.read import read_state_dict

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"model": Evil()}, protocol=4))
    (tmp_path / "random.pth").write_bytes(bytes(range(256)) * 8)
    for name in ("evil.pth", "random.pth"):
        with pytest.raises(CheckpointMismatchError) as info:
            read_state_dict(tmp_path / name)
        message = str(info.value)
        start = f"cannot read checkpoint {tmp_path / name}: not a torch.save file of plain tensors ("
        assert message.startswith(start)
        assert "ovss never unpickles other Python objects" in message and "\n" not in message
        assert "weights_only" not in message
    assert not marker.exists()
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


def test_weights_of_an_unknown_layout_for_a_test_model_name_the_layout_problem(tmp_path):
    """--model test-san-tiny --weights foreign.pth said "unknown checkpoint format 'random'"."""
    from ovss.errors import CheckpointMismatchError
    from ovss.weights.cache import load_model

    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointMismatchError, match=r"key layout matches \(first keys: foo\.weight\)"):
        load_model("test-san-tiny", weights=tmp_path / "foreign.pth")


def test_a_negative_pixel_limit_is_refused_not_taken_as_no_limit(monkeypatch):
    """--max-pixels -5 (or OVSS_MAX_PIXELS=-1) silently switched the decompression-bomb limit off."""
    from ovss.data.io import resolve_max_pixels
    from ovss.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^max_pixels=-5 is negative; give a number of pixels"):
        resolve_max_pixels(-5)
    monkeypatch.setenv("OVSS_MAX_PIXELS", "-1")
    with pytest.raises(ConfigError, match=r"^OVSS_MAX_PIXELS=-1 is negative; .*0 = no limit\)$"):
        resolve_max_pixels()
    assert resolve_max_pixels(0) is None and resolve_max_pixels(7) == 7


@pytest.mark.parametrize(
    ("device", "message"),
    [("mps", "device 'mps' requested but MPS (Apple GPU) is not available; use --device cpu"),
     ("meta", "device 'meta' is not supported; use cpu, cuda, cuda:N, mps or auto")],
)
def test_devices_torch_knows_but_this_machine_lacks_are_one_line(device, message):
    """--device mps on a machine without MPS gave torch's RuntimeError traceback at model.to()."""
    from ovss.api.segmenter import parse_device
    from ovss.errors import OvssError

    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(OvssError) as info:
        parse_device(device)
    assert str(info.value) == message


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_predict_batch_refuses_a_batch_size_below_one_or_not_an_integer(tiny_san, batch_size):
    """predict_batch(batch_size=0/-1/2.5) ran silently with batches of one (the CLI refuses 0)."""
    from ovss.errors import OvssError

    with pytest.raises(OvssError) as info:
        list(tiny_san.predict_batch([np.zeros((8, 8, 3), np.uint8)], classes=["a"], batch_size=batch_size))
    assert str(info.value) == f"batch_size must be an integer >= 1, got {batch_size!r}"


def test_a_bytes_vocabulary_is_refused_by_type_not_as_class_99():
    from ovss.errors import VocabularyError
    from ovss.vocab.vocabulary import parse_vocabulary

    with pytest.raises(VocabularyError, match=r"^cannot read a vocabulary from bytes; decode them first"):
        parse_vocabulary(b"cat; dog")


def test_an_empty_model_name_is_not_taken_for_the_current_folder():
    """ovss.load("") said "checkpoint file . is a folder"."""
    import ovss
    from ovss.errors import UnknownModelError

    with pytest.raises(UnknownModelError) as info:
        ovss.load("  ")
    assert str(info.value) == "no model given (an empty name); pass a name 'ovss models' lists or a file"


@pytest.mark.parametrize("opset", ["3", "13", "99"])
def test_export_refuses_an_unusable_opset_before_loading_the_model(tmp_path, capsys, no_model_load, opset):
    """--opset 3 (or 13: no scaled_dot_product_attention) gave torch's RuntimeError or a page of graph IR."""
    from ovss.cli.main import main

    out = str(tmp_path / "m.onnx")
    assert main(["export", "--model", "test-san-tiny", "--out", out, "--opset", opset]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ovss: error: ONNX opset {opset} is not supported: use 14..") and "\n" not in err
    assert err.endswith("(default 18; --opset N)") and not (tmp_path / "m.onnx").exists()


def test_a_folder_dataset_takes_inline_class_names_in_order(tmp_path):
    """ovss eval --folder D --classes "a; b" said "class file a; b does not exist; pass ... (or class
    names separated by ";")", which is what was passed."""
    from PIL import Image

    from ovss.data.datasets import FolderDataset

    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "x.png")
    Image.new("L", (4, 4)).save(tmp_path / "labels" / "x.png")
    (tmp_path / "classes.txt").write_text("sky\ngrass, lawn\n")
    inline = FolderDataset(tmp_path, "sky; grass, lawn")
    from_file = FolderDataset(tmp_path, tmp_path / "classes.txt")
    assert inline.class_names == from_file.class_names == ["sky", "grass, lawn"]


def test_a_line_break_in_a_class_string_separates_classes_as_in_a_file():
    """--classes "$(cat classes.txt)" made ONE class "cat dog sky" (line breaks became spaces)."""
    from ovss.vocab.vocabulary import parse_vocabulary

    assert parse_vocabulary("cat\ndog\r\nsky; sofa, couch\n").names == ["cat", "dog", "sky", "sofa"]
    assert [c.synonyms for c in parse_vocabulary("cat\nsofa, couch").classes] == [("cat",), ("sofa", "couch")]


def test_a_json_object_as_class_string_is_refused_not_one_class_named_like_it():
    """--classes '{"a": 1}' became one class named '{"a":1}'."""
    from ovss.errors import VocabularyError
    from ovss.vocab.vocabulary import parse_vocabulary

    with pytest.raises(VocabularyError, match=r"^the --classes JSON must be a JSON list of .* got dict"):
        parse_vocabulary('{"a": 1}')
    assert parse_vocabulary("{curly} thing; cat").names == ["{curly} thing", "cat"]


def test_a_full_disk_during_a_checkpoint_is_enospc_with_no_temp_file(tmp_path, monkeypatch):
    """torch.save on a full disk raises RuntimeError ("unexpected pos 128 vs 0"): ovss train printed
    a traceback. It is now OSError(ENOSPC) naming the checkpoint, and the temp file is gone."""
    import errno
    import shutil

    import ovss.engine.checkpoint as ckpt

    def full_disk(state, path):
        with open(path, "wb") as f:
            f.write(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    target = tmp_path / "iter_0000002.pt"
    with pytest.raises(OSError) as info:
        ckpt.save_checkpoint(target, {"a": 1})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert os.listdir(tmp_path) == []


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
