"""SAN vs the official implementation (MendelXu/SAN @ e19262d) on the ``san_*`` parity fixtures.

Each fixture holds an official state dict with tiny random weights, the network input, the prompt
tokens and every recorded intermediate. The model is built from the fixture's config.json, loaded
through ``san_d2.convert`` + strict loading, and every recorded tensor is compared (relative error
<= 1e-4 in float32). The full-size manifests check the converter and the parameter counts of the
two released models without downloading them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ovss.errors import CheckpointMismatchError
from ovss.models.san import SAN, SANConfig, san_vit_b16, san_vit_l14
from ovss.vocab.templates import get_templates
from ovss.weights.formats import san_d2
from ovss.weights.loading import load_strict
from tests.conftest import parity_params, relative_error
from tests.parity._common import (
    TOL,
    meta_state_dict,
    official_state_dict,
    read_array,
    read_config,
    read_manifest,
    reference_outputs,
    vit_clip_config,
)


def fixture_config(cfg: dict) -> SANConfig:
    """SANConfig from a fixture's config.json (explicit hyper-parameters next to the official names)."""
    c, san, side = cfg["clip"], cfg["san"], cfg["side_adapter"]
    bias = side["ATTN_BIAS"]
    assert c["act"].startswith("QuickGELU") and side["act"].startswith("GELU"), "unexpected activations"
    assert san["REC_CROSS_ATTN"] is False and san["SOS_TOKEN_FORMAT"] == "cls_token"
    assert list(get_templates("vild")) == cfg["templates"], "fixture templates are not the 14 ViLD ones"
    clip = vit_clip_config(c)
    pairs = tuple(tuple(int(v) for v in item.split("->")) for item in san["FUSION_MAP"])
    return SANConfig(
        clip=clip,
        clip_resolution=san["CLIP_RESOLUTION"],
        split=san["FEATURE_LAST_LAYER_IDX (split)"],
        fusion_map=pairs,
        size_divisibility=san["SIZE_DIVISIBILITY"],
        side_width=side["width"],
        side_depth=side["depth"],
        side_heads=side["heads"],
        side_mlp_ratio=side["mlp_ratio"],
        side_patch_size=side["patch_size"],
        side_image_size=side["IMAGE_SIZE (pos_embed grid = IMAGE_SIZE/patch)"],
        side_ln_eps=side["ln_eps"],
        num_queries=side["NUM_QUERIES"],
        deep_supervision=tuple(side["DEEP_SUPERVISION_IDXS"]),
        attn_bias_heads=bias["NUM_HEADS"],
        attn_bias_layers=bias["NUM_LAYERS"],
        embed_channels=bias["EMBED_CHANNELS"],
        mlp_channels=bias["MLP_CHANNELS"],
        mlp_layers=bias["MLP_NUM_LAYERS"],
        rescale_attn_bias=bias["RESCALE_ATTN_BIAS"],
        rec_downsample=san["REC_DOWNSAMPLE_METHOD"],
        pixel_mean=tuple(cfg["preprocessing"]["pixel_mean_0_255"]),
        pixel_std=tuple(cfg["preprocessing"]["pixel_std_0_255"]),
    )


def load_fixture_model(folder: Path) -> tuple[SAN, dict]:
    cfg = read_config(folder)
    model = SAN(fixture_config(cfg)).eval()
    load_strict(model, san_d2.convert(official_state_dict(folder)), str(folder))
    return model, cfg


def _as_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) -> (B, C, h, w)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)


def run_with_intermediates(model: SAN, images: torch.Tensor, tokens: torch.Tensor, out_hw) -> dict:
    """Every fixture tensor, named as in config.json "tensors", from one run of our model."""
    got: dict[str, torch.Tensor] = {"side_input": images}

    def keep(name: str, pick=lambda out: out):
        def hook(module, args, out=None):  # forward hooks get (module, args, out); pre-hooks (module, args)
            got[name] = pick(out if out is not None else args[0])

        return hook

    side, visual = model.side, model.clip.visual
    hooks = [visual.conv1.register_forward_pre_hook(keep("clip_input")),
             side.register_forward_hook(keep("side")),
             side.decoder.register_forward_hook(keep("mask_logits", lambda o: o[0])),
             side.decoder.register_forward_hook(keep("attn_bias", lambda o: o[1][0]))]
    for i, block in enumerate(side.blocks, start=1):
        hooks.append(block.register_forward_hook(keep(f"side.block{i}.out")))
    for key, layer in side.fusion.items():
        hooks.append(layer.register_forward_hook(keep(f"side.fusion{key}.out")))
        hooks.append(layer.proj.register_forward_hook(keep(f"side.fusion{key}.proj")))
    try:
        with torch.no_grad():
            per_template = torch.stack([model.clip.encode_text(t, normalize=True) for t in tokens])
            text = model.encode_text(tokens)
            records, grid = model.clip_features(images)
            out = model(images, text)
            regions = model.recognize(records[model.config.split], [got["attn_bias"]], grid)
            mask = model.rec_attn_mask(got["attn_bias"], grid, images.dtype)
            sem_seg = model.predict(images, text, tuple(images.shape[-2:]), out_hw)
            classifier = model.classifier(text)
    finally:
        for h in hooks:
            h.remove()
    got.update({"text.per_template": per_template, "text.class_embeds": text,
                "text.classifier": classifier, "class_logits": out["pred_logits"],
                "region_embeds": regions, "rec.attn_mask": mask.flatten(0, 1), "sem_seg": sem_seg[0]})
    for i, rec in records.items():
        got[f"clip.feat.{i}"] = _as_map(rec[:, 1:], grid)
        got[f"clip.cls.{i}"] = rec[:, :1].transpose(0, 1)  # official (1, B, D) layout
    (outputs, side_grid) = got.pop("side")
    for idx, (query, patches) in zip(model.config.deep_supervision, outputs):
        got[f"side.out{idx}.query"] = query
        got[f"side.out{idx}.x"] = _as_map(patches, side_grid)
    for key in [k for k in got if k.endswith(".proj")]:
        got[key[: -len(".proj")] + ".clip_proj"] = _as_map(got.pop(key), grid)
    return got


