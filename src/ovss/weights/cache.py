"""Weights on disk: hub download, digest check, convert once to safetensors, load.

Layout under ``$OVSS_HOME`` (default ``~/.cache/ovss``):

- ``hub/`` the Hugging Face cache of downloaded source checkpoints;
- ``weights/<name>.safetensors`` converted weights; the architecture config, family, source format
  and source sha256 are stored in the file's metadata, so the file alone rebuilds the model;
- ``text/`` text-embedding caches.

``OVSS_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) never touches the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ovss.errors import (
    CheckpointMismatchError,
    DigestMismatchError,
    OvssError,
    WeightsNotFoundError,
)
from ovss.models.base import ModelConfig
from ovss.utils import atomic_write, sha256_file
from ovss.weights.registry import WeightSpec, get_weight_spec

FORMAT_VERSION = "1"

# Checkpoint formats: module ovss.weights.formats.<name> has convert(sd) and detect(sd).
MODEL_FORMATS = {"san_d2": "san", "san_mmseg": "san", "catseg_d2": "catseg", "sed_d2": "sed"}
CLIP_FORMATS = ("openai_clip", "open_clip", "hf_clip")


def ovss_home() -> Path:
    """Root of the ovss cache (``$OVSS_HOME`` or ``~/.cache/ovss``)."""
    return Path(os.environ.get("OVSS_HOME", "~/.cache/ovss")).expanduser()


def is_offline() -> bool:
    """True when ``OVSS_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true value."""
    return any(
        os.environ.get(k, "").lower() in {"1", "true", "yes", "on"}
        for k in ("OVSS_OFFLINE", "HF_HUB_OFFLINE")
    )


def converted_path(name: str) -> Path:
    """Where the converted weights of registry entry ``name`` live."""
    return ovss_home() / "weights" / f"{name}.safetensors"


def is_available(spec: WeightSpec) -> bool:
    """Whether ``spec`` can be loaded without the network."""
    return spec.source_format == "random" or converted_path(spec.name).is_file()


# ----------------------------------------------------------------------------------------- source files
def fetch_source(spec: WeightSpec) -> Path:
    """Path of the source checkpoint of ``spec``, downloading it from the hub unless offline.

    Raises:
        WeightsNotFoundError: offline and not cached, no hub copy, or the download failed.
        DigestMismatchError: the file does not have the pinned sha256.
    """
    where = converted_path(spec.name)
    if not spec.downloadable:
        raise WeightsNotFoundError(
            f"{spec.name} has no hub copy: download it from {spec.manual_url} and run "
            f"'ovss convert {spec.name} FILE' (or pass --weights FILE)"
        )
    try:
        from huggingface_hub import hf_hub_download

        path = Path(
            hf_hub_download(
                spec.hub_repo,
                spec.hub_file,
                repo_type=spec.hub_repo_type,
                cache_dir=str(ovss_home() / "hub"),
                local_files_only=is_offline(),
            )
        )
    except Exception as e:  # huggingface_hub raises several unrelated types for offline/network errors
        how = (
            "offline mode is on (OVSS_OFFLINE=1)" if is_offline() else f"download failed ({type(e).__name__})"
        )
        raise WeightsNotFoundError(
            f"{spec.name} is not in the cache ({where}) and {how}: run 'ovss download {spec.name}' with "
            f"network access, or fetch {spec.hub_file} from huggingface.co/{spec.hub_repo} and pass "
            f"--weights FILE"
        ) from None
    verify_digest(path, spec.sha256, spec.name)
    return path


def verify_digest(path: Path, expected: str | None, what: str) -> str:
    """sha256 of ``path``; raises DigestMismatchError when ``expected`` is given and differs."""
    digest = sha256_file(path)
    if expected is not None and digest != expected.lower():
        raise DigestMismatchError(
            f"{path} has sha256 {digest[:16]}..., expected {expected[:16]}... for {what}; the file is not "
            f"used: delete it and download again ('ovss download {what}')"
        )
    return digest


# ----------------------------------------------------------------------------------------- conversion
def convert_state_dict(source_format: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply the converter ``ovss.weights.formats.<source_format>.convert``."""
    import importlib

    if source_format not in MODEL_FORMATS and source_format not in CLIP_FORMATS:
        known = ", ".join([*MODEL_FORMATS, *CLIP_FORMATS])
        raise OvssError(f"unknown checkpoint format {source_format!r}; known: {known}")
    module = importlib.import_module(f"ovss.weights.formats.{source_format}")
    return module.convert(state_dict)


def detect_format(state_dict: dict[str, torch.Tensor], family: str | None = None) -> str:
    """Name of the model checkpoint format whose ``detect`` accepts ``state_dict``."""
    import importlib

    for name, fam in MODEL_FORMATS.items():
        if family is not None and fam != family:
            continue
        if importlib.import_module(f"ovss.weights.formats.{name}").detect(state_dict):
            return name
    wanted = f"a {family} checkpoint" if family else "an ovss, SAN, CAT-Seg or SED checkpoint"
    sample = ", ".join(list(state_dict)[:3])
    raise CheckpointMismatchError(
        f"not {wanted}: no known key layout matches (first keys: {sample}); pass the right --model "
        f"or a checkpoint of one of: {', '.join(MODEL_FORMATS)}"
    )


