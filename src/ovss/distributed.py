"""torchrun-native distributed setup and teardown, and the few collectives ovss needs.

The one place where ovss joins and leaves a process group: ``ovss train``, ``ovss eval`` and
``ovss segment`` run inside :func:`distributed_session`. A run is distributed when torchrun (or any
launcher) sets ``WORLD_SIZE`` > 1 with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``:
:func:`init_distributed` then calls ``torch.distributed.init_process_group`` (NCCL on GPUs, gloo on
CPU) and pins the process to ``cuda:LOCAL_RANK``. Without those variables every helper degrades to
the single-process answer (rank 0, world size 1, no-op reductions), so the same code runs both ways.

The session always destroys the group it created, also on errors: a process that exits with a live
gloo group can abort in the interpreter's shutdown ("terminate called without an active exception",
exit code -6) after its work is done.

Functions marked "collective" must be called by every rank, in the same order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from ovss.errors import ConfigError

log = logging.getLogger("ovss.distributed")


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
        device: "auto" (``cuda:LOCAL_RANK`` when CUDA is available, else CPU), "cuda" (also
            "cuda:N": under torchrun each rank takes ``cuda:LOCAL_RANK``), "cpu" (or "mps": gloo).

    Returns:
        the rank, world size, local rank and device of this process.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = str(device)
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} requested but CUDA is not available; use --device cpu "
            "(train: --set device=cpu)"
        )
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda and world > 1:
        torch.cuda.set_device(dev)
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        backend = "nccl" if use_cuda else "gloo"
        kwargs: dict[str, Any] = {"device_id": dev} if use_cuda else {}
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world, **kwargs)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


@contextlib.contextmanager
def distributed_session(device: str = "auto") -> Iterator[DistInfo]:
    """Join the torchrun process group (if any) for the block, and always leave it.

    On success every rank first waits at a barrier, so no rank leaves while another still needs a
    collective; on an error the group is destroyed at once (a barrier could wait for a rank that
    failed). Inside an outer session (the group already exists) it neither joins nor leaves.

    Args:
        device: as for :func:`init_distributed`.

    Yields:
        this process's :class:`DistInfo`.
    """
    owner = not (dist.is_available() and dist.is_initialized())
    info = init_distributed(device)
    ok = False
    try:
        yield info
        ok = True
    finally:
        if owner:
            teardown(wait_for_all=ok)


def teardown(wait_for_all: bool = False) -> None:
    """Leave the process group (no-op when there is none), after a barrier if ``wait_for_all``."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait_for_all and dist.get_world_size() > 1:
        try:
            dist.barrier()
        except (RuntimeError, ValueError) as e:  # a peer already gone: leave anyway
            log.warning("barrier before leaving the process group failed: %s", e)
    dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """Global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank_and_world() -> tuple[int, int]:
    """(rank, world size): (0, 1) without a process group."""
    return get_rank(), get_world_size()


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
    return float(all_reduce_sum_tensor(torch.tensor([float(value)], dtype=torch.float64)).item())


def all_reduce_sum_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Collective: the element-wise sum of ``tensor`` over ranks, as a new CPU tensor (a copy alone).

    Runs on the backend's device (the current CUDA device for NCCL, the CPU for gloo).
    """
    if not is_distributed():
        return tensor.detach().cpu().clone()
    t = tensor.detach().to(_device(), copy=True)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Collective: the mean over ranks of every entry (same keys, same order, on every rank)."""
    if not is_distributed() or not values:
        return dict(values)
    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Collective: rank ``src``'s ``obj`` on every rank (``obj`` itself alone)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Collective: ``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` alone)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
