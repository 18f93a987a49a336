"""Checkpoint converters: one module per source format, each a pure ``convert`` plus ``detect``.

CLIP formats (into the :class:`ovss.towers.clip.CLIP` layout ``visual.*``, ``text.*``,
``logit_scale``): ``openai_clip`` (OpenAI's ``clip`` package, incl. its TorchScript archives),
``open_clip`` (ViT and timm-ConvNeXt towers) and ``hf_clip`` (transformers ``CLIPModel``). Their
``convert(state_dict, split_qkv=None)`` can also target the split q/k/v attention layout (CAT-Seg).

This package module holds the small helpers the converters share; it imports no converter.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Collection, Mapping, Sequence

import torch

from ovss.errors import CheckpointMismatchError
from ovss.layers.attention import pack_in_proj, split_in_proj
from ovss.utils import short_list

CLIP_FORMAT_NAMES = ("hf_clip", "openai_clip", "open_clip")  # detection order: most specific first

# Top-level names of the text tower in OpenAI / open_clip files (``text.`` in ovss).
TEXT_ROOTS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")

# Where the official detectron2 models (CAT-Seg, SED) keep their CLIP, and the key prefixes of its text
# tower there (SAN's ``ov_classifier.*`` uses the same prefixes).
D2_CLIP_PREFIX = "sem_seg_head.predictor.clip_model."
D2_TEXT_PREFIXES = (
    "transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection"
)

# One renaming rule of a converter table: (pattern matched in full, builder of the new key from the match).
Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]
# Renames one entry: (key, tensor) -> (new key, tensor possibly reshaped), or None when no rule applies.
Rename = Callable[[str, torch.Tensor], tuple[str, torch.Tensor] | None]


def is_text_root(key: str) -> bool:
    """Whether an OpenAI / open_clip top-level key belongs to the text tower."""
    root = key.split(".", 1)[0]
    return root in TEXT_ROOTS


def unwrap_checkpoint(
    state_dict: Mapping[str, object], containers: Sequence[str] = ("model",)
) -> Mapping[str, object]:
    """The state dict inside a training checkpoint, or ``state_dict`` itself.

    Args:
        state_dict: ``{"model": sd, ...}`` (detectron2), ``{"state_dict": sd, ...}`` (mmseg) or a
            bare ``sd``.
        containers: the wrapper keys to look in, first match wins.
    """
    if isinstance(state_dict, Mapping):
        for key in containers:
            inner = state_dict.get(key)
            if isinstance(inner, Mapping):
                return inner
    return state_dict


def missing_keys(state_dict: object, required: Sequence[str]) -> list[str]:
    """The ``required`` keys absent from ``state_dict`` (all of them when it is not a mapping)."""
    return [k for k in required if not isinstance(state_dict, Mapping) or k not in state_dict]


def require_keys(state_dict: object, required: Sequence[str], what: str, fix: str) -> None:
    """Refuse a checkpoint that lacks any ``required`` key.

    Raises:
        CheckpointMismatchError: ``not <what> checkpoint: missing <keys>; <fix>``.
    """
    missing = missing_keys(state_dict, required)
    if missing:
        raise CheckpointMismatchError(f"not {what} checkpoint: missing {', '.join(missing)}; {fix}")


def map_d2_clip_key(rest: str) -> str | None:
    """ovss key of an official model's CLIP entry (key after ``D2_CLIP_PREFIX``), None if unknown.

    ``visual.*`` -> ``clip.visual.*``, ``logit_scale`` -> ``clip.logit_scale``, the text tower
    (``D2_TEXT_PREFIXES``) -> ``clip.text.*``.
    """
    if rest.startswith("visual."):
        return "clip." + rest
    if rest == "logit_scale":
        return "clip.logit_scale"
    if rest.startswith(D2_TEXT_PREFIXES):
        return "clip.text." + rest
    return None


def apply_rules(key: str, prefix: str, rules: Sequence[Rule], target: str) -> str | None:
    """``target + build(match)`` for the first rule matching ``key`` after ``prefix`` (None if none)."""
    if key.startswith(prefix):
        rest = key[len(prefix) :]
        for pattern, build in rules:
            match = pattern.fullmatch(rest)
            if match:
                return target + build(match)
    return None


def rename_entries(
    state_dict: Mapping[str, object], rename: Rename, layout: str, fix: str, skip: Collection[str] = ()
) -> dict[str, torch.Tensor]:
    """Apply ``rename`` to every entry (keys in ``skip`` dropped), strictly.

    Args:
        state_dict: the unwrapped source state dict.
        rename: ``(key, tensor) -> (new key, tensor)`` or None when no rule applies.
        layout: name of the source layout, for the error message.
        fix: what to pass instead, for the error message.
        skip: keys dropped without renaming (derivable buffers).

    Returns:
        A new dict in the order of ``state_dict``.

    Raises:
        CheckpointMismatchError: entries that are not tensors or that no rule maps, all listed
            (the first 20 by name, then a count).
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key in skip:
            continue
        mapped = rename(key, value) if isinstance(value, torch.Tensor) else None
        if mapped is None:
            unknown.append(key)
        else:
            out[mapped[0]] = mapped[1]
    if unknown:
        count, shown = len(unknown), short_list(unknown, 20)
        raise CheckpointMismatchError(f"{count} key(s) are not part of the {layout} layout: {shown}; {fix}")
    return out


