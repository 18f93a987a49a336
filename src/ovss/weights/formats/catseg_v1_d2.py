"""Official CAT-Seg v1 checkpoints (arXiv 2303.11797 v1 code, detectron2 files) -> ovss ``CATSegV1``.

The files are ``torch.save({"model": state_dict, ...})`` (a bare state dict is accepted too). Keys:

```
sem_seg_head.predictor.clip_model.visual.*     -> clip.visual.*   (packed in_proj_weight, 1:1)
sem_seg_head.predictor.clip_model.<text keys>  -> clip.text.*
sem_seg_head.predictor.clip_model.logit_scale  -> clip.logit_scale
backbone.*                                     -> backbone.*      (detectron2 ResNet incl. FrozenBN
                                                                   buffers, or D2 Swin incl. its
                                                                   relative_position_index buffers)
sem_seg_head.predictor.transformer.*           -> aggregator.*    (the CVPR table of catseg_d2)
```

The aggregator's Swin shift masks (``...block_2.attn_mask``) are checked against the derived mask and
dropped, as for the CVPR files. Conversion is pure and strict: every key must be consumed.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ovss.weights.formats import (
    D2_CLIP_PREFIX,
    apply_rules,
    map_d2_clip_key,
    rename_entries,
    unwrap_checkpoint,
)
from ovss.weights.formats.catseg_d2 import _AGG_RULES, AGG_PREFIX, checked_shift_masks

TITLE = "an official CAT-Seg v1 (arXiv v1, detectron2)"
_SENTINELS = (
    AGG_PREFIX + "conv1.weight",
    D2_CLIP_PREFIX + "visual.transformer.resblocks.0.attn.in_proj_weight",
)
_BACKBONES = ("backbone.stem.conv1.weight", "backbone.patch_embed.proj.weight")


def detect(state_dict: Mapping[str, object]) -> bool:
    """True if ``state_dict`` (bare or ``{"model": sd}``) is an official CAT-Seg v1 checkpoint."""
    sd = unwrap_checkpoint(state_dict)
    return all(k in sd for k in _SENTINELS) and any(k in sd for k in _BACKBONES)


def _rename(key: str, value: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    if key.startswith(D2_CLIP_PREFIX):
        new = map_d2_clip_key(key[len(D2_CLIP_PREFIX) :])
    elif key.startswith("backbone."):
        new = key
    else:
        new = apply_rules(key, AGG_PREFIX, _AGG_RULES, "aggregator.")
        if new is not None and ".pad_" in new:
            new = None  # v1 has no class-budget padding tokens
    return None if new is None else (new, value)


def convert(state_dict: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Rename an official CAT-Seg v1 state dict to the ovss ``CATSegV1`` layout.

    Args:
        state_dict: ``{"model": sd, ...}`` or the bare ``sd``.

    Returns:
        A new dict (same tensor objects) keyed by ovss names; the derivable shift masks dropped.

    Raises:
        CheckpointMismatchError: keys outside the v1 layout (all listed) or a tampered shift mask.
    """
    sd = unwrap_checkpoint(state_dict)
    masks = checked_shift_masks(sd, "CAT-Seg v1")
    return rename_entries(
        sd,
        _rename,
        "official CAT-Seg v1",
        "pass an official CAT-Seg v1 .pth or its 'model' state dict",
        skip=masks,
    )
