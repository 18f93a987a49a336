"""CAT-Seg v1 and its mmseg port vs the official implementations (``catsegv1_*``, ``catsegmm_*``).

Each fixture holds an official state dict with tiny random weights, ``input.png`` and every recorded
intermediate. The model is built from the fixture's config.json, loaded through the converter of its
checkpoint format (``catseg_v1_d2`` / ``catseg_mm``) with strict loading, and ``input.png`` goes through
the normal predict path (whole image for v1, the mmseg protocol for the port). Every recorded tensor
is compared (relative error <= 1e-4 in float32); tensors stored for crop 0 only are compared with our
crop 0; labels are compared where the top-1/top-2 margin exceeds the tolerance.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ovss.layers.cv2_resize import cv2_resize_linear
from ovss.models.catseg_v1 import CATSegV1, CATSegV1Config
from ovss.towers.resnet import ResNetConfig
from ovss.towers.swin import SwinConfig
from ovss.vocab.templates import get_templates
from ovss.weights.build import load_strict
from ovss.weights.formats import catseg_mm, catseg_v1_d2
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
    reference_outputs,
    vit_clip_config,
)

PREFIXES = ("catsegv1_", "catsegmm_")


def _is_mmseg(cfg: dict) -> bool:
    return "neck (CATSegAggregator)" in cfg


def _pool(value: object) -> tuple[int, int]:
    """``[2, 2]`` or a description starting with ``(6, 6)`` -> (kh, kw)."""
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    nums = re.findall(r"\d+", str(value))[:2]
    return int(nums[0]), int(nums[1])


def fixture_config(cfg: dict, where: str) -> CATSegV1Config:
    """CATSegV1Config from a v1 or mmseg fixture's config.json (explicit hyper-parameters)."""
    c = need(cfg, "clip", where)
    clip = vit_clip_config(c, split_qkv=False)
    assert list(get_templates("imagenet")) == need(cfg, "templates", where), "fixture templates differ"
    pre = need(cfg, "preprocessing", where)
    res = need(c, "clip_resolution", where)
    common = dict(
        clip=clip,
        clip_resolution=res[0],
        clip_mean=tuple(need(pre, "clip_pixel_mean", where)),
        clip_std=tuple(need(pre, "clip_pixel_std", where)),
    )
    if _is_mmseg(cfg):
        fe, neck = need(cfg, "feature_extractor", where), need(cfg, "neck (CATSegAggregator)", where)
        head = need(cfg, "decode_head (CATSegHead)", where)
        return CATSegV1Config(
            **common,
            **backbone_fields(fe, where, mmseg=True),
            backbone_mean=tuple(need(pre, "pixel_mean (feature extractor)", where)),
            backbone_std=tuple(need(pre, "pixel_std (feature extractor)", where)),
            **aggregator_fields({**head, **neck}, where, mmseg=True),  # neck's embed_dims: hidden_dim
            prompt_channels=need(neck, "prompt_channel", where),
            pooling_test=_pool(need(neck, "pooling_size", where)),
            class_mlp_identity=True,
            inference="mmseg",
            slide_stride=384,
            size_divisibility=0,
        )
    bb, agg = need(cfg, "backbone", where), need(cfg, "aggregator", where)
    return CATSegV1Config(
        **common,
        **backbone_fields(bb, where, mmseg=False),
        backbone_mean=tuple(need(pre, "pixel_mean (extra backbone)", where)),
        backbone_std=tuple(need(pre, "pixel_std (extra backbone)", where)),
        **aggregator_fields(agg, where),
        prompt_channels=need(agg, "prompt_channel P (Aggregator default, hard-coded 80)", where),
        pooling_test=_pool(need(agg, "POOLING_SIZES", where)),
        size_divisibility=need(pre, "size_divisibility", where),
        inference="whole" if need(cfg, "inference_mode", where).startswith("whole") else "slide",
    )


