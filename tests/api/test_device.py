"""Compute dtype and device: ``auto`` resolution, one-line refusals, the fp16-on-CPU warning."""

from __future__ import annotations

import pytest
import torch

import ovss
from ovss.errors import OvssError


@pytest.mark.parametrize("native", [False, True])
def test_auto_dtype_is_bf16_only_where_bf16_is_native(monkeypatch, native):
    """``dtype="auto"`` (ovss.load's default): bf16 on CPUs with bf16 units and bf16 GPUs, else fp32."""
    import ovss.cpu as module
    from ovss.api.device import parse_dtype

    monkeypatch.setattr(module, "native_bf16_cpu", lambda: native)
    want = torch.bfloat16 if native else torch.float32
    assert parse_dtype("auto") == parse_dtype("Auto", torch.device("cpu")) == want
    assert parse_dtype("fp32") == torch.float32 and parse_dtype("bf16") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: not native)
    assert parse_dtype("auto", torch.device("cuda")) == (torch.float32 if native else torch.bfloat16)
    seg = ovss.load("test-san-tiny")
    assert seg.dtype == want and next(seg.model.parameters()).dtype == want
    assert ovss.load("test-san-tiny", dtype="fp32").dtype == torch.float32
    with pytest.raises(OvssError, match="use fp32, bf16, fp16 or auto"):
        parse_dtype("fast")


def test_fp16_on_the_cpu_warns_once_in_one_line():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default: once per place
        for _ in range(2):
            seg = ovss.load("test-san-tiny", device="cpu", dtype="fp16")
        ovss.load("test-san-tiny", device="cpu", dtype="bf16")
        ovss.load("test-san-tiny", device="cpu", dtype="fp32")
    assert seg.dtype == torch.float16
    caught = [w for w in caught if w.category is not ResourceWarning]  # garbage of earlier tests
    assert [(w.category, str(w.message)) for w in caught] == [
        (
            UserWarning,
            "dtype fp16 on the CPU is about 3x slower than fp32 (no fast fp16 kernels); use fp32 (exact) "
            "or bf16",
        )
    ]


@pytest.mark.parametrize(
    ("device", "message"),
    [("mps", "device 'mps' requested but MPS (Apple GPU) is not available; use --device cpu"),
     ("meta", "device 'meta' is not supported; use cpu, cuda, cuda:N, mps or auto")],
)
def test_devices_torch_knows_but_this_machine_lacks_are_one_line(device, message):
    """--device mps on a machine without MPS gave torch's RuntimeError traceback at model.to()."""
    from ovss.api.device import parse_device

    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(OvssError) as info:
        parse_device(device)
    assert str(info.value) == message
