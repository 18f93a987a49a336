"""The per-block reductions equal ``max(dim=1)`` / ``amax(dim=(2, 3))`` in every layout, ties included."""

from __future__ import annotations

import pytest
import torch

from ovss.api.reduction import LOOP_CLASSES, class_maxima, pixel_maxima


def _layouts(scores: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "channels-first": scores.contiguous(),
        "channels-last view": scores.permute(2, 0, 3, 1).contiguous().permute(1, 3, 0, 2),
        "class slice": scores[:, 1:],
    }


@pytest.mark.parametrize("classes", [1, 2, 9, LOOP_CLASSES, LOOP_CLASSES + 1])
def test_block_reductions_equal_the_plain_ones_in_every_layout(classes):
    gen = torch.Generator().manual_seed(classes)
    scores = torch.randint(0, 4, (2, classes + 1, 11, 5), generator=gen).float() / 4  # many ties
    scores[0, :, 0, 0] = 0.5  # all classes equal: the first wins
    for name, block in _layouts(scores).items():
        value, label = block.max(dim=1)
        got_value, got_label = pixel_maxima(block)
        assert torch.equal(got_value, value) and torch.equal(got_label, label), name
        assert got_label.dtype == torch.int64
        assert torch.equal(class_maxima(block), block.amax(dim=(2, 3))), name
    assert pixel_maxima(scores)[1][0, 0, 0] == 0
