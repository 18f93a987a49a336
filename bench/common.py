"""Shared helpers of the bench scripts (never imported by the package)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def timeit(
    fn: Callable[[], object], repeat: int = 3, warmup: int = 1, sync: Callable[[], object] | None = None
) -> float:
    """Best wall time of ``fn()`` over ``repeat`` runs (at least one), in seconds, after ``warmup``
    untimed runs. ``sync`` (e.g. ``torch.cuda.synchronize``) is called before each timed run and
    before its clock stops, so that queued GPU work is counted where it belongs."""
    return timed(fn, repeat, warmup, sync)[0]


def timed(
    fn: Callable[[], T], repeat: int = 3, warmup: int = 1, sync: Callable[[], object] | None = None
) -> tuple[float, T]:
    """(:func:`timeit`'s best seconds, the result of the last timed run)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(max(1, repeat)):
        if sync is not None:
            sync()
        start = time.perf_counter()
        out = fn()
        if sync is not None:
            sync()
        best = min(best, time.perf_counter() - start)
    return best, out


def device_sync(device: str | torch.device) -> Callable[[], object] | None:
    """The ``sync`` of :func:`timeit` for ``device``: CUDA's synchronize, None on the CPU."""
    if torch.device(device).type != "cuda":
        return None
    return lambda: torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeat: int = 3, device: str = "cpu") -> float:
    """Best n^3 matmul throughput in GFLOP/s for ``dtype`` with the current threads (or on the GPU)."""
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    return 2 * n**3 / timeit(lambda: a @ b, repeat, sync=device_sync(device)) / 1e9


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of one attention call from the shapes: q k^T and the product with v (2 per multiply-add)."""
    batch = math.prod(query[:-2])
    return 2 * batch * query[-2] * key[-2] * (query[-1] + value[-1])


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()`` counted by torch's FlopCounterMode (matmuls, convs, attention).

    torch's table has no entry for the CPU's fused attention kernel
    (``aten._scaled_dot_product_flash_attention_for_cpu``), which it would count as 0: it is added
    here, so that SDPA and the explicit-matmul form of the same attention count the same FLOPs.
    """
    from torch.utils.flop_counter import FlopCounterMode

    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    counter = FlopCounterMode(display=False, custom_mapping={cpu_sdpa: _sdpa_flops} if cpu_sdpa else None)
    with counter:
        fn()
    return counter.get_total_flops()


def random_model(name: str):
    """The real-size architecture of registry entry ``name`` with random weights (torch seed 0).

    Gradients are off: FlopCounterMode's module tracker trips over parameters passed as module
    inputs when they require grad, and no bench trains.
    """
    from ovss.models.build import build_model
    from ovss.weights.registry import get_weight_spec

    torch.manual_seed(0)
    return build_model(get_weight_spec(name).config()).requires_grad_(False)


def text_for(model, k: int) -> torch.Tensor:
    """Random unit text embeddings in the layout ``encode_text`` returns (probed on one class)."""
    import torch.nn.functional as F

    from ovss.towers.tokenizer import get_tokenizer
    from ovss.vocab.templates import get_templates

    templates = get_templates(model.config.templates)
    tokens = get_tokenizer()([t.format("thing") for t in templates[:1]]).view(1, 1, -1)
    with torch.inference_mode():
        probe = model.encode_text(tokens)
    if probe.ndim == 3:  # (K, P, E): one row per template
        return F.normalize(torch.randn(k, len(templates), probe.shape[-1]), dim=-1)
    return F.normalize(torch.randn(k, *probe.shape[1:]), dim=-1)


def set_random_vocabulary(seg, text: torch.Tensor) -> None:
    """Give the Segmenter ``seg`` the vocabulary "class 0" ... "class K-1" embedded as ``text`` (K rows,
    from :func:`text_for`), so no text tower runs."""
    from ovss.vocab.vocabulary import Vocabulary

    seg.set_vocabulary(Vocabulary.from_names([f"class {i}" for i in range(len(text))]), embeddings=text)


def random_photo(size: tuple[int, int]):
    """A (H, W, 3) uint8 photo of uniform noise (numpy seed 0)."""
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)


def print_table(rows: list[dict[str, object]]) -> None:
    """Print rows (dicts with the same keys) as an aligned text table."""
    if not rows:
        return
    keys = list(rows[0])
    cells = [[str(k) for k in keys]] + [[_fmt(r[k]) for k in keys] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(keys))]
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def setup_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (default: all cores) and return the number in use."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()



CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # the flags the header reports


def cpu_info() -> dict[str, object]:
    """CPU model, the matmul-relevant flags present and the CPU kind the docs' tables are split by.

    ``kind`` is "native bf16" (avx512_bf16 or AMX: ``dtype="auto"`` means bf16 there), "AVX2-only"
    (auto means fp32) or "other". Read from /proc/cpuinfo (Linux); "unknown" elsewhere.
    """
    from ovss.cpu import native_bf16_cpu

    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    kind = "native bf16" if native_bf16_cpu() else "AVX2-only" if "avx2" in flags else "other"
    return {"model": model, "flags": [f for f in CPU_FLAGS if f in flags], "kind": kind}


def device_header(device: str = "cpu") -> str:
    """One line naming the CPU (model, flags, kind) and, for a CUDA device, the GPU."""
    info = cpu_info()
    line = f"CPU: {info['model']}; flags: {' '.join(info['flags']) or 'none'}; kind: {info['kind']}"
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = torch.device(device)
        line += f"; GPU: {torch.cuda.get_device_name(dev)} (bf16: {torch.cuda.is_bf16_supported()})"
    return line


RESULT = "RESULT "  # prefix of the one stdout line a bench child process reports its row on


def emit_result(row: dict[str, object]) -> None:
    """Report a child process's row on stdout (read back by :func:`run_child`)."""
    print(RESULT + json.dumps(row), flush=True)


def run_case(cmd: list[str], label: str, src: str | None) -> dict | None:
    """:func:`run_child` from the repository root with ``src`` (a package tree; None: as installed) and
    the repository (for ``bench``) first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, str(REPO), env.get("PYTHONPATH")]))
    return run_child(cmd, label, env=env, cwd=REPO)


def append_json(path: Path | None, row: dict[str, object]) -> None:
    """Append ``row`` to ``path`` as one JSON line (nothing without a path)."""
    if path is not None:
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def run_child(
    cmd: list[str], label: str, env: dict[str, str] | None = None, cwd: object = None
) -> dict | None:
    """Run one bench case in a fresh interpreter; its row, or None after printing why it failed.

    Args:
        cmd: the child's command line; it reports with :func:`emit_result`.
        label: names the case in the failure message.
        env, cwd: as for ``subprocess.run``.
    """
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, cwd=cwd)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(RESULT)]
    if out.returncode or not lines:
        print(f"{label}: failed (exit {out.returncode})\n{out.stderr[-2000:]}", file=sys.stderr, flush=True)
        return None
    return json.loads(lines[-1][len(RESULT) :])
