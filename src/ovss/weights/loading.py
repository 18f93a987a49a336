"""Reading checkpoint files and loading state dicts strictly.

``read_state_dict`` opens any supported file (safetensors, ``torch.save`` pickles read with
``weights_only=True``, OpenAI's TorchScript CLIP archives) and unwraps ``{"model": sd}`` /
``{"state_dict": sd}``. ``load_strict`` loads into a module only when every key is consumed and every
shape matches, and otherwise raises ONE :class:`~ovss.errors.CheckpointMismatchError` listing all
offending keys. Key remapping never happens here: see :mod:`ovss.weights.formats`.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ovss.errors import CheckpointMismatchError
from ovss.weights.formats import unwrap_checkpoint

_WRAPPER_KEYS = ("model", "state_dict")
_SHOW = 8  # keys shown per category in mismatch messages


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding a ``constants.pkl`` record."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in zf.namelist())


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Bare state dict out of ``{"model": sd}``, ``{"state_dict": sd}`` or ``sd``."""
    for _ in range(2):  # e.g. {"state_dict": {"model": sd}} is unwrapped too
        obj = unwrap_checkpoint(obj, _WRAPPER_KEYS)  # type: ignore[arg-type]
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(
            f"{path} holds a {type(obj).__name__}, not a state dict; save model.state_dict() instead"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointMismatchError(
            f"{path} is not a state dict: {len(bad)} non-tensor entries ({_short(bad)}); "
            f"pass a file holding a state dict, {{'model': sd}} or {{'state_dict': sd}}"
        )
    return {str(k): v for k, v in obj.items()}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{key: tensor}`` dict on the CPU.

    Args:
        path: ``.safetensors``, a ``torch.save`` file (read with ``weights_only=True``) holding a
            state dict, ``{"model": sd}`` or ``{"state_dict": sd}``, or an OpenAI CLIP TorchScript
            archive (its parameters are read with ``torch.jit.load``; dtypes are kept as stored).

    Returns:
        the state dict, tensors on the CPU in their stored dtype.

    Raises:
        WeightsNotFoundError: the file does not exist.
        WeightsFileError: the path is a folder or not a regular file.
        CheckpointMismatchError: the file cannot be read or holds no state dict.
    """
    from ovss.weights.modelfile import check_regular_file

    path = check_regular_file(Path(path))  # missing, a folder or a FIFO: one clear error, no hang
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        if _is_torchscript(path):
            with warnings.catch_warnings():  # torch.jit is deprecated, but OpenAI ships these archives
                warnings.simplefilter("ignore", DeprecationWarning)
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        with warnings.catch_warnings():  # "Detected pickle protocol 4 ... please file an issue": noise here
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except CheckpointMismatchError:
        raise
    except pickle.UnpicklingError as e:  # torch's text suggests weights_only=False: never for a bad file
        raise CheckpointMismatchError(
            f"cannot read checkpoint {path}: not a torch.save file of plain tensors "
            f"({_unpickler_reason(e)}); ovss never unpickles other Python objects (they could run code); "
            f"pass a safetensors file or a torch.save'd state dict of plain tensors"
        ) from None
    except Exception as e:  # torch / safetensors raise many unrelated types for bad files
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointMismatchError(
            f"cannot read checkpoint {path} ({type(e).__name__}: {reason}); pass a safetensors file or a "
            f"torch.save'd state dict of plain tensors"
        ) from None
    return _unwrap(obj, path)


def _unpickler_reason(error: Exception) -> str:
    """The weights-only unpickler's own reason ("Unsupported global: GLOBAL posix.system"), one line."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    return " ".join(text.split())[:200] or type(error).__name__


def _short(items: list[str], show: int = _SHOW) -> str:
    """First ``show`` items joined, then ``... (+N more)``."""
    head = ", ".join(items[:show])
    return head if len(items) <= show else f"{head}, ... (+{len(items) - show} more)"


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
            parts.append(f"{len(missing)} missing [{_short(missing)}]")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected [{_short(unexpected)}]")
        if wrong:
            parts.append(f"{len(wrong)} wrong shape [{_short(wrong)}]")
        raise CheckpointMismatchError(
            f"checkpoint {what} does not fit {name}: {'; '.join(parts)}; check that the weights match "
            f"this architecture and were converted with the right source format"
        )
    module.load_state_dict(dict(state_dict), strict=True, assign=assign)
    return module
