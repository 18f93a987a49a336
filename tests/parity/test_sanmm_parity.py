"""SAN as mmsegmentation 1.2.2 runs it vs ovss (``sanmm_*`` fixtures; manifests ``manifest_san_mm_*``).

Each fixture holds mmseg's own SAN state dict (tiny random weights), ``input.png``, the recorded
intermediates and mmseg's ``seg_logits`` (``sem_seg``). The model is built from the fixture's
config.json (every hyper-parameter read from it), loaded through ``san_mmseg.convert`` with strict
loading, and ``input.png`` goes through ``Segmenter.predict`` with the mmseg protocol (cv2-exact
resize, mmseg's post-processing order). Every recorded tensor is compared (relative error <= 1e-4 in
float32); a recorded tensor the harness cannot map fails; labels are compared where the top-1/top-2
margin is clear.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from ovss.models.san import SAN, SANConfig, _downsample, san_vit_b16_mmseg, san_vit_l14_mmseg
from ovss.models.san_protocols import mmseg_score_blocks
from ovss.towers.clip import ClipConfig
from ovss.towers.text import TextConfig
from ovss.towers.vit import VisionConfig
from ovss.vocab.templates import get_templates
from ovss.weights.build import load_strict
from ovss.weights.formats import san_mmseg
from tests.conftest import parity_dir, parity_params, relative_error
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
    reference_outputs,
)


def pick(section: dict, name: str, where: str) -> object:
    """``section[name]``, or the entry whose key is ``name`` followed by a parenthesised note
    (``"output_dims (E)"``); fails naming the key when there is none."""
    if isinstance(section, dict):
        for key, value in section.items():
            if key == name or key.startswith(name + " ("):
                return value
    return need(section, name, where)


def _numbers(text: str, pattern: str, where: str) -> list[float]:
    m = re.search(pattern, str(text))
    if m is None:
        pytest.fail(f"{where}: cannot read {pattern!r} from {str(text)[:120]!r}", pytrace=False)
    return [float(v) for v in re.findall(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", m.group(1))]


def _check(condition: bool, what: str, where: str) -> None:
    if not condition:
        pytest.fail(f"{where}: {what}", pytrace=False)


def fixture_config(cfg: dict, where: str) -> SANConfig:
    """SANConfig (mmseg protocol) from a ``sanmm_`` fixture's config.json."""

    def p(section: dict, name: str) -> object:
        return pick(section, name, where)

    enc, txt, head = p(cfg, "image_encoder"), p(cfg, "text_encoder"), p(cfg, "decode_head")
    san, gen = p(head, "san_cfg"), p(head, "maskgen_cfg")
    senc, sdec = p(san, "cfg_encoder"), p(san, "cfg_decoder")
    width, heads, e = p(enc, "embed_dims"), p(enc, "num_heads"), p(txt, "output_dims")
    split, out_indices = p(enc, "num_layers"), list(p(enc, "out_indices"))
    for ok, what in (
        (str(p(enc, "act")).startswith("QuickGELU"), "image encoder act is not QuickGELU"),
        (p(enc, "patch_bias") is False and p(enc, "pre_norm") is True, "patch_bias / pre_norm"),
        (p(enc, "out_origin") is True and p(enc, "final_norm") is False, "out_origin / final_norm"),
        (p(san, "clip_channels") == width and p(gen, "embed_dims") == width, "CLIP width"),
        (p(gen, "num_heads") == heads and p(gen, "out_dims") == e, "recognition heads / width"),
        (p(gen, "sos_token_num") == p(san, "num_queries"), "SOS tokens != queries"),
        (p(gen, "sos_token_format") == "cls_token" and p(gen, "cross_attn") is False, "recognition"),
        (p(san, "patch_bias") is True and p(txt, "cat_bg") is True, "side patch bias / bg embed"),
        (p(head, "align_corners") is False, "align_corners"),
        (list(p(san, "fusion_index")) == list(range(len(out_indices) + 1)),
         "fusion_index is not [0, 1, ...]: conv_clips.i would not be side index i"),
        (list(get_templates("vild")) == need(cfg, "templates", where), "templates are not the 14 ViLD ones"),
        (out_indices[-1] == split - 1, "the last image-encoder record is not after its last layer"),
    ):
        _check(bool(ok), f"unexpected structure: {what}", where)
    records = [0] + [i + 1 for i in out_indices]
    prep = str(p(p(cfg, "preprocessing"), "data_preprocessor"))
    vision = VisionConfig(
        image_size=p(enc, "img_size")[0], patch_size=p(enc, "patch_size"), width=width,
        layers=split + p(gen, "num_layers"), heads=heads, mlp_ratio=p(enc, "mlp_ratio"), output_dim=e,
        ln_eps=p(enc, "ln_eps"),
    )  # fmt: skip
    text = TextConfig(
        context_length=p(txt, "context_length"), vocab_size=p(txt, "vocab_size"), width=p(txt, "embed_dims"),
        heads=p(txt, "num_heads"), layers=p(txt, "num_layers"), output_dim=e, mlp_ratio=p(txt, "mlp_ratio"),
        ln_eps=p(txt, "ln_eps"),
    )  # fmt: skip
    side_patch = p(san, "patch_size")
    return SANConfig(
        clip=ClipConfig(embed_dim=e, vision=vision, text=text),
        clip_resolution=p(cfg, "encoder_resolution"),
        split=split,
        fusion_map=tuple((records[j], s) for j, s in enumerate(p(san, "fusion_index"))),
        side_width=p(san, "embed_dims"),
        side_depth=p(senc, "num_encode_layer"),
        side_heads=p(senc, "num_heads"),
        side_mlp_ratio=p(senc, "mlp_ratio"),
        side_patch_size=side_patch,
        side_image_size=p(san, "pos_embed grid")[0] * side_patch,
        side_ln_eps=_numbers(p(san, "norm_cfg"), r"eps ([\d.eE+-]+)", where)[0],
        num_queries=p(san, "num_queries"),
        deep_supervision=(p(senc, "num_encode_layer"),),  # predict decodes the last block only
        attn_bias_heads=p(sdec, "num_heads"),
        attn_bias_layers=p(sdec, "num_layers"),
        embed_channels=p(sdec, "embed_channels"),
        mlp_channels=p(sdec, "mlp_channels"),
        mlp_layers=p(sdec, "num_mlp"),
        rescale_attn_bias=p(sdec, "rescale"),
        size_divisibility=int(_numbers(prep, r"test_cfg size_divisor=(\d+)", where)[0]),
        pixel_mean=tuple(_numbers(prep, r"mean \[([^\]]+)\]", where)),
        pixel_std=tuple(_numbers(prep, r"std \[([^\]]+)\]", where)),
        inference="mmseg",
    )


