"""open_clip ``CLIP`` / ``CustomTextCLIP`` state dicts -> ovss ``CLIP`` layout.

open_clip keeps the image tower under ``visual.`` with the same names as ovss (ViT: OpenAI names;
ConvNeXt: ``visual.trunk.*`` / ``visual.head.*``, 1:1) and the text tower at the top level
(``token_embedding``, ``positional_embedding``, ``transformer.*``, ``ln_final``,
``text_projection``), which moves under ``text.``. ``CustomTextCLIP`` files already use ``text.*``.
The non-persistent-in-newer-versions causal ``attn_mask`` buffer is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ovss.weights.formats import move_text_tower

_DROP = ("attn_mask", "text.attn_mask")


def detect(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """open_clip layout: ``visual.*`` keys plus a top-level (or ``text.``) token embedding."""
    has_text = "token_embedding.weight" in state_dict or "text.token_embedding.weight" in state_dict
    return has_text and any(k.startswith("visual.") for k in state_dict)


def convert(state_dict: Mapping[str, torch.Tensor], split_qkv: bool | None = None) -> dict[str, torch.Tensor]:
    """Rename an open_clip model ``state_dict()`` to the ovss ``CLIP`` layout.

    Pure (tensors shared); ``split_qkv`` and the result as in :func:`ovss.weights.formats.move_text_tower`.
    """
    return move_text_tower(state_dict, _DROP, split_qkv)