@pytest.mark.parametrize("folder", parity_params("san_"))
def test_every_recorded_tensor_matches(folder: Path):
    model, cfg = load_fixture_model(folder)
    images, tokens = read_array(folder, "input.npy"), read_array(folder, "tokens.npy")
    ref = reference_outputs(folder)
    out_hw = tuple(ref["sem_seg"].shape[-2:])
    got = run_with_intermediates(model, images, tokens, out_hw)
    names = sorted(cfg["tensors"])
    assert set(names) <= set(ref), f"tensors listed but not stored: {sorted(set(names) - set(ref))}"
    unmapped = sorted(set(names) - set(got))
    assert not unmapped, f"fixture tensors this test does not map: {unmapped}"
    errors = {n: relative_error(got[n], ref[n]) for n in names}
    bad = {n: e for n, e in errors.items() if not e <= TOL}
    assert not bad, f"relative error above {TOL}: {bad}"
    # the score map is not degenerate and the argmax agrees with the official one
    assert torch.equal(got["sem_seg"].argmax(0), ref["sem_seg"].argmax(0))
    assert sum(p.numel() for p in model.parameters()) == cfg["param_counts"]["total"]
    trainable = cfg["param_counts"]["trainable (requires_grad after official freezing)"]
    assert sum(p.numel() for _, p in model.trainable_parameters()) == trainable


@pytest.mark.parametrize("folder", parity_params("san_"))
def test_bf16_forward_close_to_fp32(folder: Path):
    model, _ = load_fixture_model(folder)
    images, tokens = read_array(folder, "input.npy"), read_array(folder, "tokens.npy")
    with torch.no_grad():
        text = model.encode_text(tokens)
        ref = model.predict(images, text, tuple(images.shape[-2:]), (64, 64))
        model16 = model.to(torch.bfloat16)
        text16 = model16.encode_text(tokens)
        got = model16.predict(images.bfloat16(), text16, tuple(images.shape[-2:]), (64, 64))
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    assert relative_error(got.float(), ref) < 0.08  # measured 0.04 (logits x exp(logit_scale) amplify)


MANIFESTS = {"san_vit_b16": san_vit_b16, "san_vit_l14_336": san_vit_l14}


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_converter_consumes_full_size_manifest(name: str):
    manifest = read_manifest(f"manifest_{name}.json")
    official = meta_state_dict(manifest)
    assert len(official) == manifest["num_keys"]
    converted = san_d2.convert({"model": official})
    with torch.device("meta"):
        model = SAN(MANIFESTS[name]())
    load_strict(model, converted, name, assign=True)  # every key consumed, every shape equal
    assert len(converted) == len(official) - len(san_d2.DROPPED)
    assert sum(p.numel() for p in model.parameters()) == manifest["total_params"]
    assert sum(p.numel() for _, p in model.trainable_parameters()) == manifest["trainable_params"]


@pytest.mark.parametrize("folder", parity_params("san_"))
def test_wrong_checkpoints_are_refused(folder: Path):
    model, _ = load_fixture_model(folder)
    official = official_state_dict(folder)
    catseg_like = {"sem_seg_head.predictor.clip_model.visual.conv1.weight": torch.zeros(1),
                   "sem_seg_head.predictor.transformer.conv1.weight": torch.zeros(1)}
    for bad in (catseg_like, {"foo": torch.zeros(1)}, {}):
        assert not san_d2.detect(bad)
        with pytest.raises(CheckpointMismatchError, match="not an official SAN"):
            san_d2.convert(bad)
    extra = {**official, "side_adapter_network.extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointMismatchError, match=r"side_adapter_network\.extra\.weight"):
        san_d2.convert(extra)
    short = dict(official)
    del short["side_adapter_network.mask_decoder.bias_scaling.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"side\.decoder\.bias_scaling\.weight"):
        load_strict(model, san_d2.convert(short), "short")