def _wrap(model: SAN, name: str, store: dict) -> None:
    """Record what the instance method ``name`` returns (called as a method, so hooks do not see it)."""
    original = getattr(model, name)

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        store.setdefault(name, out)
        return out

    setattr(model, name, wrapped)


def _hooks(model: SAN, got: dict) -> list:
    """Forward hooks for the side adapter and the recognition blocks (first call of each kept)."""

    def keep(name: str, fn=lambda out: out, pre: bool = False):
        def hook(_m, args, out=None):
            got.setdefault(name, fn(args[0] if pre else out))

        return hook

    side, visual, split = model.side, model.clip.visual, model.config.split
    hooks = [
        visual.conv1.register_forward_pre_hook(keep("clip_input", pre=True)),
        side.register_forward_pre_hook(keep("input.npy", pre=True)),
        side.patch_embed.register_forward_hook(keep("side.patch_tokens", _tokens)),
        side.blocks[0].register_forward_pre_hook(keep("side.fusion0.tokens", pre=True)),
        side.decoder.register_forward_hook(keep("mask_props", lambda o: o[0])),
        side.decoder.register_forward_hook(keep("attn_bias", lambda o: o[1][0])),
    ]
    for i, block in enumerate(side.blocks, start=1):
        hooks.append(block.register_forward_hook(keep(f"side.block{i}.out")))
    for key, layer in side.fusion.items():
        hooks.append(layer.register_forward_hook(keep(f"_fused{key}")))
        hooks.append(layer.proj.register_forward_hook(keep(f"_proj{key}")))
    for i, block in enumerate(visual.transformer.resblocks[split:]):
        hooks.append(block.register_forward_hook(keep(f"rec.layer{i}.out", lambda o: o.transpose(0, 1))))
    return hooks


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C)."""
    return x.flatten(2).transpose(1, 2)


def _map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) -> (B, C, h, w)."""
    return x.transpose(1, 2).reshape(x.shape[0], -1, *grid)


_CACHE: dict[Path, dict] = {}


