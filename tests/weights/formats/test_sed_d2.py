"""Official SED checkpoint converter (``ovss.weights.formats.sed_d2``) against the full-size layouts."""

from __future__ import annotations

import pytest
import torch

from ovss.errors import CheckpointMismatchError
from ovss.models.sed import SED, sed_convnext_b, sed_convnext_l
from ovss.weights.build import load_strict
from ovss.weights.formats import sed_d2
from tests.parity._common import meta_state_dict, read_manifest

MANIFESTS = {
    "b": ("manifest_sed_convnext_b.json", sed_convnext_b),
    "l": ("manifest_sed_convnext_l.json", sed_convnext_l),
}


@pytest.fixture(scope="module", params=sorted(MANIFESTS))
def case(request) -> tuple[dict, dict[str, torch.Tensor], SED]:
    manifest = read_manifest(MANIFESTS[request.param][0])
    with torch.device("meta"):
        model = SED(MANIFESTS[request.param][1]())
    return manifest, meta_state_dict(manifest), model


def test_converter_consumes_every_manifest_key(case) -> None:
    """Every official key maps to exactly one ovss key and the strict load accepts all shapes."""
    manifest, official, model = case
    converted = sed_d2.convert({"model": official, "iteration": torch.tensor(0)})
    assert len(converted) == len(official) == manifest["num_keys"]
    load_strict(model, converted, "manifest", assign=True)
    total = sum(t.numel() for t in converted.values())
    assert total == manifest["total_params"] == sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for _, p in model.trainable_parameters())
    assert trainable == manifest["trainable_params"]


def test_detect(case) -> None:
    _, official, model = case
    assert sed_d2.detect(official)
    assert sed_d2.detect({"model": official, "optimizer": {}})
    assert not sed_d2.detect(model.state_dict())  # ovss layout
    catseg_like = {k.replace("decoder1.cnext", "decoder1.conv"): v for k, v in official.items()}
    assert not sed_d2.detect(catseg_like)


def test_bare_and_wrapped_give_the_same_result(case) -> None:
    _, official, _ = case
    assert sed_d2.convert(official).keys() == sed_d2.convert({"model": official}).keys()


def test_known_mappings(case) -> None:
    _, official, _ = case
    converted = sed_d2.convert(official)
    p = "sem_seg_head.predictor."
    assert (
        converted["decoder.stages.0.fuse.norm2.weight"]
        is official[p + "transformer.decoder1.conv.double_conv.4.weight"]
    )
    assert (
        converted["decoder.stages.2.class_attn.fc1.bias"]
        is official[p + "transformer.decoder3.attention.MLP.0.bias"]
    )
    assert converted["decoder.cer_heads.0.weight"] is official[p + "transformer.head0.weight"]
    assert (
        converted["clip.text.transformer.resblocks.0.attn.in_proj_weight"]
        is official[p + "clip_model.transformer.resblocks.0.attn.in_proj_weight"]
    )
    assert converted["clip.logit_scale"] is official[p + "clip_model.logit_scale"]


def test_unknown_keys_are_all_reported(case) -> None:
    _, official, _ = case
    extra = dict(official)
    extra["backbone.res2.conv1.weight"] = torch.empty(1)
    extra["sem_seg_head.predictor.transformer.layers.0.swin_block.attn.q.weight"] = torch.empty(1)
    with pytest.raises(CheckpointMismatchError, match=r"2 key\(s\).*backbone\.res2.*layers\.0\.swin_block"):
        sed_d2.convert(extra)


def test_strict_load_rejects_missing_and_misshapen_keys(case) -> None:
    _, official, model = case
    converted = sed_d2.convert(official)
    converted.pop("decoder.head.bias")
    converted["decoder.cost_embed.weight"] = torch.empty(1, 2, 3, device="meta")
    with pytest.raises(CheckpointMismatchError, match=r"decoder\.head\.bias.*decoder\.cost_embed\.weight"):
        load_strict(model, converted, "broken", assign=True)
