"""Compute dtype and device of the predictor: names -> torch objects, ``auto`` resolved.

``auto`` dtype is bfloat16 where it is fast and safe (CUDA GPUs that support it, CPUs with native
bf16 units: :func:`ovss.cpu.native_bf16_cpu`), float32 elsewhere; fp16 on the CPU warns once.
"""

from __future__ import annotations

import torch

from ovss import cpu
from ovss.errors import OvssError

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def parse_dtype(dtype: str | torch.dtype, device: torch.device | None = None) -> torch.dtype:
    """``"fp32" | "bf16" | "fp16" | "auto"`` (or a torch dtype) -> torch dtype.

    ``auto`` is the fast precision where it is safe: bfloat16 on CUDA GPUs that support it and on
    CPUs with native bf16 units (:func:`ovss.cpu.native_bf16_cpu`), float32 (exact) everywhere else.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() == "auto":
        device = device or torch.device("cpu")
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if device.type == "cpu" and cpu.native_bf16_cpu() else torch.float32
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise OvssError(f"unknown dtype {dtype!r}; use fp32, bf16, fp16 or auto") from None


def parse_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> cuda when available else cpu; otherwise the device named."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise OvssError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OvssError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise OvssError(f"device {device!r} requested but MPS (Apple GPU) is not available; use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):  # torch knows more types (xpu, meta, ...); ovss runs on these
        raise OvssError(f"device {device!r} is not supported; use cpu, cuda, cuda:N, mps or auto")
    return dev


FP16_ON_CPU = (
    "dtype fp16 on the CPU is about 3x slower than fp32 (no fast fp16 kernels); use fp32 (exact) or bf16"
)


def warn_fp16_on_cpu() -> None:
    """A ``UserWarning`` (one line) that fp16 on the CPU is slow; Python shows it once per process."""
    import warnings

    warnings.warn(FP16_ON_CPU, UserWarning, stacklevel=3)
