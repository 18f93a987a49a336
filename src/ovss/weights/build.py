"""Build stage of the weights pipeline: config -> module, then a strict load.

``check_fits`` builds a config on the meta device (bounded by the tensors given, so a crafted config
asking for a huge model fails in milliseconds) and compares keys and shapes; ``build`` builds the real
module and loads a state dict into it. ``load_strict`` loads only when every key is consumed and every
shape matches, and otherwise raises ONE :class:`~ovss.errors.CheckpointMismatchError` listing all
offending keys. Key remapping never happens here: see :mod:`ovss.weights.detect` and
:mod:`ovss.weights.formats`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from ovss.errors import CheckpointMismatchError
from ovss.models.build import build_model
from ovss.utils import short_list

if TYPE_CHECKING:
    from ovss.models.base import ModelConfig


def mismatches(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Keys the module expects but the dict lacks, keys it does not expect, and shape mismatches.

    Returns:
        (missing, unexpected, wrong_shape); wrong_shape entries read ``"key ckpt (a, b) != model (c, d)"``.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} ckpt {tuple(v.shape)} != model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    return missing, unexpected, wrong


def load_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    what: str,
    assign: bool = False,
    model: str | None = None,
) -> nn.Module:
    """Load ``state_dict`` into ``module``: every key consumed, every shape checked.

    Values are copied into the existing parameters (cast to their dtype and device) unless
    ``assign`` is True, which adopts the given tensors (e.g. into a module built on the meta device).

    Args:
        module: the target module.
        state_dict: keys already in the module's layout (converted by ``ovss.weights.formats``).
        what: which checkpoint this is (a path or weights name), for the error message.
        assign: adopt the tensors instead of copying (``nn.Module.load_state_dict(assign=True)``).
        model: name of the model for the error message (default: the module's class name).

    Returns:
        ``module``.

    Raises:
        CheckpointMismatchError: one error listing every missing, unexpected and wrongly shaped key.
    """
    missing, unexpected, wrong = mismatches(module, state_dict)
    if missing or unexpected or wrong:
        name = model or type(module).__name__
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing [{short_list(missing)}]")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected [{short_list(unexpected)}]")
        if wrong:
            parts.append(f"{len(wrong)} wrong shape [{short_list(wrong)}]")
        raise CheckpointMismatchError(
            f"checkpoint {what} does not fit {name}: {'; '.join(parts)}; check that the weights match "
            f"this architecture and were converted with the right source format"
        )
    module.load_state_dict(dict(state_dict), strict=True, assign=assign)
    return module


class _BudgetExceededError(Exception):
    pass


@contextmanager
def _build_budget(max_count: int, max_numel: int) -> Iterator[None]:
    """Abort module construction (on this thread) past ``max_count`` tensors or ``max_numel`` elements."""
    from torch.nn.modules import module as nn_module

    thread = threading.get_ident()
    seen = [0, 0]

    def count(_module: object, _name: str, tensor: torch.Tensor | None) -> None:
        if tensor is None or threading.get_ident() != thread:
            return
        seen[0] += 1
        seen[1] += tensor.numel()
        if seen[0] > max_count or seen[1] > max_numel:
            raise _BudgetExceededError

    hooks = [
        nn_module.register_module_parameter_registration_hook(count),
        nn_module.register_module_buffer_registration_hook(count),
    ]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def check_fits(config: ModelConfig, tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Build ``config`` on the meta device and strictly compare it with ``tensors`` (shapes only).

    The build is bounded by the tensors given: more than twice their count (+64) or their element count
    (+64 Mi elements for derived buffers) aborts it, so a config asking for a huge model fails in
    milliseconds without allocating.

    Raises:
        CheckpointMismatchError: too large for the file, or keys / shapes differ (all listed).
    """
    numel = sum(t.numel() for t in tensors.values())
    try:
        with _build_budget(2 * len(tensors) + 64, 2 * numel + (64 << 20)), torch.device("meta"):
            model = build_model(config)
    except _BudgetExceededError:
        raise CheckpointMismatchError(
            f"{what}: its config asks for a model far larger than the {len(tensors)} tensors "
            f"({numel} values) stored with it; the file is corrupt or crafted, re-convert it"
        ) from None
    load_strict(model, tensors, what, assign=True)


def build(
    config: ModelConfig,
    tensors: Callable[[], Mapping[str, torch.Tensor]],
    what: str,
    meta: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """The model of ``config`` (float32, CPU) with the weights ``tensors()`` loaded strictly.

    Args:
        config: the architecture.
        tensors: gives the state dict (ovss layout); called once, after the fit check when ``meta``
            is given, so a file's data is read only once its config is known to fit it.
        what: the checkpoint, for error messages.
        meta: stand-ins of the tensors (shapes and dtypes, e.g. a file's header): checked with
            :func:`check_fits` before anything is allocated.

    Raises:
        CheckpointMismatchError: the config does not fit the tensors (every key listed).
    """
    if meta is not None:
        check_fits(config, meta, what)
    model = build_model(config)
    load_strict(model, tensors(), what)
    return model