def move_text_tower(
    state_dict: Mapping[str, torch.Tensor], drop: Collection[str], split_qkv: bool | None
) -> dict[str, torch.Tensor]:
    """OpenAI / open_clip names -> ovss ``CLIP`` names (pure; tensors are shared, not copied).

    Args:
        state_dict: ``visual.*`` plus the text tower at the top level (or already under ``text.``).
        drop: keys to leave out (derivable buffers, metadata scalars).
        split_qkv: True -> split q/k/v attention weights (CAT-Seg layout), False -> packed
            ``in_proj_weight``, None -> keep the file's layout.

    Returns:
        ``visual.*``, ``text.*`` and ``logit_scale``; unknown keys pass through unchanged so that
        strict loading reports them.
    """
    out = {("text." + k if is_text_root(k) else k): v for k, v in state_dict.items() if k not in drop}
    return set_qkv_layout(out, split_qkv)


def set_qkv_layout(state_dict: dict[str, torch.Tensor], split_qkv: bool | None) -> dict[str, torch.Tensor]:
    """Convert attention in-projections: True -> split q/k/v (CAT-Seg), False -> packed, None -> as is."""
    if split_qkv is None:
        return state_dict
    return split_in_proj(state_dict) if split_qkv else pack_in_proj(state_dict)


def detect_clip_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name of the CLIP format whose ``detect`` accepts ``state_dict``.

    Raises:
        CheckpointMismatchError: no CLIP format matches (the message shows the first keys).
    """
    for name in CLIP_FORMAT_NAMES:
        if importlib.import_module(f"{__name__}.{name}").detect(state_dict):
            return name
    sample = ", ".join(list(state_dict)[:4])
    raise CheckpointMismatchError(
        f"not a CLIP checkpoint in a known layout (first keys: {sample}); expected OpenAI/open_clip "
        f"(visual.*, token_embedding.weight, ...) or transformers CLIPModel (vision_model.*, text_model.*)"
    )


def convert_clip(
    state_dict: Mapping[str, torch.Tensor], split_qkv: bool | None = None
) -> dict[str, torch.Tensor]:
    """Detect the CLIP format of ``state_dict`` and convert it to the ovss ``CLIP`` layout."""
    name = detect_clip_format(state_dict)
    return importlib.import_module(f"{__name__}.{name}").convert(state_dict, split_qkv=split_qkv)
