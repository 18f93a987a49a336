"""Resumable training checkpoints, written atomically.

A checkpoint ``OUT/checkpoints/iter_<N>.pt`` (N = completed iterations) holds everything that
rebuilds the run exactly: the unwrapped model's state dict, optimizer, lr-schedule position,
GradScaler, the RNG states of every rank (python, numpy, torch CPU and CUDA), the data position
(samples consumed per rank) and the full :class:`~ovss.engine.config.TrainConfig` as JSON. It is
written to a temporary file and renamed into place (:func:`ovss.utils.atomic_write`), so a killed
run leaves either the previous set of checkpoints or the new one, never a truncated file. Loading
uses ``torch.load(weights_only=True)``: every value is a tensor, number, string or container.
"""

from __future__ import annotations

import errno
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ovss.errors import CheckpointMismatchError
from ovss.utils import atomic_write

_NAME = re.compile(r"^iter_(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    """RNG states of this process (python, numpy, torch CPU, every CUDA device) as safe types."""
    version, inner, gauss = random.getstate()
    legacy = np.random.get_state()
    assert isinstance(legacy, tuple)  # the default legacy form, not the dict
    name, keys, pos, has_gauss, cached = legacy
    state: dict[str, Any] = {
        "python": [version, list(inner), gauss],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, inner, gauss = state["python"]
    random.setstate((version, tuple(inner), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(folder: Path, iteration: int) -> Path:
    """``folder/iter_<iteration, 7 digits>.pt``."""
    return Path(folder) / f"iter_{iteration:07d}.pt"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(iteration, path) of the complete checkpoints in ``folder``, oldest first (temp files ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint in ``folder`` (None when there is none)."""
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Atomically ``torch.save`` ``state`` to ``path``.

    Raises:
        OSError: ``ENOSPC`` when the disk filled up (torch's zip writer reports that as a
            ``RuntimeError``; the CLI prints one line for it). No temporary file is left.
    """

    def write(tmp: Path) -> None:
        try:
            torch.save(state, tmp)
        except RuntimeError:
            if shutil.disk_usage(tmp.parent).free < _FULL_BYTES:
                raise OSError(errno.ENOSPC, "No space left on device", str(path)) from None
            raise

    return atomic_write(Path(path), write)


_FULL_BYTES = 16 << 20  # below this much free space a failed torch.save is taken for a full disk


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (CPU tensors, ``weights_only``)."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors come in many types
        raise CheckpointMismatchError(
            f"cannot read training checkpoint {path} ({type(e).__name__}: {e}); delete it to resume from an "
            "older one"
        ) from None
    missing = {"model", "optimizer", "iteration", "rng", "config"} - set(state)
    if missing:
        raise CheckpointMismatchError(
            f"{path} is not an ovss training checkpoint (missing {sorted(missing)}); pass --weights to start "
            "from model weights instead of --resume"
        )
    return state


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep`` 0 keeps everything)."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(folder)[:-keep]:
        path.unlink(missing_ok=True)
