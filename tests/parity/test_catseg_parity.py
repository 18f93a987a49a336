"""CAT-Seg (CVPR 2024) vs the official implementation (cvlab-kaist/CAT-Seg @ 6d3a188).

Each ``catseg_*`` fixture holds an official state dict with tiny random weights, ``input.png`` and the
tensors the official run recorded. The model is built from the fixture's config.json (its tiny
structural patches are ordinary config fields here: the vision heads are ``clip.vision.heads`` and
the guidance upsamplers take the CLIP width), loaded through ``catseg_d2.convert`` + strict loading,
and ``input.png`` goes through the predict path of the fixture's protocol (whole image or sliding
window) with hooks on every module a fixture may record. Whatever the fixture records is compared
(relative error <= 1e-4 in float32), whatever it does not is skipped, ``sem_seg`` always:

* CLIP block outputs ``clip.block{i}.out`` come from the tower's own blocks, for any i;
* the valid image size is ``config.json["input"]["input_hw"]`` (never the padded tensor's shape);
* with more classes than the budget (``pad_len``) the class-axis tensors hold the kept classes; a
  recorded full cost volume is ``agg.cost_volume_full`` and the truncation ``agg.trunc.*``
  (``classes``/``indices``/``keep``: kept class ids, ``text_feats``, ``corr``/``cost_volume``); when the
  official kept-class order is recorded, our class-axis tensors are put in that order first;
* a sliding-window fixture records the crop batch (no ``clip_input`` / ``input.npy`` needed);
* descriptive config keys are optional; a missing hyper-parameter fails naming the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ovss.models.catseg import CATSeg, CATSegConfig
from ovss.models.catseg_aggregator import cost_volume
from ovss.vocab.templates import get_templates
from ovss.weights.build import load_strict
from ovss.weights.formats import catseg_d2
from tests.conftest import parity_params, relative_error
from tests.parity._common import (
    TOL,
    aggregator_fields,
    compare_recorded,
    decoder_chunk_hook,
    join_decoder_chunks,
    need,
    normalized_png,
    official_state_dict,
    read_array,
    read_config,
    recorded_tensors,
    vit_clip_config,
)

_INDEX_NAMES = ("agg.trunc.classes", "agg.trunc.indices", "agg.trunc.keep")
# class axis of each per-class tensor (after reshaping (B*T, ...) to (B, T, ...)), for re-ordering
_CLASS_AXIS = {
    "agg.cost_volume": 2,
    "agg.corr_embed_2d": 1,
    "agg.text_guidance_proj": 1,
    "agg.decoder1.out": 1,
    "agg.decoder2.out": 1,
    "agg.trunc.text_feats": 1,
    "agg.trunc.corr": 2,
    "agg.trunc.cost_volume": 2,
}


def fixture_config(cfg: dict, where: str = "config.json") -> CATSegConfig:
    """CATSegConfig from a fixture's config.json (explicit hyper-parameters, official names aside)."""
    c, a = need(cfg, "clip", where), need(cfg, "aggregator", where)
    embed = need(c, "embed_dim", where)
    # The official head derives these from the CLIP model; ovss does too, so they must agree.
    for key in ("TEXT_GUIDANCE_DIM", "APPEARANCE_GUIDANCE_DIM"):
        assert a.get(key, embed) == embed, f"{where}: aggregator {key} differs from the CLIP embed_dim"
    assert "CLS" in str(c.get("dense last block", "CLS")), f"{where}: not the CVPR dense block (v1 fixture?)"
    # Structural patch: upsample1/2 take the CLIP width (officially hard-coded 768 / 1024 = width).
    width = need(c, "vision_width", where)
    for name, k in (("upsample1", 2), ("upsample2", 4)):
        if name in a:
            assert a[name].startswith(f"ConvTranspose2d({width},") and f"k{k},s{k}" in a[name]
    assert list(get_templates("catseg")) == need(cfg, "templates", where), "fixture template is not CAT-Seg's"
    clip = vit_clip_config(c, split_qkv=True)  # vision heads: structural patch (officially width // 64)
    res = need(c, "clip_resolution", where)
    pre = need(cfg, "preprocessing", where)
    mode = str(need(cfg, "inference_mode", where))
    return CATSegConfig(
        clip=clip,
        clip_resolution=res[0],
        guidance_layers=tuple(
            i + 1 for i in need(c, "guidance layer_indexes (0-based blocks hooked)", where)
        ),
        guidance_dims=tuple(need(a, "DECODER_GUIDANCE_DIMS", where)),
        **aggregator_fields(a, where),
        pooling_test=tuple(need(a, "POOLING_SIZES", where)),
        prompt_channels=need(a, "prompt_channel P", where),
        pad_len=need(a, "pad_len", where),
        inference="whole" if mode.startswith("whole") else "slide",
        pixel_mean=tuple(need(pre, "clip_pixel_mean", where)),
        pixel_std=tuple(need(pre, "clip_pixel_std", where)),
    )


