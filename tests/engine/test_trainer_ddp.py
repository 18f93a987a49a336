"""Distributed data parallel: a two-process gloo step equals one process on the combined batch.

The model is the tiny CAT-Seg, whose text tower trains inside the DDP forward (its prompts are
re-encoded every step). Both sides draw their samples from the real sampler and dataset: two ranks
with micro-batch 2 take global positions {0, 2} and {1, 3}, one process with micro-batch 4 takes
{0, 1, 2, 3}; the per-rank BCE means averaged by DDP equal the global mean.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tests._subprocess import torchrun
from tests.engine._synthetic import make_shapes

BATCH = 4


def _setup(root: Path, rank: int, world: int):
    from ovss.engine.build import build_training_model
    from ovss.engine.data import TrainDataset, collate, image_label_pairs, vocabulary
    from ovss.engine.recipes import load_config
    from ovss.engine.sampler import ResumableSampler
    from ovss.engine.tasks import build_task

    cfg = load_config("tiny-catseg").override(
        f"data.root={json.dumps(str(root))}", f"data.classes={json.dumps(str(root / 'classes.txt'))}"
    )
    torch.manual_seed(0)
    model, family = build_training_model(cfg.model)
    task = build_task(family, model, vocabulary(cfg.data), cfg.loss)
    pairs = image_label_pairs(cfg.data)
    sampler = ResumableSampler(len(pairs), BATCH // world, seed=0, rank=rank, world_size=world)
    dataset = TrainDataset(pairs, cfg.augment, seed=0)
    images, labels = collate([dataset[key] for key in next(iter(sampler))])
    return model, task, images, labels


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(root: str, out: str) -> None:
    """One rank under torchrun (``python -m tests.engine.test_trainer_ddp ROOT OUT``): a DDP step;
    rank 0 saves."""
    torch.set_num_threads(1)
    from ovss.distributed import distributed_session
    from ovss.engine.trainer import data_parallel, forward_backward

    with distributed_session("cpu") as info:
        assert info.world_size == 2 and torch.distributed.get_backend() == "gloo"
        model, task, images, labels = _setup(Path(root), info.rank, info.world_size)
        net = data_parallel(task, info.device, find_unused_parameters=True)  # as the CAT-Seg recipes
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        parts = forward_backward(net, task, images, labels, task.loss_weights(), scaler)
        if info.rank == 0:
            torch.save({"grads": _grads(model), "loss": parts["loss"]}, out)
    assert not torch.distributed.is_initialized()


def test_two_process_ddp_step_equals_single_process_step(tmp_path):
    from ovss.engine.trainer import forward_backward

    make_shapes(tmp_path, count=6, size=64)
    out = tmp_path / "rank0.pt"
    # torchrun picks its own free port (no port chosen here that another test could take first)
    done = torchrun(["-m", "tests.engine.test_trainer_ddp", str(tmp_path), str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)

    model, task, images, labels = _setup(tmp_path, rank=0, world=1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    forward_backward(task, task, images, labels, task.loss_weights(), scaler)
    single = _grads(model)

    assert set(single) == set(ddp["grads"])
    assert any(".text." in n for n in single)  # the text tower's q/v weights got gradients too
    worst = max(float((single[n] - ddp["grads"][n]).abs().max()) for n in single)
    assert worst < 1e-6, worst
    assert sum(float(g.abs().sum()) for g in single.values()) > 0


def test_gradient_accumulation_equals_full_batch(tmp_path):
    from ovss.engine.trainer import forward_backward

    make_shapes(tmp_path, count=6, size=64)
    model, task, images, labels = _setup(tmp_path, rank=0, world=1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    forward_backward(task, task, images, labels, task.loss_weights(), scaler)
    full = _grads(model)
    model.zero_grad(set_to_none=True)
    for half in (slice(0, 2), slice(2, 4)):
        forward_backward(task, task, images[half], labels[half], task.loss_weights(), scaler, accumulation=2)
    accumulated = _grads(model)
    worst = max(float((full[n] - accumulated[n]).abs().max()) for n in full)
    assert worst < 1e-6, worst


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
