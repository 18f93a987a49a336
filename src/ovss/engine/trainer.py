"""The training loop: one readable function, iteration based.

Run it::

    # one process (one GPU, or the CPU)
    ovss train --config san-vit-b16 --set data.root=/data model.clip_weights=ViT-B-16.pt --out runs/san

    # 8 GPUs on one machine (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK)
    torchrun --standalone --nproc_per_node=8 -m ovss.cli.main train --config san-vit-b16 \\
        --set data.root=/data model.clip_weights=ViT-B-16.pt --out runs/san

    # 2 machines x 8 GPUs: the same command on each machine, node_rank 0 and 1
    torchrun --nnodes=2 --node_rank=$NODE_RANK --nproc_per_node=8 --master_addr=$HOST --master_port=29500 \\
        -m ovss.cli.main train --config san-vit-b16 --set data.root=/data ... --out runs/san

    # continue exactly where the newest checkpoint in runs/san/checkpoints left off
    ovss train --config san-vit-b16 --set data.root=/data --out runs/san --resume

One iteration, in order: set the lr of iteration ``it`` (pure function of ``it``); for each of the
``accumulation`` micro-batches, forward under autocast and backward the weighted loss (DDP reduces
gradients on the last one only); unscale (fp16), clip the full-model gradient norm, optimizer step,
scaler update. Then, counting ``done = it + 1`` completed iterations: log (losses averaged over
ranks), checkpoint, and evaluate -- evaluation comes after checkpointing so a failed evaluation
still leaves a checkpoint behind (detectron2 ``build_hooks`` order). The final model is exported
as ``OUT/model_final.safetensors``, loadable with ``ovss.load(PATH)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ovss.distributed import all_gather_object, all_reduce_mean, barrier, init_distributed
from ovss.engine import checkpoint as ckpt
from ovss.engine.build import build_training_model
from ovss.engine.config import TrainConfig
from ovss.engine.curves import write_curves
from ovss.engine.data import TrainDataset, collate, image_label_pairs, vocabulary
from ovss.engine.evaluate import evaluate
from ovss.engine.logging import MetricLogger
from ovss.engine.optim import build_optimizer, clip_gradients, lr_factor, set_lr
from ovss.engine.rundir import check_run_dir, clear_run, remove_stale_temp_files
from ovss.engine.sampler import ResumableSampler
from ovss.engine.tasks import Task, build_task
from ovss.errors import ConfigError, OvssError
from ovss.models.base import SegmentationModel
from ovss.models.losses import weighted_sum
from ovss.vocab.vocabulary import Vocabulary

_log = logging.getLogger("ovss.train")

_AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtype


def _changed_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _changed_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def data_parallel(task: Task, device: torch.device, find_unused_parameters: bool = False) -> torch.nn.Module:
    """``task`` in DistributedDataParallel (buffers are not re-broadcast: they never change)."""
    with warnings.catch_warnings():  # newer torch renames broadcast_buffers; the meaning is unchanged
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return torch.nn.parallel.DistributedDataParallel(
            task, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False,
            find_unused_parameters=find_unused_parameters,
        )


def _check_all_used(model: torch.nn.Module) -> None:
    """DDP without ``find_unused_parameters`` silently skips the gradient all-reduce of any bucket
    holding a trainable parameter that got no gradient; refuse to go on (checked once, collective)."""
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if unused:
        raise ConfigError(
            f"{len(unused)} trainable parameter(s) get no gradient ({', '.join(unused[:3])}); with several "
            "processes set find_unused_parameters=true (the CAT-Seg recipes do)"
        )


def forward_backward(
    net: torch.nn.Module,
    task: Task,
    images: torch.Tensor,
    labels: torch.Tensor,
    weights: dict[str, float],
    scaler: torch.amp.GradScaler,
    amp_dtype: torch.dtype | None = None,
    accumulation: int = 1,
    sync: bool = True,
) -> dict[str, torch.Tensor]:
    """One micro-batch: forward under autocast, weighted loss, backward of ``loss / accumulation``.

    Args:
        net: ``task`` or its DDP wrapper; task: the adapter (for the losses).
        images: (b, 3, S, S) uint8 crops; labels: (b, S, S) int64, on the training device.
        weights: loss weights; scaler: GradScaler (disabled unless fp16).
        amp_dtype: autocast dtype, None for float32.
        accumulation: micro-batches per optimizer step.
        sync: False skips DDP's gradient all-reduce (``no_sync``) for all but the last micro-batch.

    Returns:
        detached float32 loss terms and their weighted sum ``"loss"``.
    """
    no_sync = getattr(net, "no_sync", None)  # DDP's
    context = contextlib.nullcontext() if sync or no_sync is None else no_sync()
    with context:
        with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = net(images)
        parts = task.losses(outputs, labels)
        loss = weighted_sum(parts, weights)
        scaler.scale(loss / accumulation).backward()
    return {name: value.detach().float() for name, value in {**parts, "loss": loss}.items()}


def _next_batch(batches: Any) -> Any:
    """The next batch; an ovss error raised in a DataLoader worker comes back as its own one line
    (the DataLoader re-raises it with the worker's traceback in the message)."""
    try:
        return next(batches)
    except OvssError as e:
        text = str(e)
        if "\nOriginal Traceback" not in text:
            raise
        last = text.rstrip().splitlines()[-1]
        raise type(e)(last.split(": ", 1)[1] if ": " in last else last) from None


def _workers(requested: int, world: int) -> int:
    """DataLoader workers per rank: ``requested``, at most the CPUs this process may use / local ranks."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or world
    return min(requested, max(1, cpus // max(local, 1)))


def _precision(requested: str, device: torch.device, is_main: bool) -> str:
    """fp16 autocast on a CPU is ~20x slower than fp32 (no fp16 kernels): train in fp32 there."""
    if requested == "fp16" and device.type == "cpu":
        if is_main:
            warnings.warn("precision fp16 on the CPU is very slow (no fp16 kernels); training in fp32 "
                          "instead (set precision=bf16 for bfloat16 autocast)", stacklevel=4)
        return "fp32"
    return requested


def _eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _complete_run(out_dir: Path, done: int, iterations: int, is_main: bool) -> dict[str, Any] | None:
    """``train``'s result for a resumed run that has already done its iterations and written its final
    model (nothing is changed, nothing written); None when there is training (or the export) left."""
    final = out_dir / "model_final.safetensors"
    if done < iterations or not final.is_file():
        return None
    if is_main:
        _log.info("the run in %s is already complete (%d of %d iterations): nothing to do; its model is %s "
                  "(to train longer, add --set solver.iterations=N with N > %d)",
                  out_dir, done, iterations, final, done)
    return {"iteration": done, "model": final, "metrics": {}, "eval": {}}


def _iterations_left(start: int, iterations: int, batch: int) -> str:
    if start >= iterations:  # the last checkpoint was written, the final model was not
        return f"all {iterations} iterations done, writing the final model"
    return f"iterations {start + 1}..{iterations} x batch {batch}"


@dataclasses.dataclass
class _Run:
    """Everything one training run holds, built by :func:`_build_run` (fresh or from a checkpoint)."""

    model: SegmentationModel
    family: str
    vocab: Vocabulary
    task: Task
    net: torch.nn.Module
    weights: dict[str, float]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: str
    amp_dtype: torch.dtype | None
    start: int


def _prepare_run_dir(out_dir: Path, resume: bool, overwrite: bool, is_main: bool) -> None:
    """Check ``out_dir`` (fresh start: empty), then delete an earlier run (``overwrite``) or the
    temporary files of killed writes; every rank waits for rank 0."""
    check_run_dir(out_dir, resume, overwrite)
    if is_main:
        removed = clear_run(out_dir) if overwrite else remove_stale_temp_files(out_dir)
        if removed:
            what = "previous run" if overwrite else "stale temporary files"
            _log.info("removed the %s in %s: %s", what, out_dir, ", ".join(removed))
    barrier()  # every rank has checked the folder before rank 0 writes into it


def _resume_state(cfg: TrainConfig, ckpt_dir: Path, is_main: bool) -> dict[str, Any]:
    """The newest checkpoint in ``ckpt_dir`` (``--resume``), saying where it continues and what changed."""
    latest = ckpt.latest_checkpoint(ckpt_dir)
    if latest is None:
        raise ConfigError(f"--resume: no checkpoint in {ckpt_dir}; run without --resume to start")
    state = ckpt.load_checkpoint(latest)
    if is_main:
        _log.info("resuming from %s (iteration %d of %d)",
                  latest, int(state["iteration"]), cfg.solver.iterations)
    changed = _changed_keys(TrainConfig.from_json(state["config"]).to_dict(), cfg.to_dict())
    if changed and is_main:
        _log.info("resume: the config differs from the checkpoint's in %s", ", ".join(changed))
    return state


def _build_run(cfg: TrainConfig, state: dict[str, Any] | None, dist: Any) -> _Run:
    """Model, task, optimizer and scaler on ``dist.device``; restored from ``state`` when resuming.
    The same seed on every rank gives the same initial weights."""
    device, rank, world = dist.device, dist.rank, dist.world_size
    torch.manual_seed(cfg.seed)
    section = cfg.model
    if state is not None and section.weights is None:  # the checkpoint overwrites every weight anyway
        section = dataclasses.replace(section, clip_weights=None, random_init=True)
    model, family = build_training_model(section)
    model.to(device)
    vocab = vocabulary(cfg.data)
    task = build_task(family, model, vocab, cfg.loss, cfg.data.ignore_index).to(device)
    optimizer = build_optimizer(model, cfg.solver)
    precision = _precision(cfg.precision, device, dist.is_main)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    start = 0
    torch.manual_seed(cfg.seed + rank)  # per-rank stream (point sampling, drop path)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start = int(state["iteration"])
        rngs = state["rng"]
        if len(rngs) == world:
            ckpt.set_rng_state(rngs[rank])
        else:  # a different number of processes cannot continue the same random streams
            torch.manual_seed(cfg.seed + rank + 1_000_003 * start)
            if dist.is_main:
                _log.info("resume: %d saved RNG streams for %d ranks; reseeding", len(rngs), world)
    net = data_parallel(task, device, cfg.find_unused_parameters) if world > 1 else task
    return _Run(model, family, vocab, task, net, task.loss_weights(), optimizer, scaler, precision,
                _AMP[precision], start)


def _train_loader(cfg: TrainConfig, pairs: list, run: _Run, dist: Any) -> tuple[Any, int]:
    """An endless, seeded batch stream (iterator) and its worker count; resuming skips the samples
    already consumed."""
    micro = cfg.micro_batch(dist.world_size)
    consumed = run.start * micro * cfg.solver.accumulation
    sampler = ResumableSampler(len(pairs), micro, cfg.seed, dist.rank, dist.world_size, start=consumed)
    workers = _workers(cfg.workers, dist.world_size)
    dataset = TrainDataset(pairs, cfg.augment, cfg.seed, len(run.vocab), cfg.data.ignore_index)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers,
        collate_fn=collate, pin_memory=dist.device.type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator(),  # keeps the DataLoader off the global RNG (exact resume)
    )
    return iter(loader), workers


def _eval_inputs(cfg: TrainConfig) -> tuple[Any, list, Any]:
    """The periodic evaluation's data section, image/label pairs and vocabulary (empty fields of
    ``cfg.eval.data`` fall back to the training data's; nothing without ``eval.period``)."""
    eval_data = cfg.eval.data
    classes = eval_data.classes or (None if eval_data.benchmark else cfg.data.classes)
    eval_data = dataclasses.replace(eval_data, root=eval_data.root or cfg.data.root, classes=classes)
    eval_pairs = image_label_pairs(eval_data) if cfg.eval.period else []
    if cfg.eval.max_images:
        eval_pairs = eval_pairs[: cfg.eval.max_images]
    return eval_data, eval_pairs, vocabulary(eval_data) if cfg.eval.period else None


def _start_line(cfg: TrainConfig, out_dir: Path, run: _Run, n_images: int, dist: Any, workers: int) -> str:
    names = ", ".join(run.vocab.names[:5]) + (", ..." if len(run.vocab) > 5 else "")
    where = f"{cfg.data.benchmark} {cfg.data.split} in " if cfg.data.benchmark else ""
    left = _iterations_left(run.start, cfg.solver.iterations, cfg.solver.batch_size)
    return (f"training {cfg.name or run.family}: {n_images} images ({where}{cfg.data.root}), "
            f"{len(run.vocab)} classes ({names}); device {dist.device}, {dist.world_size} process(es), "
            f"{run.precision}, {workers} data worker(s); {left}; writing to {out_dir}")


def _train_step(
    cfg: TrainConfig, run: _Run, batches: Any, it: int, dist: Any
) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
    """Iteration ``it``: set its lr, forward/backward every micro-batch, clip, step. Returns the loss
    terms averaged over the micro-batches, the gradient norm and the seconds spent waiting for data."""
    accum, world = cfg.solver.accumulation, dist.world_size
    set_lr(run.optimizer, cfg.solver.lr, lr_factor(it, cfg.solver))
    sums: dict[str, torch.Tensor] = {}
    data_time = 0.0
    for step in range(accum):
        t0 = time.perf_counter()
        images, labels = _next_batch(batches)
        images, labels = images.to(dist.device, non_blocking=True), labels.to(dist.device, non_blocking=True)
        data_time += time.perf_counter() - t0
        # DDP reduces the gradients in the backward of the last micro-batch only
        sync = step == accum - 1 or world == 1
        parts = forward_backward(run.net, run.task, images, labels, run.weights, run.scaler, run.amp_dtype,
                                 accum, sync)
        for name, value in parts.items():
            sums[name] = sums.get(name, 0.0) + value / accum
    if it == run.start and world > 1 and not cfg.find_unused_parameters:
        _check_all_used(run.model)
    run.scaler.unscale_(run.optimizer)
    grad_norm = clip_gradients(run.optimizer, cfg.solver.clip_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return sums, grad_norm, data_time


def _save_checkpoint(cfg: TrainConfig, run: _Run, ckpt_dir: Path, done: int, dist: Any) -> None:
    """Checkpoint after ``done`` iterations (collective: gathers every rank's random streams)."""
    rngs = all_gather_object(ckpt.rng_state())
    if dist.is_main:
        micro = cfg.micro_batch(dist.world_size)
        path = ckpt.save_checkpoint(ckpt.checkpoint_path(ckpt_dir, done), {
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(), "iteration": done, "rng": rngs,
            # the schedule is a pure function of the iteration; its next factor, for reference
            "scheduler": {"next_iteration": done, "lr_factor": lr_factor(done, cfg.solver)},
            "data_position": done * micro * cfg.solver.accumulation,  # samples consumed per rank
            "world_size": dist.world_size, "config": cfg.to_json(),
        })
        ckpt.prune_checkpoints(ckpt_dir, cfg.keep_checkpoints)
        _log.info("saved checkpoint %s (iteration %d)", path, done)
    barrier()


def _train_loop(
    cfg: TrainConfig,
    run: _Run,
    batches: Any,
    evaluation: tuple[Any, list, Any],
    logger: MetricLogger,
    out_dir: Path,
    dist: Any,
) -> tuple[int, dict[str, float], dict[str, float]]:
    """Iterations ``run.start`` to the last: steps, metric lines, checkpoints and evaluations
    (``evaluation``: :func:`_eval_inputs`). Returns (completed iterations, the last logged metrics,
    the last evaluation)."""
    eval_data, eval_pairs, eval_vocab = evaluation
    ckpt_dir = out_dir / "checkpoints"
    metrics: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    done = logged_at = run.start
    tic = time.perf_counter()
    run.net.train()
    for it in range(run.start, cfg.solver.iterations):
        sums, grad_norm, data_time = _train_step(cfg, run, batches, it, dist)
        done = it + 1
        if done % cfg.log_period == 0 or done == cfg.solver.iterations or done == 1:
            metrics = all_reduce_mean({k: float(v) for k, v in sums.items()})
            elapsed, tic = time.perf_counter() - tic, time.perf_counter()
            metrics.update(lr=cfg.solver.lr * lr_factor(it, cfg.solver), grad_norm=float(grad_norm),
                           data_time=data_time, sec_per_iter=elapsed / (done - logged_at))
            logged_at = done
            eta = metrics["sec_per_iter"] * (cfg.solver.iterations - done)
            logger.log(done, metrics, progress=f"{done}/{cfg.solver.iterations}", suffix=f"eta {_eta(eta)}")
        if done % cfg.checkpoint_period == 0 or done == cfg.solver.iterations:
            _save_checkpoint(cfg, run, ckpt_dir, done, dist)
        if _evaluates(cfg, done):
            last_eval = evaluate(run.model, eval_pairs, eval_vocab, dist.device, eval_data.ignore_index,
                                 dist.rank, dist.world_size, run.precision, cfg.eval.convention,
                                 cfg.eval.options)
            logger.log(done, {f"eval/{k}": v for k, v in last_eval.items()})
            if dist.is_main:
                write_curves(out_dir)  # curves.png: losses, lr, eval mIoU so far
    return done, metrics, last_eval


def _evaluates(cfg: TrainConfig, done: int) -> bool:
    """Whether the run evaluates (and redraws its curves) after iteration ``done``: every
    ``eval.period`` iterations and after the last one."""
    return bool(cfg.eval.period) and (done % cfg.eval.period == 0 or done == cfg.solver.iterations)


def _write_final_model(cfg: TrainConfig, run: _Run, out_dir: Path, done: int, dist: Any) -> Path:
    """Rank 0 writes ``model_final.safetensors`` (the trained model, ``done`` iterations) and the
    final curves, unless the evaluation after the last iteration has just drawn them (each set of
    new points is drawn once); every rank gets the file's path."""
    final = out_dir / "model_final.safetensors"
    if dist.is_main:
        from ovss.weights.modelfile import save_model_file

        save_model_file(final, run.model.state_dict(), run.model.config, run.family,
                        name=cfg.name or run.family, source_format="ovss_train", iteration=str(done))
        _log.info("wrote %s", final)
        if not _evaluates(cfg, done):
            write_curves(out_dir)
    return final


def train(
    cfg: TrainConfig, out_dir: str | Path, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) the run described by ``cfg``, writing to ``out_dir``.

    Collective: with torchrun every rank calls it with the same arguments, inside
    :func:`ovss.distributed.distributed_session` (as ``ovss train`` does), which leaves the group.
    A fresh start needs an empty (or missing) ``out_dir``; ``overwrite`` first deletes the files of an
    earlier run there (:mod:`ovss.engine.rundir`). Temporary files left by a killed write are removed
    on every start. Progress lines go to the ``ovss.train`` logger (``ovss train`` shows them).

    Raises:
        ConfigError: ``out_dir`` holds files and neither ``resume`` nor ``overwrite`` is set;
            ``resume`` without a checkpoint.

    Returns:
        ``{"iteration", "model", "metrics", "eval"}``: completed iterations, the exported model file,
        the last logged metrics and the last evaluation (empty without one).
    """
    dist = init_distributed(cfg.device)
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    cfg.micro_batch(dist.world_size)  # a batch the ranks cannot split fails before any file changes
    _prepare_run_dir(out_dir, resume, overwrite, dist.is_main)
    state = _resume_state(cfg, ckpt_dir, dist.is_main) if resume else None
    if state is not None:
        complete = _complete_run(out_dir, int(state["iteration"]), cfg.solver.iterations, dist.is_main)
        if complete is not None:
            return complete
    if cfg.tf32 and dist.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    run = _build_run(cfg, state, dist)
    pairs = image_label_pairs(cfg.data)
    batches, workers = _train_loader(cfg, pairs, run, dist)
    evaluation = _eval_inputs(cfg)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg.to_json(out_dir / "config.json")
        _log.info("%s", _start_line(cfg, out_dir, run, len(pairs), dist, workers))
    logger = MetricLogger(out_dir, dist.is_main, cfg.tensorboard, cfg.wandb_project, cfg.to_dict(),
                          resume_from=run.start if state is not None else None)
    done, metrics, last_eval = _train_loop(cfg, run, batches, evaluation, logger, out_dir, dist)
    final = _write_final_model(cfg, run, out_dir, done, dist)
    logger.close()
    barrier()
    return {"iteration": done, "model": final, "metrics": metrics, "eval": last_eval}
