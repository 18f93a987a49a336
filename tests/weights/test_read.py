"""read_state_dict: safetensors, torch.save wrappers, TorchScript and unreadable files."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import ovss
from ovss.errors import CheckpointMismatchError, WeightsFileError, WeightsNotFoundError
from ovss.weights.build import load_strict
from ovss.weights.read import read_state_dict


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.register_buffer("scale", torch.ones(2))

    def forward(self, x):
        return self.norm(self.a(x)) * self.scale[0]


def _sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: torch.randn_like(v) for k, v in Tiny().state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("wrap", ["bare", "model", "state_dict", "nested"])
def test_torch_save_wrappers(tmp_path, wrap):
    sd = _sd()
    obj = {
        "bare": sd,
        "model": {"model": sd, "iteration": 5},
        "state_dict": {"state_dict": sd, "epoch": 1},
        "nested": {"state_dict": {"model": sd}},
    }[wrap]
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    assert _same(read_state_dict(path), sd)


def test_safetensors(tmp_path):
    sd = _sd()
    save_file(sd, str(tmp_path / "w.safetensors"))
    got = read_state_dict(tmp_path / "w.safetensors")  # safetensors stores keys sorted
    assert _same(dict(sorted(got.items())), dict(sorted(sd.items())))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive(tmp_path):
    model = Tiny().half()  # the OpenAI archives are float16
    model.load_state_dict({k: v.half() for k, v in _sd().items()})
    traced = torch.jit.trace(model.float(), torch.randn(1, 3)).half()
    path = tmp_path / "ViT-B-16.pt"
    traced.save(str(path))
    got = read_state_dict(path)
    assert list(got) == list(Tiny().state_dict())
    assert all(v.dtype == torch.float16 for v in got.values())
    target = load_strict(Tiny(), got, str(path))  # fp16 values are cast into the fp32 module
    assert target.a.weight.dtype == torch.float32
    assert torch.equal(target.a.weight, _sd()["a.weight"].half().float())


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match=r"cannot read checkpoint .*bad\.pth"):
        read_state_dict(bad)
    torch.save({"model": _sd(), "junk": 1, "weights": "x"}, tmp_path / "ok.pth")  # extra metadata is fine
    assert _same(read_state_dict(tmp_path / "ok.pth"), _sd())
    torch.save({"a": torch.zeros(1), "b": 3}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointMismatchError, match="non-tensor entries \\(b\\)"):
        read_state_dict(tmp_path / "mixed.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointMismatchError, match="holds a list"):
        read_state_dict(tmp_path / "list.pth")


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


def test_read_state_dict_refuses_folders_and_pipes_without_hanging(tmp_path):
    """Every checkpoint reader (e.g. training's model.clip_weights) says what the path is instead of
    'does not exist' for a folder, and refuses a FIFO instead of blocking on it forever."""
    from ovss.weights.read import read_state_dict

    with pytest.raises(WeightsFileError, match="is a folder, expected a file"):
        read_state_dict(tmp_path)
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    with pytest.raises(WeightsFileError, match="is not a regular file"):
        read_state_dict(fifo)
    with pytest.raises(WeightsFileError, match="is not a regular file"):
        ovss.load(fifo)
