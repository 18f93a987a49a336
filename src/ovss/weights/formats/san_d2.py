"""Official SAN checkpoints (MendelXu/SAN, detectron2 ``DetectionCheckpointer`` files) -> ovss ``SAN``.

Files: Hugging Face ``Mendel192/san`` ``san_vit_b_16.pth`` / ``san_vit_large_14.pth``, stored as
``{"model": state_dict, ...}`` (a bare state dict is accepted too). The official model slices one
CLIP image tower into ``clip_visual_extractor`` (blocks ``[0, split)``) and ``clip_rec_head``
(blocks ``[split, depth)``, ``ln_post``, ``proj``); ovss keeps the single tower, so rec-head block
``j`` becomes tower block ``split + j`` (``split`` = number of extractor blocks in the file).

```
clip_visual_extractor.{conv1,class_embedding,positional_embedding,ln_pre}  -> clip.visual.*
clip_visual_extractor.resblocks.i.*           -> clip.visual.transformer.resblocks.i.*
clip_rec_head.resblocks.j.*                   -> clip.visual.transformer.resblocks.<split+j>.*
clip_rec_head.{ln_post,proj}                  -> clip.visual.*
ov_classifier.{transformer,token_embedding,positional_embedding,ln_final,text_projection}
                                              -> clip.text.*
ov_classifier.logit_scale / .bg_embed [1,E]   -> clip.logit_scale / bg_embed [E]
side_adapter_network.query_embed / query_pos_embed [1,Q,C]  -> side.* [Q,C]
side_adapter_network.vit_model.pos_embed [1,L,C]            -> side.pos_embed [L,C]
side_adapter_network.vit_model.patch_embed.proj.*           -> side.patch_embed.*
side_adapter_network.vit_model.blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}
        -> side.blocks.i.{ln_1,attn.in_proj_*,attn.out_proj,ln_2,mlp.c_fc,mlp.c_proj}
side_adapter_network.fusion_layers.layer_k.input_proj.{0,1}.*  -> side.fusion.k.{norm,proj}.*
        (the 1x1 conv weight [C,D,1,1] becomes a linear weight [C,D])
side_adapter_network.mask_decoder.*           -> side.decoder.* (1x1 conv weights squeezed to 2-D)
```

Dropped buffers (derivable, not parameters of ovss ``SAN``):

- ``criterion.empty_weight`` [K+1]: the loss's class weights, ones with the no-object weight 0.1
  last; the training loss rebuilds it from its own config.
- ``ov_classifier.attn_mask`` [77, 77]: the text tower's causal mask, which ovss builds on the fly
  for the (trimmed) prompt length.

Conversion is pure and strict: a key no rule maps raises :class:`CheckpointMismatchError` listing
every such key; shapes are checked when the result is loaded into the model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ovss.weights.formats import (
    D2_TEXT_PREFIXES,
    missing_keys,
    rename_entries,
    require_keys,
    unwrap_checkpoint,
)

DROPPED = ("criterion.empty_weight", "ov_classifier.attn_mask")
_SENTINELS = (
    "side_adapter_network.vit_model.pos_embed",
    "side_adapter_network.query_embed",
    "clip_visual_extractor.conv1.weight",
    "clip_rec_head.proj",
    "ov_classifier.bg_embed",
)
_SIDE_BLOCK = {"norm1": "ln_1", "norm2": "ln_2", "attn.qkv.weight": "attn.in_proj_weight",
               "attn.qkv.bias": "attn.in_proj_bias", "attn.proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc",
               "mlp.fc2": "mlp.c_proj"}
_RE_EXTRACTOR_BLOCK = re.compile(r"clip_visual_extractor\.resblocks\.(\d+)\.(.+)")
_RE_REC_BLOCK = re.compile(r"clip_rec_head\.resblocks\.(\d+)\.(.+)")
_RE_SIDE_BLOCK = re.compile(
    r"side_adapter_network\.vit_model\.blocks\.(\d+)\.(norm1|norm2|attn\.qkv\.weight|attn\.qkv\.bias|"
    r"attn\.proj|mlp\.fc1|mlp\.fc2)((?:\.weight|\.bias)?)"
)
_RE_FUSION = re.compile(
    r"side_adapter_network\.fusion_layers\.layer_(\d+)\.input_proj\.([01])\.(weight|bias)"
)
_RE_DECODER = re.compile(
    r"side_adapter_network\.mask_decoder\.((?:query|pix|attn)_mlp\.layers\.\d+|bias_scaling)\.(weight|bias)"
)


TITLE = "an official SAN (detectron2)"  # in messages: "FILE is TITLE checkpoint"


def detect(state_dict: Mapping[str, object]) -> bool:
    """True if ``state_dict`` (bare or ``{"model": sd}``) is an official SAN checkpoint."""
    return not missing_keys(unwrap_checkpoint(state_dict), _SENTINELS)


def _split_index(sd: Mapping[str, object]) -> int:
    """Number of CLIP blocks in the extractor slice (= where the rec-head blocks start)."""
    found = [int(m[1]) for k in sd if (m := _RE_EXTRACTOR_BLOCK.fullmatch(k))]
    return max(found) + 1 if found else 0


def _map(key: str, value: torch.Tensor, split: int) -> tuple[str, torch.Tensor] | None:
    """(ovss key, tensor) for one official entry, or None when no rule applies."""
    if m := _RE_EXTRACTOR_BLOCK.fullmatch(key):
        return f"clip.visual.transformer.resblocks.{m[1]}.{m[2]}", value
    if m := _RE_REC_BLOCK.fullmatch(key):
        return f"clip.visual.transformer.resblocks.{split + int(m[1])}.{m[2]}", value
    head, _, rest = key.partition(".")
    if head == "clip_visual_extractor" and rest.split(".")[0] in (
        "conv1", "class_embedding", "positional_embedding", "ln_pre"
    ):
        return "clip.visual." + rest, value
    if head == "clip_rec_head" and rest in ("ln_post.weight", "ln_post.bias", "proj"):
        return "clip.visual." + rest, value
    if head == "ov_classifier":
        if rest == "logit_scale":
            return "clip.logit_scale", value
        if rest == "bg_embed":
            return "bg_embed", value.reshape(-1)
        if rest.startswith(D2_TEXT_PREFIXES):
            return "clip.text." + rest, value
        return None
    if key in ("side_adapter_network.query_embed", "side_adapter_network.query_pos_embed"):
        return "side." + key.rsplit(".", 1)[1], value.reshape(value.shape[-2:])
    if key == "side_adapter_network.vit_model.pos_embed":
        return "side.pos_embed", value.reshape(value.shape[-2:])
    if key.startswith("side_adapter_network.vit_model.patch_embed.proj."):
        return "side.patch_embed." + key.rsplit(".", 1)[1], value
    if m := _RE_SIDE_BLOCK.fullmatch(key):
        return f"side.blocks.{m[1]}.{_SIDE_BLOCK[m[2]]}{m[3]}", value
    if m := _RE_FUSION.fullmatch(key):
        part = "norm" if m[2] == "0" else "proj"
        return f"side.fusion.{m[1]}.{part}.{m[3]}", _squeeze_1x1(value)
    if m := _RE_DECODER.fullmatch(key):
        return f"side.decoder.{m[1]}.{m[2]}", _squeeze_1x1(value)
    return None


def _squeeze_1x1(value: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv weight (O, I, 1, 1) as a linear weight (O, I); other tensors unchanged."""
    return value.reshape(value.shape[:2]) if value.ndim == 4 and value.shape[2:] == (1, 1) else value


def convert(state_dict: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Rename an official SAN state dict to the ovss ``SAN`` module layout.

    Args:
        state_dict: ``{"model": sd, ...}`` (detectron2 checkpoint) or the bare ``sd``.

    Returns:
        A new dict keyed by ovss parameter names (tensors shared or reshaped views).

    Raises:
        CheckpointMismatchError: not a SAN checkpoint, or some keys are not part of the SAN layout
            (all are listed).
    """
    sd = unwrap_checkpoint(state_dict)
    require_keys(
        sd,
        _SENTINELS,
        "an official SAN (detectron2)",
        "pass san_vit_b_16.pth / san_vit_large_14.pth from Mendel192/san (or its 'model' state dict)",
    )
    split = _split_index(sd)
    return rename_entries(
        sd,
        lambda key, value: _map(key, value, split),
        "official SAN",
        "pass an unmodified MendelXu/SAN checkpoint",
        skip=DROPPED,
    )