_SWIN_KEYS = {  # SwinConfig field: (detectron2 MODEL.SWIN key, mmseg SwinTransformer key)
    "embed_dim": ("EMBED_DIM", "embed_dims"),
    "depths": ("DEPTHS", "depths"),
    "heads": ("NUM_HEADS", "num_heads"),
    "window": ("WINDOW_SIZE", "window_size"),
    "patch_size": ("PATCH_SIZE", "patch_size"),
    "mlp_ratio": ("MLP_RATIO", "mlp_ratio"),
    "image_size": ("PRETRAIN_IMG_SIZE", "pretrain_img_size"),
}


def backbone_fields(bb: dict, where: str, mmseg: bool) -> dict[str, object]:
    """``resnet`` / ``swin`` and ``backbone_lr_mult`` of CATSegV1Config from the fixture's guidance
    backbone section (detectron2 ``backbone`` or mmseg ``feature_extractor``; ResNet or Swin)."""
    kind = str(need(bb, "type", where))
    lr_mult = float(need(bb, "lr_mult" if mmseg else "SOLVER.BACKBONE_MULTIPLIER", where))
    if "swin" in kind.lower():
        fields = {f: need(bb, keys[mmseg], where) for f, keys in _SWIN_KEYS.items()}
        # CAT-Seg v1 builds the stages up to res4 (its guidance: res2, res3, res4)
        built = need(bb, "out_indices", where) if mmseg and "out_indices" in bb else None
        stages = max(built) + 1 if built else len(bb.get("OUT_FEATURES", ["res2", "res3", "res4"]))
        fields["depths"], fields["heads"] = tuple(fields["depths"])[:stages], tuple(fields["heads"])[:stages]
        return {"resnet": None, "swin": SwinConfig(**fields), "backbone_lr_mult": lr_mult}
    if mmseg:
        assert need(bb, "style", where).startswith("pytorch") and "BN" in need(bb, "norm_cfg", where)
        base = need(bb, "base_channels", where)
        resnet = ResNetConfig(
            depths=tuple(need(bb, "blocks", where)),
            stem_channels=need(bb, "stem_channels", where),
            res2_channels=4 * base,
            width_per_group=base,
            stride_in_1x1=False,
            norm="bn",
        )
    else:
        assert "resnet" in kind and need(bb, "NORM", where).startswith("FrozenBN"), f"{where}: {kind}"
        resnet = ResNetConfig(
            depths=tuple(need(bb, "blocks_per_stage (res2,res3,res4)", where)),
            stem_channels=need(bb, "STEM_OUT_CHANNELS", where),
            res2_channels=need(bb, "RES2_OUT_CHANNELS", where),
            num_groups=need(bb, "NUM_GROUPS", where),
            width_per_group=need(bb, "WIDTH_PER_GROUP", where),
            stride_in_1x1=need(bb, "STRIDE_IN_1X1", where),
        )
    return {"resnet": resnet, "swin": None, "backbone_lr_mult": lr_mult}


