"""``python -m tests._auto_bf16_cli ARGS``: ``ovss ARGS`` in a process where ``dtype="auto"`` resolves to
bf16 whatever the CPU (as on CPUs with AVX512-BF16 or AMX). Used by tests/test_auto_bf16.py."""

from __future__ import annotations

import sys

import ovss.cpu
from ovss.cli.main import main

if __name__ == "__main__":
    ovss.cpu.native_bf16_cpu = lambda: True  # type: ignore[assignment]
    sys.exit(main(sys.argv[1:]))
