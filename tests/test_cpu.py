"""ovss.cpu: the CPU's native bf16 units (from /proc/cpuinfo) and the glibc allocator tuning."""

from __future__ import annotations

import pytest

from ovss.cpu import native_bf16_cpu  # the real one (the autouse fixture patches the module's name)


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [("flags\t: fpu avx2 avx512f avx512_bf16\n", True), ("flags\t: fpu avx2 amx_bf16 amx_tile\n", True),
     ("flags\t: fpu sse4_2 avx2 fma\n", False), (None, False)],
)
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native, monkeypatch, tmp_path):
    import builtins

    import ovss.cpu

    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)

    def fake_open(name, *args, **kwargs):
        assert name == "/proc/cpuinfo"
        return builtins.open(path, *args, **kwargs)  # FileNotFoundError (an OSError) when absent

    monkeypatch.setattr(ovss.cpu, "open", fake_open, raising=False)
    native_bf16_cpu.cache_clear()
    try:
        assert native_bf16_cpu() is native
    finally:
        native_bf16_cpu.cache_clear()


def test_tune_cpu_allocator_applies_on_glibc():
    import ctypes.util
    import subprocess
    import sys

    code = "from ovss.cpu import tune_cpu_allocator; print(tune_cpu_allocator())"  # own process
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = run.stdout.strip()
    glibc = sys.platform.startswith("linux") and ctypes.util.find_library("c") is not None
    assert out == "True" if glibc else out in ("True", "False")