def text_from_token_rows(model: CATSegV1, tokens: torch.Tensor, rows: list) -> torch.Tensor:
    """(K, P, E) text embeddings from ``tokens.npy`` and ``token_rows`` ``[first_row, n_rows,
    n_synonyms]``: per class, for each template one row per synonym; synonyms are encoded like classes
    and averaged per template, then re-normalised (the model's ``synonyms="mean"`` rule, as the
    vocabulary embedder applies it)."""
    if all(s == 1 for _, _, s in rows):  # one batch: (K*P, L) -> (P, K, L)
        p = rows[0][1]
        assert all(n == p for _, n, _ in rows), "classes with different template counts"
        return model.encode_text(tokens.reshape(len(rows), p, -1).transpose(0, 1))
    out = []
    for first, n, s in rows:
        per = model.encode_text(tokens[first : first + n].reshape(n // s, s, -1))  # (S, P, E)
        out.append(F.normalize(per.mean(0), dim=-1) if s > 1 else per[0])
    return torch.stack(out)


def _hooks(model: CATSegV1, ours: dict[str, torch.Tensor]) -> list:
    """Forward hooks filling ``ours`` with every tensor a fixture may record (both naming schemes)."""

    def keep(names: tuple[str, ...], fn=lambda o: o):
        def hook(_m, _i, out):
            for n in names:
                ours.setdefault(n, fn(out))

        return hook

    def keep_in(names: tuple[str, ...], fn):
        def hook(_m, args):
            for n in names:
                ours.setdefault(n, fn(args))

        return hook

    agg, visual = model.aggregator, model.clip.visual
    cost5d = lambda o: o.permute(0, 4, 1, 2, 3)  # noqa: E731  ours (B, T, H, W, C) -> official (B, C, T, H, W)

    def corr(a):
        x = a[0]
        return x.reshape(-1, ours["_t"], *x.shape[1:]).transpose(1, 2)

    def corr_embed(o):
        return o.reshape(-1, ours["_t"], *o.shape[1:]).transpose(1, 2)

    def transformer_out(args):
        return args[0].transpose(0, 1)

    def keep_stages(_m, _i, out: dict) -> None:
        for k, v in out.items():
            ours.setdefault(f"backbone.{k}", v)

    hooks = [
        visual.conv1.register_forward_pre_hook(keep_in(("clip_input",), lambda a: a[0])),
        visual.ln_post.register_forward_pre_hook(keep_in(("clip.transformer.out",), transformer_out)),
        model.backbone.register_forward_pre_hook(keep_in(("backbone_input",), lambda a: a[0])),
        model.backbone.register_forward_hook(keep_stages),
        agg.register_forward_pre_hook(keep_in(("agg.in.img_feats", "clip_img_feat"), lambda a: a[0])),
        agg.register_forward_pre_hook(keep_in(("agg.in.text_feats",), lambda a: a[1])),
        agg.cost_embed.register_forward_pre_hook(keep_in(("agg.cost_volume",), corr)),
        agg.cost_embed.register_forward_hook(keep(("agg.corr_embed",), corr_embed)),
        agg.appearance_proj.register_forward_hook(keep(("agg.appearance_guidance_proj",))),
        agg.text_proj.register_forward_hook(keep(("agg.text_guidance_proj",))),
        agg.register_forward_hook(keep(("agg.out.logits", "head.out.logits"))),
    ]
    for i, block in enumerate(visual.transformer.resblocks):
        hooks.append(block.register_forward_hook(keep((f"clip.block{i}.out",), lambda o: o.transpose(0, 1))))
    for i, proj in enumerate(agg.decoder_guidance_proj):
        hooks.append(
            proj.register_forward_hook(
                keep((f"agg.decoder_guidance_proj{i}", f"head.decoder_guidance_proj{i}"))
            )
        )
    for i, block in enumerate(agg.decoder):  # runs on chunks of classes: joined after the forward
        hooks.append(block.register_forward_hook(decoder_chunk_hook(ours.setdefault(f"_decoder{i + 1}", []))))
    for i, layer in enumerate(agg.layers):
        hooks.append(layer.spatial.register_forward_hook(keep((f"agg.layer{i}.spatial_out",), cost5d)))
        hooks.append(layer.register_forward_hook(keep((f"agg.layer{i}.out",), cost5d)))
    return hooks


_CACHE: dict[Path, dict] = {}
_CONVERTERS = {True: catseg_mm, False: catseg_v1_d2}


def _run(folder: Path) -> dict:
    """Model from the fixture, input.png through the predict path, our tensors for every name."""
    if folder in _CACHE:
        return _CACHE[folder]
    cfg = read_config(folder)
    where = f"{folder.name}/config.json"
    mm = _is_mmseg(cfg)
    model = CATSegV1(fixture_config(cfg, where)).eval()
    load_strict(model, _CONVERTERS[mm].convert(official_state_dict(folder)), str(folder))
    tokens = read_array(folder, "tokens.npy")
    rows = need(cfg, "token_rows", where)
    ours: dict[str, torch.Tensor] = {"_t": len(rows)}
    rgb = normalized_png(folder, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # the model normalises itself
    h, w = (int(v) for v in need(need(cfg, "input", where), "input_hw", where))
    assert tuple(rgb.shape[-2:]) == (h, w), "input.png is not the recorded valid size"
    if mm:
        out_size = (h, w)
    else:
        bi = need(need(cfg, "input", where), "batched_inputs", where)
        out_size = (need(bi, "height", where), need(bi, "width", where))
    div = model.config.size_divisibility
    x = F.pad(rgb, (0, (-w) % div, 0, (-h) % div)) if div > 1 else rgb
    with torch.no_grad():
        text = text_from_token_rows(model, tokens, rows)
        ours["text_embeds"] = text
        hooks = _hooks(model, ours)
        try:
            ours["sem_seg"] = model.predict(x, text, (h, w), out_size)[0]
        finally:
            for hook in hooks:
                hook.remove()
        for i in (1, 2):
            joined = join_decoder_chunks(ours.pop(f"_decoder{i}"), ours["clip_img_feat"].shape[0])
            ours[f"agg.decoder{i}.out"] = ours[f"head.decoder{i}.out"] = joined
        if "clip.transformer.out" in ours:
            ours["clip.dense_tokens"] = model.clip.visual.head(ours["clip.transformer.out"].transpose(0, 1))
    if mm:
        hr, wr = need(need(cfg, "input", where), "img_shape after Resize", where)
        ours["model_input"] = cv2_resize_linear(rgb, (hr, wr))
    ours["pred_sem_seg"] = ours["sem_seg"].argmax(0, keepdim=True)
    ours.pop("_t")
    _CACHE[folder] = {
        "cfg": cfg,
        "model": model,
        "refs": reference_outputs(folder),
        "ours": ours,
        "folder": folder,
    }
    return _CACHE[folder]


@pytest.mark.parametrize("folder", [p for prefix in PREFIXES for p in parity_params(prefix)])
def test_state_dict_loads_strictly_with_official_counts(folder: Path) -> None:
    run = _run(folder)
    model, counts = run["model"], run["cfg"]["param_counts"]
    assert sum(p.numel() for p in model.parameters()) == counts["total"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == counts["trainable"]


@pytest.mark.parametrize("folder", [p for prefix in PREFIXES for p in parity_params(prefix)])
def test_every_recorded_tensor_matches(folder: Path) -> None:
    run = _run(folder)
    refs = recorded_tensors(folder, run["cfg"])
    errors = compare_recorded(run["ours"], refs, run["cfg"], skip=("sem_seg", "pred_sem_seg"))
    bad = {n: e for n, e in errors.items() if not e <= TOL}
    assert not bad, f"relative errors above {TOL}: {bad}"


@pytest.mark.parametrize("folder", [p for prefix in PREFIXES for p in parity_params(prefix)])
def test_sem_seg_from_input_png(folder: Path) -> None:
    run = _run(folder)
    ref, ours = run["refs"]["sem_seg"], run["ours"]["sem_seg"]
    assert relative_error(ours, ref) <= TOL
    top2 = ref.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > TOL  # near-ties may flip within the tolerance
    assert clear.float().mean() > 0.9
    assert torch.equal(ours.argmax(0)[clear], ref.argmax(0)[clear])


@pytest.mark.parametrize("folder", parity_params("catsegmm_"))
def test_mmseg_fixture_through_the_segmenter(folder: Path) -> None:
    """The mmseg protocol needs no test-time resize from the predictor: ``Segmenter.predict`` on
    input.png, with the vocabulary tokenised and embedded by ovss, gives the recorded logits."""
    from ovss.api.segmenter import Segmenter

    run = _run(folder)
    cfg = run["cfg"]
    seg = Segmenter(run["model"])
    result = seg.predict(folder / "input.png", cfg["class_names"], return_scores=True)
    ref = run["refs"]["sem_seg"]
    assert relative_error(torch.from_numpy(result.scores), ref) <= TOL
    assert relative_error(seg.text_embeddings, run["refs"]["text_embeds"]) <= TOL
