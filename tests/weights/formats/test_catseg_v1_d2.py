"""catseg_v1_d2 / catseg_mm: CAT-Seg v1 checkpoints (official detectron2 and mmseg port) -> ovss CATSegV1."""

from __future__ import annotations

import pytest
import torch

from ovss.errors import CheckpointMismatchError
from ovss.models.catseg_v1 import (
    CATSegV1,
    catseg_v1_r101_vit_b16,
    catseg_v1_r101_vit_b16_mmseg,
    catseg_v1_swinb_vit_l14,
    catseg_v1_swinb_vit_l14_mmseg,
)
from ovss.weights.build import mismatches
from ovss.weights.formats import catseg_d2, catseg_mm, catseg_v1_d2
from tests.conftest import needs, parity_dir
from tests.parity._common import meta_state_dict, official_state_dict, read_manifest

MANIFESTS = {
    "manifest_catseg_v1_vit_b16_r101.json": (catseg_v1_r101_vit_b16, catseg_v1_d2),
    "manifest_catseg_v1_vit_l14_swinb.json": (catseg_v1_swinb_vit_l14, catseg_v1_d2),
    "manifest_catseg_mm_vit_b16_r101.json": (catseg_v1_r101_vit_b16_mmseg, catseg_mm),
    "manifest_catseg_mm_vit_l14_swinb.json": (catseg_v1_swinb_vit_l14_mmseg, catseg_mm),
}
_DROPPED = (
    "attn_mask",
    "spatial_agg.block_1.attn.w_msa.relative_position_index",
    "spatial_agg.block_2.attn.w_msa.relative_position_index",
)


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_full_size_manifest_converts_with_the_recorded_counts(name: str) -> None:
    manifest = read_manifest(name)
    build, fmt = MANIFESTS[name]
    sd = meta_state_dict(manifest)
    assert fmt.detect(sd) and not catseg_d2.detect(sd)
    assert (fmt is catseg_mm) != catseg_v1_d2.detect(sd)
    out = fmt.convert(sd)
    # Every key is consumed; only derivable / unused buffers are dropped (the qk Linear splits in two).
    dropped = [k for k in sd if k.endswith(_DROPPED)]
    fused = [k for k in sd if ".attn.w_msa.qk." in k]
    assert len(out) == len(sd) - len(dropped) + len(fused)
    with torch.device("meta"):
        model = CATSegV1(build())
    assert mismatches(model, out) == ([], [], [])
    assert sum(p.numel() for p in model.parameters()) == manifest["total_params"]
    assert sum(p.numel() for _, p in model.trainable_parameters()) == manifest["trainable_params"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == manifest["trainable_params"]


def _fixture(name: str) -> dict[str, torch.Tensor]:
    folder = parity_dir() / name
    needs(folder / "state_dict.safetensors")
    return official_state_dict(folder)


def test_cvpr_converter_refuses_v1_and_v1_converter_refuses_cvpr() -> None:
    v1 = _fixture("catsegv1_a")
    with pytest.raises(CheckpointMismatchError, match="v1"):
        catseg_d2.convert(v1)
    assert catseg_v1_d2.detect({"model": v1}) and not catseg_mm.detect(v1)
    cvpr = _fixture("catseg_a")
    assert not catseg_v1_d2.detect(cvpr)
    with pytest.raises(CheckpointMismatchError, match="key"):
        catseg_v1_d2.convert(cvpr)
