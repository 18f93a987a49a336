"""Read stage of the weights pipeline: a checkpoint file -> its tensors.

``read_state_dict`` opens any supported file (safetensors, ``torch.save`` pickles read with
``weights_only=True``, OpenAI's TorchScript CLIP archives) and unwraps ``{"model": sd}`` /
``{"state_dict": sd}``. ``read_checkpoint`` is the stage's entry: an ovss model file comes back as a
:class:`CheckedModelFile` (header and metadata checked; its ``tensors()`` verify the digest before
reading the data), any other file as an official state dict with its sha256, for the convert stage
(:mod:`ovss.weights.detect`).
"""

from __future__ import annotations

import dataclasses
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ovss.errors import CheckpointMismatchError
from ovss.utils import sha256_file, short_list
from ovss.weights.formats import unwrap_checkpoint
from ovss.weights.modelfile import (
    DEFAULT_FIX,
    ModelFile,
    check_file,
    looks_like_safetensors,
    open_model_file,
    stamp_path,
)

if TYPE_CHECKING:
    from ovss.models.base import ModelConfig

_WRAPPER_KEYS = ("model", "state_dict")


@dataclasses.dataclass
class CheckedModelFile:
    """An ovss model file whose header and metadata (family, config) were checked; ``tensors()`` checks
    its digest, then reads its data. The build stage calls it once the config fits the file's shapes
    (``meta``), so nothing is hashed or allocated for a file whose config does not fit.

    Attributes:
        file: the opened file.
        config: the model config stored in it; family: its family.
        meta: meta-device stand-ins of its tensors (shapes and dtypes from the header).
        stamp: the stamp of a converted-weights cache file (its digest is checked once per change).
        digest: after ``tensors()``: sha256 of the whole file (None when the stamp made it unnecessary).
    """

    file: ModelFile
    config: ModelConfig
    family: str
    meta: dict[str, torch.Tensor]
    stamp: Path | None = None
    digest: str | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the file (CPU, stored dtype), after checking the recorded digest.

        Raises:
            WeightsFileError: the file does not have its recorded digest (corrupt or edited).
        """
        self.digest = self.file.verify(stamp=self.stamp)
        return self.file.load_tensors()


def read_checkpoint(
    path: Path, fix: str = DEFAULT_FIX, cache: bool = False, family: str | None = None, name: str = ""
) -> CheckedModelFile | tuple[dict[str, torch.Tensor], str]:
    """The read stage: an ovss model file (header and metadata checked; its tensors come digest-checked),
    or (official state dict, sha256 of the file) for any other checkpoint.

    Args:
        path: the file.
        fix: the fix quoted in errors about a bad model file.
        cache: the file is the converted-weights cache: it must be an ovss model file (one without
            ovss metadata is refused with ``fix``), and its digest is checked once per change (stamp).
        family: the family the file must hold when it is an ovss model file (read as model ``name``).

    Raises:
        WeightsNotFoundError / WeightsFileError / CheckpointMismatchError: missing, not a file, corrupt,
            edited, unreadable, of an earlier format, or of another family than ``family``.
    """
    check_file(path)
    if not cache and not looks_like_safetensors(path):
        return read_state_dict(path), sha256_file(path)
    mf = open_model_file(path, fix)
    if not cache and not mf.is_ovss:
        return mf.load_tensors(), mf.verify() or ""
    config, found = mf.model_config()
    if family is not None and found != family:
        raise CheckpointMismatchError(
            f"{path} holds a {found} model, not {name}; drop --model or pass a {family} file"
        )
    return CheckedModelFile(mf, config, found, mf.meta_tensors(), stamp_path(path) if cache else None)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding a ``constants.pkl`` record."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in zf.namelist())


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Bare state dict out of ``{"model": sd}``, ``{"state_dict": sd}`` or ``sd``."""
    for _ in range(2):  # e.g. {"state_dict": {"model": sd}} is unwrapped too
        if isinstance(obj, Mapping):
            obj = unwrap_checkpoint(obj, _WRAPPER_KEYS)
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(
            f"{path} holds a {type(obj).__name__}, not a state dict; save model.state_dict() instead"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointMismatchError(
            f"{path} is not a state dict: {len(bad)} non-tensor entries ({short_list(bad)}); "
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
    path = check_file(Path(path))  # missing, a folder or a FIFO: one clear error, no hang
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
