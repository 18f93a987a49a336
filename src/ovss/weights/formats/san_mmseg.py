"""mmsegmentation SAN checkpoints -> ovss ``SAN`` (via the official MendelXu/SAN layout).

Files: ``san-vit-b16_20230906-fd0a7684.pth`` / ``san-vit-l14_20230907-a11e098f.pth`` from
download.openmmlab.com, produced from the official weights by mmseg's ``san2mmseg.py``. They hold
``{"state_dict": sd, "meta": ...}`` (``{"model": sd}`` and a bare ``sd`` are accepted too). Values are
the official ones except three reshapes; this module renames every key back to the official
layout (the inverse of ``san2mmseg.py``) and then applies :func:`ovss.weights.formats.san_d2.convert`:

```
image_encoder.cls_token [1,1,D] / pos_embed [1,L,D]  -> clip_visual_extractor.class_embedding [D] /
                                                        positional_embedding [L,D]
image_encoder.patch_embed.projection / ln_pre        -> clip_visual_extractor.conv1 / ln_pre
image_encoder.layers.i.{ln1,attn.attn,ln2,ffn.layers.0.0,ffn.layers.1}
                    -> clip_visual_extractor.resblocks.i.{ln_1,attn,ln_2,mlp.c_fc,mlp.c_proj}
decode_head.rec_with_attnbias.layers.i.{norms.0,attentions.0.attn,norms.1,ffns.0.layers.0.0,ffns.0.layers.1}
                    -> clip_rec_head.resblocks.i.{ln_1,attn,ln_2,mlp.c_fc,mlp.c_proj}
decode_head.rec_with_attnbias.ln_post / proj.weight [E,D]  -> clip_rec_head.ln_post / proj [D,E] (transposed)
decode_head.side_adapter_network.encode_layers.i.{ln1,attn.attn.in_proj_*,attn.attn.out_proj,ln2,
                    ffn.layers.0.0,ffn.layers.1}
                    -> side_adapter_network.vit_model.blocks.i.{norm1,attn.qkv.*,attn.proj,norm2,
                       mlp.fc1,mlp.fc2}
decode_head.side_adapter_network.{pos_embed,patch_embed.projection}
                    -> side_adapter_network.vit_model.{pos_embed,patch_embed.proj}
decode_head.side_adapter_network.conv_clips.k.{0,1.conv}
                    -> side_adapter_network.fusion_layers.layer_k.input_proj.{0,1}
decode_head.side_adapter_network.{query_embed,query_pos_embed,mask_decoder.*}  -> side_adapter_network.*
text_encoder.transformer.i.{attentions.0.attn,norms.0,norms.1,ffns.0.layers.0.0,ffns.0.layers.1}
                    -> ov_classifier.transformer.resblocks.i.{attn,ln_1,ln_2,mlp.c_fc,mlp.c_proj}
text_encoder.{token_embedding,positional_embedding,ln_final,text_projection,logit_scale,bg_embed,attn_mask}
                    -> ov_classifier.*
criterion.empty_weight, text_encoder.attn_mask  -> dropped (DROPPED_EXTRAS)
```

The model-zoo files (made by ``san2mmseg.py``) are a flat dict holding mmseg's 440 (B) / 584 (L) model
keys plus the two unused extras ``criterion.empty_weight`` and ``text_encoder.attn_mask`` (mmseg's own
``load_checkpoint`` ignores them); a ``{"state_dict": sd}`` checkpoint saved by mmengine has the model
keys only. Both load; any other key is an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ovss.weights.formats import missing_keys, rename_entries, require_keys, san_d2, unwrap_checkpoint

_SAN = "decode_head.side_adapter_network."
_REC = "decode_head.rec_with_attnbias."
_SENTINELS = (
    _SAN + "pos_embed",
    _SAN + "query_embed",
    _REC + "proj.weight",
    "image_encoder.patch_embed.projection.weight",
    "text_encoder.bg_embed",
)
# mmcv BaseTransformerLayer names (CLIP blocks of the rec head and the text tower) -> OpenAI names.
_MMCV_BLOCK = {"norms.0": "ln_1", "attentions.0.attn": "attn", "norms.1": "ln_2",
               "ffns.0.layers.0.0": "mlp.c_fc", "ffns.0.layers.1": "mlp.c_proj"}
_IMAGE_BLOCK = {"ln1": "ln_1", "attn.attn": "attn", "ln2": "ln_2", "ffn.layers.0.0": "mlp.c_fc",
                "ffn.layers.1": "mlp.c_proj"}
_SIDE_BLOCK = {"ln1": "norm1", "attn.attn.in_proj_weight": "attn.qkv.weight",
               "attn.attn.in_proj_bias": "attn.qkv.bias", "attn.attn.out_proj": "attn.proj", "ln2": "norm2",
               "ffn.layers.0.0": "mlp.fc1", "ffn.layers.1": "mlp.fc2"}


def _alternatives(table: dict[str, str]) -> str:
    return "|".join(re.escape(k) for k in sorted(table, key=len, reverse=True))


_RE_IMAGE_BLOCK = re.compile(rf"image_encoder\.layers\.(\d+)\.({_alternatives(_IMAGE_BLOCK)})\.(.+)")
_RE_REC_BLOCK = re.compile(rf"{re.escape(_REC)}layers\.(\d+)\.({_alternatives(_MMCV_BLOCK)})\.(.+)")
_RE_TEXT_BLOCK = re.compile(rf"text_encoder\.transformer\.(\d+)\.({_alternatives(_MMCV_BLOCK)})\.(.+)")
_RE_SIDE_BLOCK = re.compile(
    rf"{re.escape(_SAN)}encode_layers\.(\d+)\.({_alternatives(_SIDE_BLOCK)})((?:\..+)?)"
)
_RE_FUSION = re.compile(rf"{re.escape(_SAN)}conv_clips\.(\d+)\.(0|1\.conv)\.(weight|bias)")
_TEXT_ROOTS = ("token_embedding.", "positional_embedding", "ln_final.", "text_projection", "logit_scale",
               "bg_embed", "attn_mask")


DROPPED_EXTRAS = ("criterion.empty_weight", "text_encoder.attn_mask")  # in the model-zoo files, unused
_CONTAINERS = ("state_dict", "model")  # mmseg / detectron2-style checkpoint wrappers


TITLE = "an mmsegmentation SAN"  # in messages: "FILE is TITLE checkpoint"


def detect(state_dict: Mapping[str, object]) -> bool:
    """True if ``state_dict`` (bare or wrapped) is an mmsegmentation SAN checkpoint."""
    return not missing_keys(unwrap_checkpoint(state_dict, _CONTAINERS), _SENTINELS)


def _official_key(key: str, value: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """(official key, tensor) for one mmseg entry, or None when no rule applies."""
    if m := _RE_IMAGE_BLOCK.fullmatch(key):
        return f"clip_visual_extractor.resblocks.{m[1]}.{_IMAGE_BLOCK[m[2]]}.{m[3]}", value
    if m := _RE_REC_BLOCK.fullmatch(key):
        return f"clip_rec_head.resblocks.{m[1]}.{_MMCV_BLOCK[m[2]]}.{m[3]}", value
    if m := _RE_TEXT_BLOCK.fullmatch(key):
        return f"ov_classifier.transformer.resblocks.{m[1]}.{_MMCV_BLOCK[m[2]]}.{m[3]}", value
    if m := _RE_SIDE_BLOCK.fullmatch(key):
        return f"side_adapter_network.vit_model.blocks.{m[1]}.{_SIDE_BLOCK[m[2]]}{m[3]}", value
    if m := _RE_FUSION.fullmatch(key):
        part = "0" if m[2] == "0" else "1"
        return f"side_adapter_network.fusion_layers.layer_{m[1]}.input_proj.{part}.{m[3]}", value
    if key == "image_encoder.cls_token":
        return "clip_visual_extractor.class_embedding", value.reshape(-1)
    if key == "image_encoder.pos_embed":
        return "clip_visual_extractor.positional_embedding", value.reshape(value.shape[-2:])
    if key.startswith("image_encoder.patch_embed.projection."):
        return "clip_visual_extractor.conv1." + key.rsplit(".", 1)[1], value
    if key in ("image_encoder.ln_pre.weight", "image_encoder.ln_pre.bias"):
        return "clip_visual_extractor." + key.split(".", 1)[1], value
    if key == _REC + "proj.weight":
        return "clip_rec_head.proj", value.transpose(0, 1)
    if key in (_REC + "ln_post.weight", _REC + "ln_post.bias"):
        return "clip_rec_head." + key[len(_REC) :], value
    if key == _SAN + "pos_embed":
        return "side_adapter_network.vit_model.pos_embed", value
    if key.startswith(_SAN + "patch_embed.projection."):
        return "side_adapter_network.vit_model.patch_embed.proj." + key.rsplit(".", 1)[1], value
    if key in (_SAN + "query_embed", _SAN + "query_pos_embed") or key.startswith(_SAN + "mask_decoder."):
        return key[len("decode_head.") :], value
    if key.startswith("text_encoder.") and key[len("text_encoder.") :].startswith(_TEXT_ROOTS):
        return "ov_classifier." + key[len("text_encoder.") :], value
    if key == "criterion.empty_weight":  # an unused extra of the model-zoo files (dropped by san_d2)
        return key, value
    return None


def to_official(state_dict: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Rename an mmseg SAN state dict to the official MendelXu/SAN layout.

    Raises:
        CheckpointMismatchError: not an mmseg SAN checkpoint, or keys no rule maps (all listed).
    """
    sd = unwrap_checkpoint(state_dict, _CONTAINERS)
    require_keys(
        sd,
        _SENTINELS,
        "an mmsegmentation SAN",
        "pass san-vit-b16_20230906-fd0a7684.pth / san-vit-l14_20230907-a11e098f.pth",
    )
    return rename_entries(
        sd, _official_key, "mmsegmentation SAN", "pass an unmodified mmseg SAN checkpoint"
    )


def convert(state_dict: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """mmseg SAN state dict (bare or wrapped) -> ovss ``SAN`` layout (see :mod:`san_d2` for drops)."""
    return san_d2.convert(to_official(state_dict))
