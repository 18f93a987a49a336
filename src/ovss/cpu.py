"""What this CPU can do and how the process uses its memory: native bf16 units (read from
``/proc/cpuinfo``) and the glibc allocator tuning for inference processes. Low level: imports only
the standard library."""

from __future__ import annotations

import functools


@functools.cache  # the hardware does not change while the process runs
def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX, read from /proc/cpuinfo).

    Without them PyTorch emulates bf16 matrix products, tens of times slower than float32.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def tune_cpu_allocator() -> bool:
    """Let glibc reuse freed memory instead of unmapping every large block (Linux/glibc, process-wide).

    By default every tensor above 32 MiB is a fresh ``mmap`` whose pages the kernel zeroes on first
    touch; CAT-Seg and SED create many such (B*K, C, H, W) activations, and these page faults cost
    them 1.6-1.9x on CPU (docs/performance.md). After this call all blocks come from the heap and
    freed memory stays mapped for reuse (``mallopt(M_MMAP_MAX, 0)``, ``M_TRIM_THRESHOLD`` 2 GiB; the
    same as ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment), so the
    resident size stays at its peak. Call it once at start-up in processes that run inference.

    Returns:
        True when applied, False where it does not apply (no glibc).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False