def _run(folder: Path) -> dict:
    """Model from the fixture, ``input.png`` through ``Segmenter.predict``, every mappable tensor."""
    if folder in _CACHE:
        return _CACHE[folder]
    from ovss.api.segmenter import Segmenter

    where = f"{folder.name}/config.json"
    cfg = read_config(folder)
    model = SAN(fixture_config(cfg, where)).eval()
    load_strict(model, san_mmseg.convert({"state_dict": official_state_dict(folder)}), str(folder))
    got: dict = {}
    for name in ("class_logits", "recognize"):  # predict runs SAN's image stage, then its text stage
        _wrap(model, name, got)
    hooks = _hooks(model, got)
    seg = Segmenter(model)
    try:
        result = seg.predict(folder / "input.png", need(cfg, "class_names", where), return_scores=True)
    finally:
        for h in hooks:
            h.remove()
    _finish(model, got, seg, read_array(folder, "tokens.npy"))
    got["sem_seg"] = torch.from_numpy(result.scores)
    got["pred_sem_seg"] = torch.from_numpy(result.label_map)[None]
    _CACHE[folder] = {"cfg": cfg, "model": model, "ours": got, "refs": reference_outputs(folder), "seg": seg}
    return _CACHE[folder]


def _finish(model: SAN, got: dict, seg, tokens: torch.Tensor) -> None:
    """Derived tensors: text, CLIP records, side tokens, pooled bias, padded-size map."""
    cfg = model.config
    got["mask_logits"], got["mask_embeds"] = got.pop("class_logits"), got.pop("recognize")
    images = got["input.npy"]
    with torch.no_grad():
        got["text.per_template"] = torch.stack([model.clip.encode_text(t, normalize=True) for t in tokens])
        got["text.class_embeds"] = seg.text_embeddings
        got["text.classifier"] = model.clip.logit_scale.exp() * model.classifier(seg.text_embeddings)
        records = [0] + [c for c, _ in cfg.fusion_map if c]
        found, grid = model.clip.visual.forward_intermediates(got["clip_input"], records)
        hw = tuple(int(v) for v in images.shape[-2:])
        blocks = mmseg_score_blocks(got["mask_props"], got["mask_logits"], hw, hw, hw, 1 << 30)
        padded = torch.cat([b for _, _, b in blocks], dim=2)
    for j, rec in enumerate(found):
        got[f"clip.feat.{j}"] = _map(rec[:, 1:], grid)
        got[f"clip.cls.{j}"] = rec[:, 0]
    n = got["side.patch_tokens"].shape[1]
    side_grid = tuple(got["mask_props"].shape[-2:])
    for key in [k for k in got if k.startswith("_fused")]:
        s = key[len("_fused") :]
        proj = got.pop(f"_proj{s}")
        got[f"side.fusion{s}.clip_proj"] = _map(proj, grid)
        fused = got.pop(key)
        if s != "0":
            got[f"side.fusion{s}.tokens"] = torch.cat([got[f"side.block{s}.out"][:, :-n], fused], dim=1)
    last = got[f"side.block{cfg.side_depth}.out"]
    got["side.out.query"], got["side.out.x"] = last[:, :-n], _map(last[:, -n:], side_grid)
    bias = got["attn_bias"]
    b, h, q = bias.shape[:3]
    pooled = _downsample(bias.flatten(1, 2), grid, cfg.rec_downsample)
    got["rec.attn_bias_pooled"] = pooled.reshape(b, h, q, *grid)
    got["head.seg_logits_probe"] = padded[..., ::16, ::16]
    for size in (32, 64, 128):
        got[f"clip_input.crop{size}"] = got["clip_input"][..., :size, :size]


@pytest.mark.parametrize("folder", parity_params("sanmm_"))
def test_state_dict_loads_strictly_with_official_counts(folder: Path) -> None:
    run = _run(folder)
    model, counts = run["model"], run["cfg"]["param_counts"]
    assert sum(p.numel() for p in model.parameters()) == counts["total"]
    trainable = pick(counts, "trainable", f"{folder.name}/config.json")
    assert sum(p.numel() for _, p in model.trainable_parameters()) == trainable
    flat = san_mmseg.convert(official_state_dict(folder))  # a bare state dict converts the same
    assert flat.keys() == model.state_dict().keys()