def save_model_file(
    path: Path, state_dict: dict[str, torch.Tensor], config: ModelConfig, family: str, **meta: str
) -> Path:
    """Atomically write weights + architecture into one safetensors file."""
    from safetensors.torch import save_file

    metadata = {
        "ovss_format": FORMAT_VERSION,
        "family": family,
        "config": config.to_json(),
        **meta,
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    return atomic_write(Path(path), lambda p: save_file(tensors, str(p), metadata=metadata))


def read_model_file(path: Path) -> tuple[ModelConfig, str, dict[str, torch.Tensor], dict[str, str]]:
    """Read a file written by :func:`save_model_file`: (config, family, state dict, metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ovss.models.build import family_classes

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("ovss_format") is None:
        raise CheckpointMismatchError(
            f"{path} is a safetensors file without ovss metadata; pass it with --model NAME --weights {path}"
        )
    family = metadata["family"]
    config = family_classes(family)[0].from_json(metadata["config"])
    return config, family, load_file(str(path)), metadata


def convert_checkpoint(spec: WeightSpec, source: Path, out: Path | None = None) -> Path:
    """Convert an official checkpoint file of ``spec`` into ovss's format (once; atomic)."""
    from ovss.weights.loading import read_state_dict

    out = Path(out) if out is not None else converted_path(spec.name)
    digest = verify_digest(Path(source), spec.sha256, spec.name)
    config = spec.config()
    state_dict = convert_state_dict(spec.source_format, read_state_dict(Path(source)))
    _check_fits(state_dict, config, f"{source} as {spec.name}")
    return save_model_file(
        out,
        state_dict,
        config,
        spec.family,
        name=spec.name,
        source_format=spec.source_format,
        source_sha256=digest,
    )


def _check_fits(state_dict: dict[str, torch.Tensor], config: ModelConfig, what: str) -> None:
    from ovss.models.build import build_model
    from ovss.weights.loading import load_strict

    with torch.device("meta"):
        model = build_model(config)
    load_strict(model, state_dict, what, assign=True)


# ----------------------------------------------------------------------------------------- loading
def load_model(name_or_path: str | Path, weights: str | Path | None = None) -> tuple[Any, dict[str, Any]]:
    """Build a model with its weights (float32, CPU, eval mode).

    Args:
        name_or_path: a registry name (downloads and converts once), a converted ``.safetensors`` file
            or an official checkpoint file (its format and variant are detected).
        weights: an explicit checkpoint file for the registry name given (official or converted).

    Returns:
        (model, info) where info has name, family, source and digest fields.
    """
    from ovss.models.build import build_model
    from ovss.weights.loading import load_strict

    name = str(name_or_path)
    path = Path(name)
    if weights is None and (path.suffix in {".pth", ".pt", ".pkl", ".bin", ".safetensors"} or path.is_file()):
        return _load_file(path, spec=None)
    spec = get_weight_spec(name)
    if weights is not None:
        return _load_file(Path(weights), spec=spec)
    if spec.source_format == "random":
        torch.manual_seed(spec.seed)
        model = build_model(spec.config())
        return model, {
            "name": spec.name,
            "family": spec.family,
            "source": "random",
            "digest": f"random{spec.seed}",
        }
    target = converted_path(spec.name)
    if not target.is_file():
        convert_checkpoint(spec, fetch_source(spec), target)
    config, family, state_dict, meta = read_model_file(target)
    model = build_model(config)
    load_strict(model, state_dict, f"{target}")
    return model, {
        "name": spec.name,
        "family": family,
        "source": str(target),
        "digest": meta.get("source_sha256", ""),
    }


def _load_file(path: Path, spec: WeightSpec | None) -> tuple[Any, dict[str, Any]]:
    from ovss.models.build import build_model
    from ovss.weights.loading import load_strict, read_state_dict

    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint file {path} does not exist; check the path")
    digest = sha256_file(path)
    name = spec.name if spec else path.stem
    if path.suffix == ".safetensors" and _has_ovss_metadata(path):
        config, family, state_dict, meta = read_model_file(path)
        name = meta.get("name", name) if spec is None else name
        if spec is not None and family != spec.family:
            raise CheckpointMismatchError(
                f"{path} holds a {family} model, not {spec.name}; drop --model or pass a {spec.family} file"
            )
    else:
        raw = read_state_dict(path)
        source_format = detect_format(raw, spec.family if spec else None)
        state_dict = convert_state_dict(source_format, raw)
        if spec is not None:
            config, family = spec.config(), spec.family
        else:
            config, family = _match_variant(state_dict, source_format, path)
    model = build_model(config)
    load_strict(model, state_dict, str(path))
    return model, {"name": name, "family": family, "source": str(path), "digest": digest}


def _has_ovss_metadata(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return "ovss_format" in (f.metadata() or {})


def _match_variant(
    state_dict: dict[str, torch.Tensor], source_format: str, path: Path
) -> tuple[ModelConfig, str]:
    """The registered config whose parameter shapes equal ``state_dict``'s."""
    from ovss.weights.registry import WEIGHTS

    candidates = [s for s in WEIGHTS if s.source_format == source_format]
    for spec in candidates:
        try:
            config = spec.config()
            _check_fits(state_dict, config, str(path))
        except CheckpointMismatchError:
            continue
        return config, spec.family
    names = ", ".join(s.name for s in candidates)
    raise CheckpointMismatchError(
        f"{path} is a {source_format} checkpoint but fits none of {names}; pass --model NAME to see "
        f"which keys differ"
    )


def describe_cache() -> dict[str, Any]:
    """Summary of what is on disk (for ``ovss models``)."""
    return {"home": str(ovss_home()), "offline": is_offline()}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically write ``data`` as indented JSON."""
    atomic_write(Path(path), lambda p: p.write_text(json.dumps(data, indent=2) + "\n"))
