"""CAT-Seg (CVPR 2024) vs the official implementation (cvlab-kaist/CAT-Seg @ 6d3a188).

Each ``catseg_*`` fixture holds an official state dict with tiny random weights, the official network
input and every recorded intermediate. The model is built from the fixture's config.json (its tiny
structural patches are ordinary config fields here: the vision heads are ``clip.vision.heads`` and
the guidance upsamplers take the CLIP width), loaded through ``catseg_d2.convert`` + strict loading,
and every recorded tensor is compared (relative error <= 1e-4 in float32).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ovss.models.catseg import CATSeg, CATSegConfig
from ovss.vocab.templates import get_templates
from ovss.weights.formats import catseg_d2
from ovss.weights.loading import load_strict
from tests.conftest import parity_params, relative_error
from tests.parity._common import (
    TOL,
    normalized_png,
    official_state_dict,
    read_array,
    read_config,
    reference_outputs,
    vit_clip_config,
)


def fixture_config(cfg: dict) -> CATSegConfig:
    """CATSegConfig from a fixture's config.json (explicit hyper-parameters, official names aside)."""
    c, a = cfg["clip"], cfg["aggregator"]
    embed = c["embed_dim"]
    # The official head derives these from the CLIP model; ovss does too, so they must agree.
    assert a["TEXT_GUIDANCE_DIM"] == a["APPEARANCE_GUIDANCE_DIM"] == embed
    assert c["act"] == "QuickGELU" and c["dense last block"] == "value path + CLS residual"
    # Structural patch: upsample1/2 take the CLIP width (officially hard-coded 768 / 1024 = width).
    for name, k in (("upsample1", 2), ("upsample2", 4)):
        assert a[name].startswith(f"ConvTranspose2d({c['vision_width']},") and f"k{k},s{k}" in a[name]
    assert list(get_templates("catseg")) == cfg["templates"], "fixture template is not CAT-Seg's"
    clip = vit_clip_config(c, split_qkv=True)  # vision heads: structural patch (officially width // 64)
    res = c["clip_resolution"]
    assert res[0] == res[1] and tuple(a["FEATURE_RESOLUTION"]) == (res[0] // c["patch_size"],) * 2
    pre = cfg["preprocessing"]
    return CATSegConfig(
        clip=clip,
        clip_resolution=res[0],
        guidance_layers=tuple(i + 1 for i in c["guidance layer_indexes (0-based blocks hooked)"]),
        guidance_dims=tuple(a["DECODER_GUIDANCE_DIMS"]),
        guidance_proj_dims=tuple(a["DECODER_GUIDANCE_PROJ_DIMS"]),
        decoder_dims=tuple(a["DECODER_DIMS"]),
        hidden_dim=a["HIDDEN_DIMS"],
        appearance_proj_dim=a["APPEARANCE_GUIDANCE_PROJ_DIM"],
        text_proj_dim=a["TEXT_GUIDANCE_PROJ_DIM"],
        num_layers=a["NUM_LAYERS"],
        num_heads=a["NUM_HEADS"],
        window_size=a["WINDOW_SIZES"],
        pooling_test=tuple(a["POOLING_SIZES"]),
        attention=a["ATTENTION_TYPE"],
        prompt_channels=a["prompt_channel P"],
        pad_len=a["pad_len"],
        inference="whole" if cfg["inference_mode"].startswith("whole") else "slide",
        pixel_mean=tuple(pre["clip_pixel_mean"]),
        pixel_std=tuple(pre["clip_pixel_std"]),
    )


_CACHE: dict[Path, dict] = {}


def _load(folder: Path) -> dict:
    """Model loaded from the fixture, its references, and our tensors for every recorded name."""
    if folder in _CACHE:
        return _CACHE[folder]
    cfg = read_config(folder)
    model = CATSeg(fixture_config(cfg)).eval()
    load_strict(model, catseg_d2.convert(official_state_dict(folder)), str(folder))
    refs = reference_outputs(folder)
    images, tokens = read_array(folder, "input.npy"), read_array(folder, "tokens.npy")

    ours: dict[str, torch.Tensor] = {}
    b, t = images.shape[0], tokens.shape[0]

    def keep(name: str, fn=lambda o: o):
        return lambda _m, _i, out: ours.__setitem__(name, fn(out))

    def keep_input(name: str, fn):
        return lambda _m, args: ours.__setitem__(name, fn(args))

    agg = model.aggregator
    cost5d = lambda o: o.permute(0, 4, 1, 2, 3)  # ours (B, T, H, W, C) -> official (B, C, T, H, W)  # noqa: E731
    hooks = [
        model.clip.visual.conv1.register_forward_pre_hook(keep_input("clip_input", lambda a: a[0])),
        model.guidance_up[0].register_forward_hook(keep("guidance.upsample1")),
        model.guidance_up[1].register_forward_hook(keep("guidance.upsample2")),
        agg.register_forward_pre_hook(keep_input("agg.in.img_feats", lambda a: a[0])),
        agg.register_forward_pre_hook(keep_input("agg.in.text_feats", lambda a: a[1])),
        agg.cost_embed.register_forward_pre_hook(
            keep_input("agg.cost_volume", lambda a: a[0].reshape(b, t, *a[0].shape[1:]).transpose(1, 2))
        ),
        agg.cost_embed.register_forward_hook(keep("agg.corr_embed_2d")),
        agg.appearance_proj.register_forward_hook(keep("agg.appearance_guidance_proj")),
        agg.text_proj.register_forward_hook(keep("agg.text_guidance_proj")),
        agg.decoder[0].register_forward_hook(keep("agg.decoder1.out")),
        agg.decoder[1].register_forward_hook(keep("agg.decoder2.out")),
        agg.register_forward_hook(keep("agg.out.logits")),
    ]
    for i, proj in enumerate(agg.decoder_guidance_proj):
        hooks.append(proj.register_forward_hook(keep(f"agg.decoder_guidance_proj{i}")))
    for i, layer in enumerate(agg.layers):
        hooks.append(layer.spatial.register_forward_hook(keep(f"agg.layer{i}.spatial_out", cost5d)))
        hooks.append(layer.register_forward_hook(keep(f"agg.layer{i}.out", cost5d)))
    for name in cfg["tensors"]:
        m = re.fullmatch(r"clip\.block(\d+)\.out", name)
        if m:  # official hooks give sequence-first (1 + h*w, B, D)
            block = model.clip.visual.transformer.resblocks[int(m[1])]
            hooks.append(block.register_forward_hook(keep(name, lambda o: o.transpose(0, 1))))
    with torch.no_grad():
        text = model.encode_text(tokens[None])  # (T, L) tokens are P = 1 template
        ours["text_embeds"] = text
        model(images, text)  # eval mode: test pooling, no resize (input.npy is the CLIP input)
        ours["clip.dense_tokens"] = model.encode_image_dense(images)[0]
    for hook in hooks:
        hook.remove()
    _CACHE[folder] = {"cfg": cfg, "model": model, "refs": refs, "ours": ours, "images": images, "text": text}
    return _CACHE[folder]


@pytest.mark.parametrize("folder", parity_params("catseg_"))
def test_state_dict_loads_strictly_with_official_counts(folder: Path) -> None:
    run = _load(folder)
    model, counts = run["model"], run["cfg"]["param_counts"]
    assert sum(p.numel() for p in model.parameters()) == counts["total"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == counts["trainable"]


@pytest.mark.parametrize("folder", parity_params("catseg_"))
def test_every_recorded_intermediate_matches(folder: Path) -> None:
    run = _load(folder)
    refs, ours = run["refs"], run["ours"]
    names = [n for n in run["cfg"]["tensors"] if n != "sem_seg"]
    missing = [n for n in names if n not in ours]
    assert not missing, f"recorded tensors not mapped to ovss: {missing}"
    errors = {n: relative_error(ours[n], refs[n]) for n in names}
    bad = {n: e for n, e in errors.items() if not e <= TOL}
    assert not bad, f"relative errors above {TOL}: {bad}"


@pytest.mark.parametrize("folder", parity_params("catseg_"))
def test_sem_seg_from_network_input(folder: Path) -> None:
    run = _load(folder)
    cfg, model = run["cfg"], run["model"]
    if model.config.inference != "whole":
        pytest.skip("the network input of a slide fixture is the crop batch; see the image test")
    inp = cfg["input"]["batched_inputs"]
    with torch.no_grad():  # input.npy is already padded and resized; image_size drives the crop quirk
        out = model.predict(run["images"], run["text"], tuple(cfg["input"]["input_hw"]),
                            (inp["height"], inp["width"]), inference="whole")
    assert relative_error(out[0], run["refs"]["sem_seg"]) <= TOL


@pytest.mark.parametrize("folder", parity_params("catseg_"))
def test_sem_seg_from_image_through_the_protocol(folder: Path) -> None:
    """input.png -> normalise -> (whole: zero-pad to 32) -> predict: CLIP input and sem_seg match."""
    run = _load(folder)
    cfg, model = run["cfg"], run["model"]
    pre = cfg["preprocessing"]
    x = normalized_png(folder, pre["clip_pixel_mean"], pre["clip_pixel_std"])
    h, w = x.shape[-2:]
    mode = model.config.inference
    if mode == "whole":
        d = model.config.size_divisibility
        x = F.pad(x, (0, (-w) % d, 0, (-h) % d))
    seen: list[torch.Tensor] = []
    hook = model.clip.visual.conv1.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    inp = cfg["input"]["batched_inputs"]
    try:
        with torch.no_grad():
            out = model.predict(x, run["text"], (h, w), (inp["height"], inp["width"]), inference=mode)
    finally:
        hook.remove()
    assert relative_error(seen[0], run["refs"]["clip_input"]) <= TOL
    assert relative_error(out[0], run["refs"]["sem_seg"]) <= TOL