@pytest.mark.parametrize("folder", parity_params("sanmm_"))
def test_every_recorded_tensor_matches(folder: Path) -> None:
    run = _run(folder)
    refs = recorded_tensors(folder, run["cfg"])
    assert "sem_seg" in refs, f"{folder.name}: no sem_seg recorded"
    errors = compare_recorded(run["ours"], refs, run["cfg"], skip=("pred_sem_seg",))
    bad = {n: e for n, e in errors.items() if not e <= TOL}
    assert not bad, f"relative errors above {TOL}: {bad}"


@pytest.mark.parametrize("folder", parity_params("sanmm_"))
def test_labels_from_input_png(folder: Path) -> None:
    run = _run(folder)
    ref = run["refs"]["sem_seg"]
    top2 = ref.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > TOL  # near-ties may flip within the tolerance
    assert clear.float().mean() > 0.9
    ours = run["ours"]["pred_sem_seg"][0]
    assert torch.equal(ours[clear], ref.argmax(0)[clear])
    if "pred_sem_seg" in run["refs"]:
        assert torch.equal(ours[clear], run["refs"]["pred_sem_seg"][0][clear])


@pytest.mark.parametrize("folder", parity_params("sanmm_"))
def test_d2_protocol_differs_only_after_the_network(folder: Path) -> None:
    """The same weights under ``inference="d2"``: the network outputs are the mmseg ones (same input),
    the score map is not (logits resized before the sigmoid)."""
    run = _run(folder)
    model, images = run["model"], run["ours"]["input.npy"]
    text = run["seg"].text_embeddings
    valid = run["seg"].model.preprocess_size(*run["refs"]["sem_seg"].shape[-2:])
    out_hw = tuple(run["refs"]["sem_seg"].shape[-2:])
    with torch.no_grad():
        mm = model.predict(images, text, valid, out_hw)[0]
        d2 = model.predict(images, text, valid, out_hw, inference="d2")[0]
    assert relative_error(mm, run["refs"]["sem_seg"]) <= TOL
    if tuple(valid) != out_hw:  # with no resize after the network the two orders coincide
        assert relative_error(d2, run["refs"]["sem_seg"]) > 10 * TOL


MANIFESTS = {"san_mm_vit_b16": san_vit_b16_mmseg, "san_mm_vit_l14_336": san_vit_l14_mmseg}


@pytest.mark.parametrize("name", sorted(MANIFESTS))
@pytest.mark.parametrize("wrapped", [True, False], ids=["state_dict", "flat"])
def test_converter_consumes_full_size_manifest(name: str, wrapped: bool) -> None:
    """Every key of mmseg's full-size SAN consumed with its shape, strictly; only the manifest's
    listed extras are dropped; the parameter counts are the manifest's."""
    manifest = read_manifest(f"manifest_{name}.json")
    mm = meta_state_dict(manifest)
    assert len(mm) == manifest["num_keys"]
    extras = _manifest_extras(manifest)
    with torch.device("meta"):
        model = SAN(MANIFESTS[name]())
    converted = san_mmseg.convert({"state_dict": mm} if wrapped else mm)
    load_strict(model, converted, name, assign=True)  # every key consumed, every shape equal
    assert len(converted) == len(mm)  # renamed one to one
    assert set(extras) == set(san_mmseg.DROPPED_EXTRAS)
    assert sum(p.numel() for p in model.parameters()) == manifest["total_params"]
    assert sum(p.numel() for _, p in model.trainable_parameters()) == manifest["trainable_params"]
    with_extras = {**mm, **{k: torch.empty(s, device="meta") for k, s in extras.items()}}
    assert san_mmseg.convert(with_extras).keys() == converted.keys()  # the listed extras are ignored


def _manifest_extras(manifest: dict) -> dict[str, list[int]]:
    """The unused extra keys the manifest lists (mmseg's converted checkpoints carry them)."""
    for key, value in manifest.items():
        if "extra" in key.lower() and isinstance(value, list):
            return {item[0]: item[1] for item in value}
    pytest.fail(f"manifest has no list of extra keys (keys: {sorted(manifest)})", pytrace=False)


