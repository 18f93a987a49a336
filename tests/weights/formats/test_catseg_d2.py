"""catseg_d2: official CAT-Seg CVPR checkpoints -> ovss CATSeg (full-size manifests, fixture, errors)."""

from __future__ import annotations

import pytest
import torch

from ovss.errors import CheckpointMismatchError
from ovss.layers.window import shift_window_mask
from ovss.models.catseg import CATSeg, catseg_tiny, catseg_vit_b16, catseg_vit_l14
from ovss.weights.build import mismatches
from ovss.weights.formats import catseg_d2
from tests.conftest import needs, parity_dir
from tests.parity._common import meta_state_dict, official_state_dict, read_manifest

MANIFESTS = {"vit_b16": catseg_vit_b16, "vit_l14_336": catseg_vit_l14}
MASK_KEY = "sem_seg_head.predictor.transformer.layers.0.swin_block.block_2.attn_mask"


def _fixture_state_dict() -> dict[str, torch.Tensor]:
    folder = parity_dir() / "catseg_a"
    needs(folder / "state_dict.safetensors")
    return official_state_dict(folder)


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_full_size_manifest_converts_to_the_model_layout(name: str) -> None:
    manifest = read_manifest(f"manifest_catseg_{name}.json")
    sd = meta_state_dict(manifest)
    assert catseg_d2.detect(sd) and catseg_d2.detect({"model": sd})
    out = catseg_d2.convert(sd)
    # Every official key is consumed; only the derivable shift-mask buffers are dropped.
    assert len(out) == manifest["num_keys"] - len(manifest["buffers_in_state_dict"])
    with torch.device("meta"):
        model = CATSeg(MANIFESTS[name]())
    assert mismatches(model, out) == ([], [], [])
    assert sum(p.numel() for p in model.parameters()) == manifest["total_params"]
    assert sum(p.numel() for _, p in model.trainable_parameters()) == manifest["trainable_params"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == manifest["trainable_params"]


def test_stored_shift_mask_is_the_derived_one_and_is_dropped() -> None:
    sd = _fixture_state_dict()
    assert torch.equal(sd[MASK_KEY], shift_window_mask(24, 24, 12, 6, torch.float32))
    out = catseg_d2.convert(sd)
    assert len(out) == len(sd) - 2 and not any("attn_mask" in k for k in out)
    assert all(k.startswith(("clip.", "guidance_up.", "aggregator.")) for k in out)
    model = CATSeg(catseg_tiny())
    assert mismatches(model, out) == ([], [], [])
    assert not any("mask" in k for k in model.state_dict())  # the mask is rebuilt in the forward


def test_wrapped_checkpoint_converts_like_the_bare_state_dict() -> None:
    sd = _fixture_state_dict()
    bare, wrapped = catseg_d2.convert(sd), catseg_d2.convert({"model": sd, "iteration": 79999})
    assert bare.keys() == wrapped.keys() and all(bare[k] is wrapped[k] for k in bare)
    key = "sem_seg_head.predictor.transformer.layers.1.attention.padding_tokens"
    assert bare["aggregator.layers.1.classes.pad_token"] is sd[key]


def test_tampered_shift_mask_is_refused() -> None:
    sd = dict(_fixture_state_dict())
    mask = sd[MASK_KEY].clone()
    mask[0, 0, 1] = -100.0
    sd[MASK_KEY] = mask
    with pytest.raises(CheckpointMismatchError, match="shift mask"):
        catseg_d2.convert(sd)


def test_unknown_keys_are_all_listed() -> None:
    sd = dict(_fixture_state_dict())
    sd["sem_seg_head.predictor.transformer.extra.weight"] = torch.zeros(1)
    sd["backbone_extra"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as err:
        catseg_d2.convert(sd)
    assert "2 key(s)" in str(err.value) and "transformer.extra.weight" in str(err.value)
    assert "backbone_extra" in str(err.value)


def test_v1_checkpoint_is_refused_with_a_pointer_to_the_cvpr_weights() -> None:
    clip = "sem_seg_head.predictor.clip_model."
    sd = {
        "backbone.res2.0.conv1.weight": torch.zeros(1),
        clip + "visual.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(1),
    }
    assert not catseg_d2.detect(sd)
    with pytest.raises(CheckpointMismatchError, match="v1"):
        catseg_d2.convert(sd)


def test_detect_rejects_other_layouts() -> None:
    sd = _fixture_state_dict()
    assert catseg_d2.detect(sd)
    assert not catseg_d2.detect(catseg_d2.convert(sd))  # already converted
    sed_like = {"sem_seg_head.predictor.transformer.decoder1.cnext.dwconv.weight": torch.zeros(1),
                "sem_seg_head.predictor.clip_model.visual.trunk.stem.0.weight": torch.zeros(1)}
    assert not catseg_d2.detect(sed_like)
