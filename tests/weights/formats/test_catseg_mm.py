"""catseg_mm: the mmseg port of CAT-Seg v1 -> ovss CATSegV1 (qk split, index buffers, unfold order)."""

from __future__ import annotations

import pytest
import torch

from ovss.errors import CheckpointMismatchError
from ovss.weights.formats import catseg_mm
from tests.weights.formats.test_catseg_v1_d2 import _fixture


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
    sd[key] = [0, 1, 2]  # not a tensor at all: the same one-line refusal, not an AttributeError
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
