"""Child processes for tests: this checkout's ovss on the path, one thread, torchrun without fixed ports."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from tests.conftest import REPO_ROOT


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python: this checkout's ``src`` (and ``tests``) first on the path,
    one OpenMP thread, plus ``extra``."""
    paths = [str(REPO_ROOT / "src"), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    path = os.pathsep.join(p for p in paths if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}


def torchrun(args: Sequence[str], nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node NPROC ARGS`` on the CPU (gloo), output captured.

    No port is chosen beforehand: the rendezvous binds a free one itself (``127.0.0.1:0``) and the
    ranks join through its store, so tests running in parallel (``pytest -n``) never collide on a port.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", *args]
    return subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=timeout)
