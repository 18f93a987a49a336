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
from ovss.weights.build import load_strict
from ovss.weights.formats import san_d2
from tests.conftest import parity_params, relative_error
from tests.parity._common import (
    TOL,
    compare_recorded,
    meta_state_dict,
    need,
    official_state_dict,
    read_array,
    read_config,
    read_manifest,
    recorded_tensors,
    vit_clip_config,
)


def fixture_config(cfg: dict, where: str = "config.json") -> SANConfig:
    """SANConfig from a fixture's config.json (explicit hyper-parameters next to the official names)."""
    c, san, side = (need(cfg, k, where) for k in ("clip", "san", "side_adapter"))
    bias = need(side, "ATTN_BIAS", where)
    assert need(c, "act", where).startswith("QuickGELU") and need(side, "act", where).startswith("GELU"), (
        "unexpected activations"
    )
    assert need(san, "REC_CROSS_ATTN", where) is False and need(san, "SOS_TOKEN_FORMAT", where) == "cls_token"
    assert list(get_templates("vild")) == need(cfg, "templates", where), (
        "fixture templates are not the 14 ViLD ones"
    )
    clip = vit_clip_config(c)
    pairs = tuple(tuple(int(v) for v in item.split("->")) for item in need(san, "FUSION_MAP", where))
    return SANConfig(
        clip=clip,
        clip_resolution=need(san, "CLIP_RESOLUTION", where),
        split=need(san, "FEATURE_LAST_LAYER_IDX (split)", where),
        fusion_map=pairs,
        size_divisibility=need(san, "SIZE_DIVISIBILITY", where),
        side_width=need(side, "width", where),
        side_depth=need(side, "depth", where),
        side_heads=need(side, "heads", where),
        side_mlp_ratio=need(side, "mlp_ratio", where),
        side_patch_size=need(side, "patch_size", where),
        side_image_size=need(side, "IMAGE_SIZE (pos_embed grid = IMAGE_SIZE/patch)", where),
        side_ln_eps=need(side, "ln_eps", where),
        num_queries=need(side, "NUM_QUERIES", where),
        deep_supervision=tuple(need(side, "DEEP_SUPERVISION_IDXS", where)),
        attn_bias_heads=need(bias, "NUM_HEADS", where),
        attn_bias_layers=need(bias, "NUM_LAYERS", where),
        embed_channels=need(bias, "EMBED_CHANNELS", where),
        mlp_channels=need(bias, "MLP_CHANNELS", where),
        mlp_layers=need(bias, "MLP_NUM_LAYERS", where),
        rescale_attn_bias=need(bias, "RESCALE_ATTN_BIAS", where),
        rec_downsample=need(san, "REC_DOWNSAMPLE_METHOD", where),
        pixel_mean=tuple(need(need(cfg, "preprocessing", where), "pixel_mean_0_255", where)),
        pixel_std=tuple(need(need(cfg, "preprocessing", where), "pixel_std_0_255", where)),
    )


def load_fixture_model(folder: Path) -> tuple[SAN, dict]:
    cfg = read_config(folder)
    model = SAN(fixture_config(cfg, f"{folder.name}/config.json")).eval()
    load_strict(model, san_d2.convert(official_state_dict(folder)), str(folder))
    return model, cfg


def _as_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) -> (B, C, h, w)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)


def run_with_intermediates(
    model: SAN, images: torch.Tensor, tokens: torch.Tensor, out_hw, valid_hw=None, clip_records=()
) -> dict:
    """Every fixture tensor, named as in config.json "tensors", from one run of our model.

    ``valid_hw``: the valid image size inside the padded ``images`` (default: their shape);
    ``clip_records``: CLIP record indices the fixture holds (``clip.feat.i``/``clip.cls.i``); those the
    model does not fuse are read from the tower's intermediates on the same CLIP input."""
    valid_hw = tuple(valid_hw) if valid_hw is not None else tuple(images.shape[-2:])
    got: dict[str, torch.Tensor] = {"side_input": images}

    def keep(name: str, pick=lambda out: out):
        def hook(module, args, out=None):  # forward hooks get (module, args, out); pre-hooks (module, args)
            got[name] = pick(out if out is not None else args[0])

        return hook

    side, visual = model.side, model.clip.visual
    hooks = [
        visual.conv1.register_forward_pre_hook(keep("clip_input")),
        side.register_forward_hook(keep("side")),
        side.decoder.register_forward_hook(keep("mask_logits", lambda o: o[0])),
        side.decoder.register_forward_hook(keep("attn_bias", lambda o: o[1][0])),
    ]
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
            sem_seg = model.predict(images, text, valid_hw, out_hw)
            classifier = model.classifier(text)
    finally:
        for h in hooks:
            h.remove()
    got.update(
        {
            "text.per_template": per_template,
            "text.class_embeds": text,
            "text.classifier": classifier,
            "class_logits": out["pred_logits"],
            "region_embeds": regions,
            "rec.attn_mask": mask.flatten(0, 1),
            "sem_seg": sem_seg[0],
        }
    )
    extra = sorted(set(clip_records) - set(records))
    if extra:  # recorded but not fused: the tower's own intermediates on the CLIP input
        with torch.no_grad():
            found, _ = model.clip.visual.forward_intermediates(got["clip_input"], extra)
        records = {**records, **dict(zip(extra, found))}
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
    ref = recorded_tensors(folder, cfg)
    assert "sem_seg" in ref, f"{folder.name}: no sem_seg recorded"
    out_hw = tuple(ref["sem_seg"].shape[-2:])
    valid = need(need(cfg, "input", f"{folder.name}/config.json"), "input_hw", f"{folder.name}/config.json")
    records = sorted({int(n.rsplit(".", 1)[1]) for n in ref if n.startswith(("clip.feat.", "clip.cls."))})
    got = run_with_intermediates(model, images, tokens, out_hw, valid, records)
    errors = compare_recorded(got, ref, cfg)
    bad = {n: e for n, e in errors.items() if not e <= TOL}
    assert not bad, f"relative error above {TOL}: {bad}"
    # the argmax agrees with the official one wherever the top-1/top-2 margin is clear
    top2 = ref["sem_seg"].topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > TOL
    assert torch.equal(got["sem_seg"].argmax(0)[clear], ref["sem_seg"].argmax(0)[clear])
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
    catseg_like = {
        "sem_seg_head.predictor.clip_model.visual.conv1.weight": torch.zeros(1),
        "sem_seg_head.predictor.transformer.conv1.weight": torch.zeros(1),
    }
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