# ----------------------------------------------------------------------------------- harness variants
def _variant(tmp_path: Path, edit_config, edit_outputs) -> Path:
    """A copy of ``sanmm_a`` with config.json / outputs.safetensors edited (other files linked)."""
    import json

    from safetensors.torch import load_file, save_file

    src = parity_dir() / "sanmm_a"
    if not (src / "config.json").is_file():
        pytest.skip(f"{src} not found")
    dst = tmp_path / "sanmm_variant"
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in ("config.json", "outputs.safetensors"):
            (dst / f.name).symlink_to(f)
    cfg = read_config(src)
    edit_config(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    outputs = load_file(str(src / "outputs.safetensors"))
    edit_outputs(outputs)
    save_file(outputs, str(dst / "outputs.safetensors"))
    return dst


def test_a_fixture_recording_fewer_layers_is_compared_on_what_it_records(tmp_path: Path) -> None:
    dropped = ("rec.layer0.out", "side.fusion3.tokens", "clip.feat.2", "side.block4.out")

    def edit(cfg: dict) -> None:
        for name in dropped:
            del cfg["tensors"][name]
        cfg.pop("quirks")
        cfg["a note from a newer generator"] = [1, 2]

    folder = _variant(tmp_path, edit, lambda out: [out.pop(n) for n in dropped])
    run = _run(folder)
    errors = compare_recorded(run["ours"], recorded_tensors(folder, run["cfg"]), run["cfg"])
    assert not set(dropped) & set(errors) and "sem_seg" in errors and max(errors.values()) <= TOL


def test_an_unmappable_tensor_or_a_missing_key_fails_with_its_name(tmp_path: Path) -> None:
    def edit(cfg: dict) -> None:
        cfg["tensors"]["side.something_new"] = {"shape": [1], "desc": "x", "file": "outputs.safetensors"}

    folder = _variant(tmp_path, edit, lambda out: out.__setitem__("side.something_new", torch.ones(1)))
    run = _run(folder)
    with pytest.raises(pytest.fail.Exception, match="side.something_new"):
        compare_recorded(run["ours"], recorded_tensors(folder, run["cfg"]), run["cfg"])
    cfg = read_config(folder)
    del pick(pick(cfg, "decode_head", ""), "san_cfg", "")["num_queries"]
    with pytest.raises(pytest.fail.Exception, match=r"x/config.json: missing needed key 'num_queries'"):
        fixture_config(cfg, "x/config.json")


FULL_SIZE = {  # the official mmseg configs' values (configs/san, spec san.md 4.3) in the fixture keys
    "san_mm_vit_b16": dict(img=224, patch=16, width=768, layers=9, heads=12, out=[2, 5, 8], res=0.5,
                           text=(512, 12, 8), e=512, rec=3),
    "san_mm_vit_l14_336": dict(img=336, patch=14, width=1024, layers=18, heads=16, out=[5, 11, 17],
                               res=0.7, text=(768, 12, 12), e=768, rec=6),
}


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_configs_read_from_fixture_keys_are_the_registry_ones(name: str) -> None:
    """The harness reads a B or an L/14@336 fixture into the architecture the .mmseg weights load into."""
    src = parity_dir() / "sanmm_a"
    if not (src / "config.json").is_file():
        pytest.skip(f"{src} not found")
    v, cfg = FULL_SIZE[name], read_config(src)
    enc, txt = pick(cfg, "image_encoder", ""), pick(cfg, "text_encoder", "")
    head = pick(cfg, "decode_head", "")
    san, gen = pick(head, "san_cfg", ""), pick(head, "maskgen_cfg", "")
    enc.update({"embed_dims": v["width"], "num_layers": v["layers"], "num_heads": v["heads"],
                "out_indices": v["out"], "patch_size": v["patch"]})
    enc[next(k for k in enc if k.startswith("img_size"))] = [v["img"], v["img"]]
    txt.update({"embed_dims": v["text"][0], "num_layers": v["text"][1], "num_heads": v["text"][2]})
    txt[next(k for k in txt if k.startswith("output_dims"))] = v["e"]
    cfg["encoder_resolution"] = v["res"]
    san.update({"clip_channels": v["width"], "embed_dims": 240, "num_queries": 100,
                "cfg_encoder": {"num_encode_layer": 8, "num_heads": 6, "mlp_ratio": 4},
                "cfg_decoder": {"num_heads": v["heads"], "num_layers": 1, "embed_channels": 256,
                                "mlp_channels": 256, "num_mlp": 3, "rescale": True}})
    gen.update({"sos_token_num": 100, "num_layers": v["rec"], "embed_dims": v["width"],
                "num_heads": v["heads"], "out_dims": v["e"]})
    ours = fixture_config(cfg, name)
    official = MANIFESTS[name]()
    assert dataclasses.replace(ours, deep_supervision=official.deep_supervision) == official
    with torch.device("meta"):
        model = SAN(ours)
    total = read_manifest(f"manifest_{name}.json")["total_params"]
    assert sum(p.numel() for p in model.parameters()) == total
