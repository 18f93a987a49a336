"""AdamW with the official parameter groups, the learning-rate schedules, full-model gradient clipping.

Parameter groups follow the official ``build_optimizer`` (Mask2Former / SAN / CAT-Seg / SED
``train_net.py``): walk ``model.named_modules()``; for every trainable parameter (each once):

* lr = base lr x the product of ``solver.lr_multipliers[prefix]`` over the prefixes of its name
  (``{"clip": 0.01}``: CAT-Seg / SED ``CLIP_MULTIPLIER``);
* weight decay = ``solver.weight_decay``, or 0 when the name contains a ``no_decay_keywords`` entry
  (SAN: ``pos_embed``, ``positional_embedding``, ...), or ``weight_decay_norm`` when the owning
  module is a norm layer (BatchNorm, GroupNorm, InstanceNorm, LayerNorm, LocalResponseNorm) unless
  the name matches ``norm_decay_exempt`` (ovss uses ``nn.LayerNorm`` where the official code has a
  hand-written LayerNorm that the official rule does not recognise, e.g. SAN's fusion norms), or
  ``weight_decay_embed`` for ``nn.Embedding``.

Parameters with equal (lr multiplier, weight decay) share one group (the official code makes one
group per parameter; AdamW's update is per parameter, so the result is the same).

The schedule is a pure function of the iteration (:func:`lr_factor`), as detectron2's
``WarmupPolyLR`` (DeepLab) and ``WarmupCosineLR``: the lr of iteration ``it`` (0-based) is
``base x multiplier x warmup(it) x schedule(it / iterations)``.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import torch
from torch import nn

from ovss.engine.config import SolverConfig

NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def param_settings(model: nn.Module, solver: SolverConfig) -> list[tuple[str, nn.Parameter, float, float]]:
    """(name, parameter, lr multiplier, weight decay) of every trainable parameter, in module order."""
    seen: set[int] = set()
    out = []
    for module_name, module in model.named_modules():
        for local, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{local}" if module_name else local
            mult = 1.0
            for prefix, factor in solver.lr_multipliers.items():
                if name == prefix or name.startswith(prefix + "."):
                    mult *= factor
            decay = solver.weight_decay
            if any(k in name for k in solver.no_decay_keywords):
                decay = 0.0
            exempt = any(fnmatch.fnmatchcase(name, p) for p in solver.norm_decay_exempt)
            if isinstance(module, NORM_TYPES) and not exempt:
                decay = solver.weight_decay_norm
            if isinstance(module, nn.Embedding):
                decay = solver.weight_decay_embed
            out.append((name, param, mult, decay))
    return out


def param_groups(model: nn.Module, solver: SolverConfig) -> list[dict[str, Any]]:
    """Optimizer groups ``{"params", "names", "lr_mult", "lr", "weight_decay"}``, one per distinct setting."""
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, param, mult, decay in param_settings(model, solver):
        group = groups.setdefault(
            (mult, decay),
            {"params": [], "names": [], "lr_mult": mult, "lr": solver.lr * mult, "weight_decay": decay},
        )
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, solver: SolverConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` grouped by :func:`param_groups`."""
    groups = param_groups(model, solver)
    if not groups:
        raise ValueError("the model has no trainable parameters; check its freeze rule")
    return torch.optim.AdamW(groups, lr=solver.lr, betas=solver.betas, eps=solver.eps)


def warmup_factor(it: int, warmup_iters: int, factor: float, method: str) -> float:
    """detectron2 ``_get_warmup_factor_at_iter``: 1 after the warm-up, else constant or linear ramp."""
    if it >= warmup_iters:
        return 1.0
    if method == "constant":
        return factor
    alpha = it / warmup_iters
    return factor * (1 - alpha) + alpha


def lr_factor(it: int, solver: SolverConfig) -> float:
    """Multiplier of the base lr at (0-based) iteration ``it``.

    poly: ``(1 - it / iterations) ** power`` (DeepLab ``WarmupPolyLR``); cosine:
    ``0.5 * (1 + cos(pi * it / iterations))`` (``WarmupCosineLR``); constant: 1; times the warm-up factor.
    """
    progress = min(max(it, 0), solver.iterations) / solver.iterations
    if solver.schedule == "poly":
        value = (1.0 - progress) ** solver.poly_power
    elif solver.schedule == "cosine":
        value = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        value = 1.0
    return warmup_factor(it, solver.warmup_iters, solver.warmup_factor, solver.warmup_method) * value


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    """Set every group's lr to ``base_lr x group["lr_mult"] x factor``."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_mult", 1.0) * factor


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    """Full-model gradient clipping: one L2 norm over every parameter of every group.

    Returns:
        () total gradient norm before clipping (``max_norm <= 0`` only measures it).
    """
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not params:
        return torch.zeros(())
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
