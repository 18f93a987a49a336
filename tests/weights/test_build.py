"""load_strict: strict loading with every offending key reported in one error, onto meta modules too."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ovss.errors import CheckpointMismatchError
from ovss.weights import build
from ovss.weights.build import load_strict
from tests.weights.test_read import Tiny, _same, _sd


def test_load_strict_loads_everything():
    sd = _sd()
    model = load_strict(Tiny(), sd, "tiny.pth")
    assert _same(model.state_dict(), sd)


def test_load_strict_reports_every_offender_in_one_error():
    sd = _sd()
    del sd["norm.bias"]  # missing
    sd["extra.weight"] = torch.zeros(1)  # unexpected
    sd["a.weight"] = torch.zeros(5, 3)  # wrong shape
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        load_strict(model, sd, "weights/foo.pth", model="SAN(vit-b16)")
    msg = str(info.value)
    assert "\n" not in msg
    assert "weights/foo.pth" in msg and "SAN(vit-b16)" in msg
    assert "1 missing [norm.bias]" in msg
    assert "1 unexpected [extra.weight]" in msg
    assert "1 wrong shape [a.weight ckpt (5, 3) != model (4, 3)]" in msg
    assert _same(model.state_dict(), before)  # nothing was loaded
    with pytest.raises(CheckpointMismatchError, match="does not fit Tiny"):
        load_strict(model, {}, "empty")


def test_long_lists_are_truncated():
    sd = {f"k{i}": torch.zeros(1) for i in range(20)}
    pattern = r"20 unexpected \[k0, k1, .*k7, \.\.\. \(\+12 more\)\]"
    with pytest.raises(CheckpointMismatchError, match=pattern):
        load_strict(Tiny(), {**_sd(), **sd}, "x")


def test_assign_onto_meta_module():
    with torch.device("meta"):
        model = Tiny()
    load_strict(model, _sd(), "x", assign=True)
    assert model.a.weight.device.type == "cpu"
    assert torch.equal(model.a.weight, _sd()["a.weight"])


def test_crafted_config_in_process_fails_fast(tiny, tmp_path):
    _, config = tiny
    huge = dataclasses.replace(config, side_depth=20000, deep_supervision=(20000,))
    with pytest.raises(CheckpointMismatchError, match="far larger"):
        build.check_fits(huge, {"x": torch.empty(4, device="meta")}, "crafted")
