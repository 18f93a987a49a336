"""Official SED checkpoints (xb534/SED, detectron2 ``DetectionCheckpointer`` files) -> ovss ``SED``.

The official files are ``torch.save({"model": state_dict, ...})`` (a bare state dict is accepted too).
Their keys live under two prefixes:

```
sem_seg_head.predictor.clip_model.visual.*      -> clip.visual.*   (open_clip TimmModel names, 1:1)
sem_seg_head.predictor.clip_model.<text keys>   -> clip.text.*     (transformer.*, token_embedding,
                                                                    positional_embedding, ln_final,
                                                                    text_projection)
sem_seg_head.predictor.clip_model.logit_scale   -> clip.logit_scale
sem_seg_head.predictor.transformer.*            -> decoder.*       (table in _DECODER_RULES)
```

Conversion is pure and strict: a key no rule maps raises :class:`CheckpointMismatchError` listing
every such key. Shapes are checked when the result is loaded into the model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ovss.weights.formats import (
    D2_CLIP_PREFIX,
    Rule,
    apply_rules,
    map_d2_clip_key,
    rename_entries,
    unwrap_checkpoint,
)

DECODER_PREFIX = "sem_seg_head.predictor.transformer."
_SENTINELS = (
    DECODER_PREFIX + "decoder1.cnext.dwconv.weight",
    DECODER_PREFIX + "decoder_corr_guidance_projection.0.0.weight",
    D2_CLIP_PREFIX + "visual.trunk.stem.0.weight",
)
_FUSE = {"0": "conv1", "1": "norm1", "3": "conv2", "4": "norm2"}
_ATTN = {
    "attention.q": "q",
    "attention.k": "k",
    "attention.v": "v",
    "MLP.0": "fc1",
    "MLP.2": "fc2",
    "norm1": "norm1",
    "norm2": "norm2",
}


def _stage(n: str) -> str:
    return f"stages.{int(n) - 1}"


# (pattern on the key after DECODER_PREFIX, replacement builder) -> key after "decoder."
_DECODER_RULES: tuple[Rule, ...] = (
    (re.compile(r"conv1\.(weight|bias)"), lambda m: f"cost_embed.{m[1]}"),
    (
        re.compile(r"decoder_guidance_projection\.(\d)\.0\.(weight|bias)"),
        lambda m: f"image_guidance.{m[1]}.{m[2]}",
    ),
    (
        re.compile(r"decoder_corr_guidance_projection\.(\d)\.0\.(weight|bias)"),
        lambda m: f"cost_guidance.{m[1]}.{m[2]}",
    ),
    (
        re.compile(
            r"decoder([123])\.cnext\.(dwconv\.weight|dwconv\.bias|norm\.weight|norm\.bias|"
            r"pwconv1\.weight|pwconv1\.bias|pwconv2\.weight|pwconv2\.bias|gamma)"
        ),
        lambda m: f"{_stage(m[1])}.spatial.{m[2]}",
    ),
    (
        re.compile(r"decoder([123])\.attention\.(attention\.[qkv]|MLP\.[02]|norm[12])\.(weight|bias)"),
        lambda m: f"{_stage(m[1])}.class_attn.{_ATTN[m[2]]}.{m[3]}",
    ),
    (re.compile(r"decoder([123])\.up\.(weight|bias)"), lambda m: f"{_stage(m[1])}.up.{m[2]}"),
    (
        re.compile(r"decoder([123])\.conv\.double_conv\.([0134])\.(weight|bias)"),
        lambda m: f"{_stage(m[1])}.fuse.{_FUSE[m[2]]}.{m[3]}",
    ),
    (re.compile(r"head([012])\.(weight|bias)"), lambda m: f"cer_heads.{m[1]}.{m[2]}"),
    (re.compile(r"head\.(weight|bias)"), lambda m: f"head.{m[1]}"),
)


TITLE = "an official SED"  # in messages: "FILE is TITLE checkpoint"


def detect(state_dict: Mapping[str, object]) -> bool:
    """True if ``state_dict`` (bare or ``{"model": sd}``) is an official SED checkpoint."""
    sd = unwrap_checkpoint(state_dict)
    return all(key in sd for key in _SENTINELS)


def _rename(key: str, value: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """(ovss key, tensor) for one official entry, or None when no rule applies."""
    if key.startswith(D2_CLIP_PREFIX):
        new = map_d2_clip_key(key[len(D2_CLIP_PREFIX) :])
    else:
        new = apply_rules(key, DECODER_PREFIX, _DECODER_RULES, "decoder.")
    return None if new is None else (new, value)


def convert(state_dict: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Rename an official SED state dict to the ovss ``SED`` module layout.

    Args:
        state_dict: ``{"model": sd, ...}`` (detectron2 checkpoint) or the bare ``sd``.

    Returns:
        A new dict (same tensor objects) keyed by ovss parameter names.

    Raises:
        CheckpointMismatchError: some keys are not part of the SED layout (all are listed).
    """
    return rename_entries(
        unwrap_checkpoint(state_dict),
        _rename,
        "official SED",
        "pass an xb534/SED checkpoint (model_final.pth) or its 'model' state dict",
    )
