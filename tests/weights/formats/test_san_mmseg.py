"""SAN checkpoint converters: official detectron2 layout (san_d2) and mmsegmentation (san_mmseg).

No mmseg fixture exists, so the mmseg layout is built here from the official fixture with the key
mapping of mmseg's ``tools/model_converters/san2mmseg.py`` (spec san.md 4.3), written independently
of the converter under test; converting it back must give exactly the same model.
"""

from __future__ import annotations

import re

import pytest
import torch

from ovss.errors import CheckpointMismatchError
from ovss.models.san import SAN, san_tiny, san_vit_b16, san_vit_l14
from ovss.weights.build import load_strict
from ovss.weights.formats import san_d2, san_mmseg
from tests.conftest import parity_dir, requires
from tests.parity._common import meta_state_dict, official_state_dict, read_array, read_manifest

FIXTURE = parity_dir() / "san_a"
needs_fixture = requires(FIXTURE / "state_dict.safetensors")

_CLIP_BLOCK_MMCV = {"ln_1": "norms.0", "attn": "attentions.0.attn", "ln_2": "norms.1",
                    "mlp.c_fc": "ffns.0.layers.0.0", "mlp.c_proj": "ffns.0.layers.1"}
_CLIP_BLOCK_VIT = {"ln_1": "ln1", "attn": "attn.attn", "ln_2": "ln2", "mlp.c_fc": "ffn.layers.0.0",
                   "mlp.c_proj": "ffn.layers.1"}
_SIDE_BLOCK = {"norm1": "ln1", "attn.qkv.weight": "attn.attn.in_proj_weight",
               "attn.qkv.bias": "attn.attn.in_proj_bias", "attn.proj": "attn.attn.out_proj", "norm2": "ln2",
               "mlp.fc1": "ffn.layers.0.0", "mlp.fc2": "ffn.layers.1"}


def _block(rest: str, table: dict[str, str]) -> str:
    for old, new in sorted(table.items(), key=lambda kv: -len(kv[0])):
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    raise KeyError(rest)


