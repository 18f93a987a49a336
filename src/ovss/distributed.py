"""torchrun-native distributed setup and the few collectives the trainer needs.

A run is distributed when torchrun (or any launcher) sets ``WORLD_SIZE`` > 1 with ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``: :func:`init_distributed` then calls
``torch.distributed.init_process_group`` (NCCL on GPUs, gloo on CPU) and pins the process to
``cuda:LOCAL_RANK``. Without those variables every helper degrades to the single-process answer
(rank 0, world size 1, no-op reductions), so the same code runs both ways.

Functions marked "collective" must be called by every rank, in the same order.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
import torch.distributed as dist

from ovss.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """This process's place in the run."""

    rank: int  # global rank
    world_size: int  # number of processes
    local_rank: int  # rank on this machine (GPU index)
    device: torch.device  # where this rank computes

    @property
    def is_main(self) -> bool:
        """Rank 0 does all file and console output."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer; fix it") from None


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by the torchrun environment (if any) and pick the device.

    Args:
        device: "auto" (``cuda:LOCAL_RANK`` when CUDA is available, else CPU), "cuda" or "cpu".

    Returns:
        the rank, world size, local rank and device of this process.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but CUDA is not available; use --set device=cpu")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        backend = "nccl" if use_cuda else "gloo"
        kwargs: dict[str, Any] = {"device_id": dev} if use_cuda else {}
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world, **kwargs)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """Global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def _device() -> torch.device:
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Collective: wait for every rank."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(value: float) -> float:
    """Collective: the sum of ``value`` over ranks."""
    if not is_distributed():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Collective: the mean over ranks of every entry (same keys, same order, on every rank)."""
    if not is_distributed() or not values:
        return dict(values)
    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def all_gather_object(obj: Any) -> list[Any]:
    """Collective: ``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` alone)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    """Leave the process group (no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
