"""Window partition/merge and the shifted-window mask."""

from __future__ import annotations

import torch

from ovss.layers.window import shift_window_mask, window_merge, window_partition


def test_partition_takes_row_major_windows_and_merge_inverts_it() -> None:
    x = torch.arange(2 * 4 * 6 * 3, dtype=torch.float32).reshape(2, 4, 6, 3)
    windows = window_partition(x, 2)
    assert windows.shape == (2, 6, 4, 3)
    # window 4 = second row of windows, second column: rows 2..3, columns 2..3
    assert torch.equal(windows[1, 4], x[1, 2:4, 2:4].reshape(4, 3))
    assert torch.equal(window_merge(windows, 2, 4, 6), x)


def test_shift_mask_blocks_exactly_the_pairs_split_by_the_cyclic_shift() -> None:
    h = w = 24
    window, shift = 12, 6
    mask = shift_window_mask(h, w, window, shift, torch.float32)
    assert mask.shape == (4, 144, 144)
    # Independent characterisation: after rolling by -shift, a token wrapped around an edge iff
    # its rolled coordinate is >= size - shift; two tokens of a window may attend iff they wrapped alike.
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    wrap = torch.stack([rows >= h - shift, cols >= w - shift], dim=-1)  # (H, W, 2)
    for idx in range(4):
        wy, wx = divmod(idx, 2)
        tile = wrap[wy * window : (wy + 1) * window, wx * window : (wx + 1) * window].reshape(-1, 2)
        same = (tile[:, None] == tile[None]).all(-1)
        assert torch.equal(mask[idx] == 0, same)
    assert set(mask.unique().tolist()) == {-100.0, 0.0}
    assert shift_window_mask(h, w, window, shift, torch.bfloat16).dtype == torch.bfloat16
