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


def test_mmseg_qk_is_split_into_q_and_k_rows() -> None:
    sd = _fixture("catsegmm_a")
    out = catseg_mm.convert({"state_dict": sd})
    qk = sd["neck.layers.1.spatial_agg.block_2.attn.w_msa.qk.weight"]
    base = "aggregator.layers.1.spatial.blocks.1.attn"
    assert torch.equal(torch.cat([out[f"{base}.q.weight"], out[f"{base}.k.weight"]]), qk)
    assert not any("relative_position_index" in k for k in out)


def test_mmseg_tampered_index_buffer_is_refused() -> None:
    sd = dict(_fixture("catsegmm_a"))
    key = "neck.layers.0.spatial_agg.block_1.attn.w_msa.relative_position_index"
    sd[key] = sd[key].flip(0)
    with pytest.raises(CheckpointMismatchError, match="relative_position_index"):
        catseg_mm.convert(sd)


def test_unfold_permutation_matches_the_unfold_layout() -> None:
    c = 3
    x = torch.arange(2 * 4 * 4 * c, dtype=torch.float32).reshape(2, 4, 4, c)  # (B, H, W, C)
    unfold = torch.nn.functional.unfold(x.permute(0, 3, 1, 2), 2, stride=2).transpose(1, 2)  # (B, L, 4C)
    swin = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1).flatten(
        1, 2
    )
    assert torch.equal(catseg_mm.unfold_to_swin_order(unfold, 2), swin)
