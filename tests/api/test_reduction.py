"""The per-block class maxima equal ``amax(dim=(2, 3))`` in every layout."""

from __future__ import annotations

import pytest
import torch

from ovss.api.reduction import class_maxima


@pytest.mark.parametrize("classes", [1, 2, 9])
def test_class_maxima_equal_the_plain_ones_in_every_layout(classes):
    gen = torch.Generator().manual_seed(classes)
    scores = torch.randn(2, classes + 1, 11, 5, generator=gen)
    layouts = {
        "channels-first": scores.contiguous(),
        "channels-last view": scores.permute(2, 0, 3, 1).contiguous().permute(1, 3, 0, 2),
        "class slice": scores[:, 1:],
    }
    for name, block in layouts.items():
        assert torch.equal(class_maxima(block), block.amax(dim=(2, 3))), name