def _hooks(model: CATSeg, ours: dict[str, torch.Tensor]) -> list:
    """Forward hooks recording (first call only) every tensor a CAT-Seg fixture may hold."""

    def keep(name: str, fn=lambda o: o):
        def hook(_m, _i, out) -> None:
            if name not in ours:
                ours[name] = fn(out)

        return hook

    def keep_in(name: str, fn):
        def hook(_m, args) -> None:
            if name not in ours:
                ours[name] = fn(args)

        return hook

    agg, visual = model.aggregator, model.clip.visual
    cost5d = lambda o: o.permute(0, 4, 1, 2, 3)  # noqa: E731  ours (B, T, H, W, C) -> official (B, C, T, H, W)
    batch = lambda: ours["agg.in.img_feats"].shape[0]  # noqa: E731

    def corr(args):  # (B*T', P, h, w) -> (B, P, T', h, w): T' = classes after any truncation
        x = args[0]
        return x.reshape(batch(), -1, *x.shape[1:]).transpose(1, 2)

    hooks = [
        visual.conv1.register_forward_pre_hook(keep_in("clip_input", lambda a: a[0])),
        visual.ln_post.register_forward_pre_hook(keep_in("_transformer_out", lambda a: a[0])),
        model.guidance_up[0].register_forward_hook(keep("guidance.upsample1")),
        model.guidance_up[1].register_forward_hook(keep("guidance.upsample2")),
        agg.register_forward_pre_hook(keep_in("agg.in.img_feats", lambda a: a[0])),
        agg.register_forward_pre_hook(keep_in("agg.in.text_feats", lambda a: a[1])),
        agg.cost_embed.register_forward_pre_hook(keep_in("agg.cost_volume", corr)),
        agg.cost_embed.register_forward_hook(keep("agg.corr_embed_2d")),
        agg.appearance_proj.register_forward_hook(keep("agg.appearance_guidance_proj")),
        agg.text_proj.register_forward_hook(keep("agg.text_guidance_proj")),
        agg.decoder[0].register_forward_hook(decoder_chunk_hook(ours.setdefault("_decoder1", []))),
        agg.decoder[1].register_forward_hook(decoder_chunk_hook(ours.setdefault("_decoder2", []))),
        agg.register_forward_hook(keep("agg.out.logits")),
    ]
    for i, proj in enumerate(agg.decoder_guidance_proj):
        hooks.append(proj.register_forward_hook(keep(f"agg.decoder_guidance_proj{i}")))
    for i, layer in enumerate(agg.layers):
        hooks.append(layer.spatial.register_forward_hook(keep(f"agg.layer{i}.spatial_out", cost5d)))
        hooks.append(layer.register_forward_hook(keep(f"agg.layer{i}.out", cost5d)))
    for i, block in enumerate(visual.transformer.resblocks):  # official hooks: sequence-first (L, B, D)
        hooks.append(block.register_forward_hook(keep(f"clip.block{i}.out", lambda o: o.transpose(0, 1))))
    return hooks


def _truncation(ours: dict[str, torch.Tensor], pad_len: int) -> None:
    """The full cost volume and the per-image top-``pad_len`` class selection, as the model makes it."""
    image, text = ours["agg.in.img_feats"], ours["agg.in.text_feats"]
    full = cost_volume(image, text)  # (B, P, T, h, w)
    ours["agg.cost_volume_full"] = full
    ours["agg.trunc.class_scores"] = full.amax(dim=(1, 3, 4))  # (B, T): the top pad_len are kept
    if not 0 < pad_len < text.shape[1]:
        return
    kept = full.amax(dim=(1, 3, 4)).topk(pad_len, dim=1).indices  # (B, pad_len)
    for name in _INDEX_NAMES:
        ours[name] = kept
    ours["agg.trunc.text_feats"] = torch.gather(
        F.normalize(text, dim=-1), 1, kept[:, :, None, None].expand(-1, -1, *text.shape[2:])
    )
    gathered = torch.gather(
        full, 2, kept[:, None, :, None, None].expand(-1, full.shape[1], -1, *full.shape[3:])
    )
    ours["agg.trunc.corr"] = ours["agg.trunc.cost_volume"] = gathered


