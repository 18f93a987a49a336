"""Checkpoint converters: one module per source format, each a pure ``convert`` plus ``detect``.

CLIP formats (into the :class:`ovss.towers.clip.CLIP` layout ``visual.*``, ``text.*``,
``logit_scale``): ``openai_clip`` (OpenAI's ``clip`` package, incl. its TorchScript archives),
``open_clip`` (ViT and timm-ConvNeXt towers) and ``hf_clip`` (transformers ``CLIPModel``). Their
``convert(state_dict, split_qkv=None)`` can also target the split q/k/v attention layout (CAT-Seg).

This package module holds the small helpers the converters share; it imports no converter.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import torch

from ovss.errors import CheckpointMismatchError
from ovss.layers.attention import pack_in_proj, split_in_proj

CLIP_FORMAT_NAMES = ("hf_clip", "openai_clip", "open_clip")  # detection order: most specific first

# Top-level names of the text tower in OpenAI / open_clip files (``text.`` in ovss).
TEXT_ROOTS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries whose key starts with ``prefix``, with the prefix removed (order kept)."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def is_text_root(key: str) -> bool:
    """Whether an OpenAI / open_clip top-level key belongs to the text tower."""
    root = key.split(".", 1)[0]
    return root in TEXT_ROOTS


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