def to_mmseg(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official -> mmseg renaming of ``san2mmseg.py`` (+ its three tensor reshapes)."""
    out = {}
    for key, v in official.items():
        if m := re.fullmatch(r"clip_visual_extractor\.resblocks\.(\d+)\.(.+)", key):
            new = f"image_encoder.layers.{m[1]}.{_block(m[2], _CLIP_BLOCK_VIT)}"
        elif key == "clip_visual_extractor.class_embedding":
            new, v = "image_encoder.cls_token", v[None, None]
        elif key == "clip_visual_extractor.positional_embedding":
            new, v = "image_encoder.pos_embed", v[None]
        elif key.startswith("clip_visual_extractor.conv1."):
            new = "image_encoder.patch_embed.projection." + key.rsplit(".", 1)[1]
        elif key.startswith("clip_visual_extractor.ln_pre."):
            new = "image_encoder." + key.split(".", 1)[1]
        elif m := re.fullmatch(r"clip_rec_head\.resblocks\.(\d+)\.(.+)", key):
            new = f"decode_head.rec_with_attnbias.layers.{m[1]}.{_block(m[2], _CLIP_BLOCK_MMCV)}"
        elif key == "clip_rec_head.proj":
            new, v = "decode_head.rec_with_attnbias.proj.weight", v.t()
        elif key.startswith("clip_rec_head.ln_post."):
            new = "decode_head.rec_with_attnbias." + key.split(".", 1)[1]
        elif m := re.fullmatch(r"side_adapter_network\.vit_model\.blocks\.(\d+)\.(.+)", key):
            new = f"decode_head.side_adapter_network.encode_layers.{m[1]}.{_block(m[2], _SIDE_BLOCK)}"
        elif key == "side_adapter_network.vit_model.pos_embed":
            new = "decode_head.side_adapter_network.pos_embed"
        elif key.startswith("side_adapter_network.vit_model.patch_embed.proj."):
            new = "decode_head.side_adapter_network.patch_embed.projection." + key.rsplit(".", 1)[1]
        elif m := re.fullmatch(r"side_adapter_network\.fusion_layers\.layer_(\d+)\.input_proj\.([01])\.(.+)",
                               key):
            part = "0" if m[2] == "0" else "1.conv"
            new = f"decode_head.side_adapter_network.conv_clips.{m[1]}.{part}.{m[3]}"
        elif key.startswith("side_adapter_network."):  # query embeds and the mask decoder
            new = "decode_head." + key
        elif m := re.fullmatch(r"ov_classifier\.transformer\.resblocks\.(\d+)\.(.+)", key):
            new = f"text_encoder.transformer.{m[1]}.{_block(m[2], _CLIP_BLOCK_MMCV)}"
        elif key.startswith("ov_classifier."):
            new = "text_encoder." + key.split(".", 1)[1]
        else:
            assert key.startswith("criterion."), key
            new = key
        out[new] = v
    assert len(out) == len(official)
    return out


def _official() -> dict[str, torch.Tensor]:
    return official_state_dict(FIXTURE)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


@needs_fixture
def test_detect_tells_the_formats_apart():
    official = _official()
    mmseg = to_mmseg(official)
    assert san_d2.detect(official) and san_d2.detect({"model": official}) and not san_d2.detect(mmseg)
    assert san_mmseg.detect(mmseg) and san_mmseg.detect({"state_dict": mmseg})
    assert not san_mmseg.detect(official)
    catseg_like = {"sem_seg_head.predictor.clip_model.visual.conv1.weight": torch.zeros(1)}
    assert not san_d2.detect(catseg_like) and not san_mmseg.detect(catseg_like)
    with pytest.raises(CheckpointMismatchError, match="not an mmsegmentation SAN checkpoint"):
        san_mmseg.convert(official)
    with pytest.raises(CheckpointMismatchError, match="not an official SAN"):
        san_d2.convert(mmseg)


@needs_fixture
def test_mmseg_round_trip_gives_the_same_model():
    official = _official()
    mmseg = to_mmseg(official)
    _same(san_mmseg.convert({"state_dict": mmseg, "meta": {}}), san_d2.convert(official))
    # mmseg's own model does not save the causal mask buffer nor the loss weights: both optional
    optional = ("text_encoder.attn_mask", "criterion.empty_weight")
    trimmed = {k: v for k, v in mmseg.items() if k not in optional}
    _same(san_mmseg.convert(trimmed), san_d2.convert(official))
    with pytest.raises(CheckpointMismatchError, match=r"decode_head\.side_adapter_network\.bogus"):
        san_mmseg.convert({**mmseg, "decode_head.side_adapter_network.bogus": torch.zeros(1)})
    # identical outputs end to end
    images = read_array(FIXTURE, "input.npy")
    tokens = read_array(FIXTURE, "tokens.npy")[:2]
    scores = []
    for sd in (san_d2.convert(official), san_mmseg.convert(mmseg)):
        model = load_strict(SAN(san_tiny()).eval(), sd, "fixture")
        with torch.no_grad():
            scores.append(model.predict(images, model.encode_text(tokens), (128, 128), (32, 32)))
    assert torch.equal(scores[0], scores[1])


@pytest.mark.parametrize("name,build", [("san_vit_b16", san_vit_b16), ("san_vit_l14_336", san_vit_l14)])
def test_mmseg_converter_consumes_full_size_layout(name, build):
    official = meta_state_dict(read_manifest(f"manifest_{name}.json"))
    with torch.device("meta"):
        model = SAN(build())
    load_strict(model, san_mmseg.convert(to_mmseg(official)), name, assign=True)


def test_converters_reject_non_state_dicts():
    for bad in ({}, {"model": {"foo": torch.zeros(1)}}, {"state_dict": {}}):
        with pytest.raises(CheckpointMismatchError):
            san_d2.convert(bad)
        with pytest.raises(CheckpointMismatchError):
            san_mmseg.convert(bad)