def _to_official_class_order(ours: dict[str, torch.Tensor], refs: dict[str, torch.Tensor]) -> None:
    """Reorder our kept-class tensors to the official kept-class order (when the fixture records it).

    Class aggregation is permutation-equivariant over classes, so only the order differs."""
    name = next((n for n in _INDEX_NAMES if n in refs and n in ours), None)
    if name is None:
        return
    mine, theirs = ours[name].long(), refs[name].long().reshape(ours[name].shape)
    assert torch.equal(mine.sort(1).values, theirs.sort(1).values), "a different set of classes was kept"
    b, t = mine.shape
    perm = torch.stack(
        [torch.nonzero(mine[i][None, :] == theirs[i][:, None])[:, 1] for i in range(b)]
    )  # (B, t)

    def reorder(x: torch.Tensor, axis: int) -> torch.Tensor:
        shaped = x.reshape(b, -1, *x.shape[1:]) if axis == 1 and x.shape[0] == b * t else x
        index = perm.reshape(b, *([1] * (axis - 1)), t, *([1] * (shaped.ndim - axis - 1)))
        out = torch.gather(shaped, axis, index.expand(*shaped.shape[:axis], t, *shaped.shape[axis + 1 :]))
        return out.reshape(x.shape)

    ours[name] = theirs.reshape(ours[name].shape)
    for key, axis in _CLASS_AXIS.items():
        if key in ours and key in refs:
            ours[key] = reorder(ours[key], axis)
    for key in [k for k in ours if k.startswith("agg.layer")]:
        ours[key] = reorder(ours[key], 2)


_CACHE: dict[Path, dict] = {}


def run_fixture(folder: Path) -> dict:
    """Model from the fixture, ``input.png`` through the fixture's protocol, our recorded tensors."""
    if folder in _CACHE:
        return _CACHE[folder]
    cfg = read_config(folder)
    where = f"{folder.name}/config.json"
    model = CATSeg(fixture_config(cfg, where)).eval()
    load_strict(model, catseg_d2.convert(official_state_dict(folder)), str(folder))
    tokens = read_array(folder, "tokens.npy")
    inp = need(cfg, "input", where)
    h, w = (int(v) for v in need(inp, "input_hw", where))
    bi = need(inp, "batched_inputs", where)
    out_size = (int(need(bi, "height", where)), int(need(bi, "width", where)))
    x = normalized_png(folder, model.config.pixel_mean, model.config.pixel_std)
    assert tuple(x.shape[-2:]) == (h, w), f"{where}: input.png is not input.input_hw {h}x{w}"
    mode = model.config.inference
    if mode == "whole":  # the predictor pads to the size divisibility (slide uses the valid image only)
        d = model.config.size_divisibility
        x = F.pad(x, (0, (-w) % d, 0, (-h) % d))
    ours: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        text = model.encode_text(tokens[None])  # (T, L) tokens are P = 1 template
        ours["text_embeds"] = text
        hooks = _hooks(model, ours)
        try:
            ours["sem_seg"] = model.predict(x, text, (h, w), out_size, inference=mode)[0]
        finally:
            for hook in hooks:
                hook.remove()
        ours["clip.dense_tokens"] = model.clip.visual.head(ours.pop("_transformer_out"))
        for i in (1, 2):  # the decoder runs on chunks of classes: one (B*T, C, h, w) tensor
            ours[f"agg.decoder{i}.out"] = join_decoder_chunks(
                ours.pop(f"_decoder{i}"), ours["agg.in.img_feats"].shape[0]
            )
        _truncation(ours, model.config.pad_len)
    refs = recorded_tensors(folder, cfg)
    _to_official_class_order(ours, refs)
    _CACHE[folder] = {"cfg": cfg, "model": model, "refs": refs, "ours": ours}
    return _CACHE[folder]


def check_fixture(folder: Path) -> dict[str, float]:
    """Relative error of every recorded tensor (sem_seg included); fails on unmapped ones."""
    run = run_fixture(folder)
    return compare_recorded(run["ours"], run["refs"], run["cfg"])


@pytest.mark.parametrize("folder", parity_params("catseg_"))
def test_state_dict_loads_strictly_with_official_counts(folder: Path) -> None:
    run = run_fixture(folder)
    model, counts = run["model"], run["cfg"]["param_counts"]
    assert sum(p.numel() for p in model.parameters()) == counts["total"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == counts["trainable"]


@pytest.mark.parametrize("folder", parity_params("catseg_"))
def test_every_recorded_tensor_matches(folder: Path) -> None:
    errors = check_fixture(folder)
    bad = {n: e for n, e in errors.items() if not e <= TOL}
    assert not bad, f"relative errors above {TOL}: {bad}"
    assert "sem_seg" in errors


@pytest.mark.parametrize("folder", parity_params("catseg_"))
def test_labels_agree_where_the_margin_is_clear(folder: Path) -> None:
    run = run_fixture(folder)
    ref, ours = run["refs"]["sem_seg"], run["ours"]["sem_seg"]
    assert relative_error(ours, ref) <= TOL
    top2 = ref.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > TOL
    assert torch.equal(ours.argmax(0)[clear], ref.argmax(0)[clear])
