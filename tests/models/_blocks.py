"""Shared check of the optional ``predict_blocks`` contract (see docs/architecture.md)."""

from __future__ import annotations

import torch


def assemble(blocks, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """Put ``(class_start, row_start, (B, k, r, W0))`` blocks together; every element exactly once."""
    out = torch.full(shape, float("nan"))
    hits = torch.zeros(shape[1:3], dtype=torch.int64)
    for k0, r0, block in blocks:
        assert block.dtype == torch.float32 and block.shape[0] == shape[0] and block.shape[3] == shape[3]
        k1, r1 = k0 + block.shape[1], r0 + block.shape[2]
        out[:, k0:k1, r0:r1] = block
        hits[k0:k1, r0:r1] += 1
    assert (hits == 1).all(), "blocks must cover the map exactly once"
    return out


def check_blocks(model, images, text, image_size, output_size, budgets=(1, 300, 10**9), **options):
    """Blocks under several budgets reassemble bit-identically to ``predict``; returns the map."""
    with torch.no_grad():
        full = model.predict(images, text, image_size, output_size, **options)
        shape = (images.shape[0], full.shape[1], *output_size)
        assert full.shape == shape
        for budget in budgets:
            blocks = list(model.predict_blocks(images, text, image_size, output_size, budget, **options))
            if budget == 1:
                assert len(blocks) > 1  # the smallest budget really splits the map
            assert torch.equal(assemble(blocks, shape), full.float())
    return full
