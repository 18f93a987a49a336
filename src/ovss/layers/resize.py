"""Separable bilinear resizing as per-axis matrices, so full-resolution maps can be made in row bands.

``F.interpolate(mode="bilinear", align_corners=False)`` is separable: along each axis an output
position is a weighted sum of (at most) two input positions. Chains of such resizes and crops (SAN
resizes its mask logits to the padded input, crops the valid region, then resizes to the original
image size) are still separable, with a few input positions per output position. :class:`BandedResize`
holds the composed matrices of both axes and applies them to any band of output rows. Every element is
computed the same way whatever the band, so a map built band by band is bit-identical to the same map
built in one go. The composed weights start from the float32 weights ``F.interpolate`` uses; results
agree with the chained ``F.interpolate`` calls to float32 rounding (relative error ~1e-7).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ovss.utils import is_tracing

COLUMN_GROUP = 64  # output columns per product of BandedResize.columns


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Weights of a 1-D bilinear resize (align_corners=False), exactly as ``F.interpolate`` uses them.

    Returns:
        (out_size, in_size) float64 array; row i holds the weights of output position i (an
        identity matrix when the sizes are equal).
    """
    if in_size == out_size:  # what the kernel gives for equal sizes, without its O(n^2) pass
        return np.eye(in_size, dtype=np.float64)
    with torch.no_grad():  # one-hot columns through the real kernel: its float32 weights, no re-derivation
        eye = torch.eye(in_size, dtype=torch.float32).reshape(1, in_size, in_size, 1)
        cols = F.interpolate(eye, size=(out_size, 1), mode="bilinear", align_corners=False)
    return cols[0, :, :, 0].numpy().T.astype(np.float64)


def bilinear_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., H, W) -> (..., size): ``F.interpolate`` bilinear (align_corners=False); ``x`` itself when
    it has that size already."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def resize_planes(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """:func:`bilinear_resize` of every (h, w) plane on its own: (..., h, w) -> (..., size).

    ``F.interpolate`` picks its CPU kernel by the channel count (three channels on one thread, or more
    than three channels-last, take another kernel than the rest) and the kernels round differently, so
    resizing a chunk of k class maps at once would make a class's values depend on k. As
    (N, 1, h, w) every plane takes the same kernel whatever the chunk (the kernel only depends on the
    output size then); the values are those of a whole channels-first map with more than three
    channels. Export (tracing): one plain call.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if is_tracing():
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    planes = x.reshape(-1, 1, *x.shape[-2:])
    return F.interpolate(planes, size=size, mode="bilinear", align_corners=False).view(*x.shape[:-2], *size)


def sigmoid_planes(x: torch.Tensor) -> torch.Tensor:
    """Sigmoid of every (h, w) plane of ``x`` on its own, into a new contiguous float32 tensor.

    Vectorised kernels round the tail of a run differently from its body, so one sigmoid over a chunk
    of k class maps would make a class's values depend on where the chunk ends; each plane (always the
    same size, contiguous) gets the same run whatever the chunk. Export (tracing): one plain call.
    """
    x = x.float()
    if is_tracing():
        return x.sigmoid()
    x = x.contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    h, w = x.shape[-2:]
    for src, dst in zip(x.view(-1, h, w), out.view(-1, h, w)):
        torch.sigmoid(src, out=dst)
    return out


def paste_sum(
    parts: Iterable[torch.Tensor], boxes: Sequence[tuple[int, int, int, int]], canvas: tuple[int, int]
) -> torch.Tensor:
    """The sum of (..., y2 - y1, x2 - x1) maps placed at their boxes ``(y1, x1, y2, x2)`` on a zero
    (..., H, W) canvas (``canvas``), added in box order; ``parts`` is consumed one map at a time (a
    generator keeps one crop in memory).

    Eagerly the crops are added into a zero canvas in place. Under tracing (export) each is padded to
    the canvas and summed out of place: a canvas made with ``new_zeros`` from a class count, and the
    in-place updates of its views, would freeze that count into the graph. Both forms add the same
    values in the same order, so they agree bit for bit.
    """
    tracing = is_tracing()
    total: torch.Tensor | None = None
    for part, (y1, x1, y2, x2) in zip(parts, boxes):
        if tracing:
            placed = F.pad(part, (x1, canvas[1] - x2, y1, canvas[0] - y2))
            total = placed if total is None else total + placed
        else:
            total = part.new_zeros(*part.shape[:-2], *canvas) if total is None else total
            total[..., y1:y2, x1:x2] += part
    assert total is not None  # at least one box
    return total


class BandedResize:
    """A separable linear resize of (B, C, h, w) maps to (B, C, H, W), computed in bands of output rows.

    The column axis is resized once (a matrix product over w); the output rows are then made in fixed
    groups of ``group`` rows (rows ``[0, group)``, ``[group, 2 group)``, ...), each one product of its
    weights with the few input rows they touch. Bands are unions of whole groups, so a row's value
    never depends on the band it is asked for in (a matrix product's rounding can depend on its
    shape). Bands are channels-last, (r, B, W, C): reductions over the channels (classes) are then
    over the innermost axis, which is the fast case on CPUs.

    Args:
        rows: (H, h) matrix of the row axis (e.g. ``bilinear_matrix(h, H)`` or a product of them).
        cols: (W, w) matrix of the column axis.
        group: rows per product; band boundaries must be multiples of it.
    """

    def __init__(self, rows: np.ndarray, cols: np.ndarray, group: int = 8) -> None:
        rows, cols = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
        self.size = (int(rows.shape[0]), int(cols.shape[0]))
        self.group = int(group)
        self.rows = torch.from_numpy(rows.astype(np.float32))  # (H, h)
        self.cols = torch.from_numpy(cols.astype(np.float32))  # (W, w)
        nonzero = rows != 0
        has = nonzero.any(axis=1)
        # first / last input row with a non-zero weight (row 0 with weight 0 for an all-zero row)
        self._first = np.where(has, nonzero.argmax(axis=1), 0)
        self._last = np.where(has, rows.shape[1] - 1 - nonzero[:, ::-1].argmax(axis=1), 0)
        # the input columns each fixed group of COLUMN_GROUP output columns touches
        nonzero = cols != 0
        has = nonzero.any(axis=1)
        first = np.where(has, nonzero.argmax(axis=1), 0)
        last = np.where(has, cols.shape[1] - 1 - nonzero[:, ::-1].argmax(axis=1), 0)
        self._col_groups = [
            (j, min(j + COLUMN_GROUP, len(cols)), int(first[j : j + COLUMN_GROUP].min()),
             int(last[j : j + COLUMN_GROUP].max()) + 1)
            for j in range(0, len(cols), COLUMN_GROUP)
        ]

    def band_rows(self, max_rows: int) -> int:
        """The largest band height (a multiple of ``group``, at least one group) within ``max_rows``."""
        return max(self.group, int(max_rows) // self.group * self.group)

    def columns(self, x: torch.Tensor) -> torch.Tensor:
        """Resize the column axis: (B, C, h, w) -> (h, B, W, C) float32.

        Fixed groups of output columns, each a product with only the input columns it touches (the
        weight matrix is banded: the skipped terms are exact zeros), instead of one dense product.
        """
        x = x.float().permute(2, 0, 3, 1)  # (h, B, w, C)
        weights = self.cols.to(x.device)
        if is_tracing():  # export: one dense product (a fixed-size graph)
            return torch.matmul(weights, x)
        out = x.new_empty(x.shape[0], x.shape[1], self.size[1], x.shape[3])
        for j0, j1, lo, hi in self._col_groups:
            torch.matmul(weights[j0:j1, lo:hi], x[:, :, lo:hi], out=out[:, :, j0:j1])
        return out

    def band(
        self,
        cols: torch.Tensor,
        start: int,
        stop: int,
        rowwise: Callable[[torch.Tensor], object] | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Output rows ``[start, stop)`` from :meth:`columns`' result: (h, B, W, C) -> (r, B, W, C).

        Args:
            cols: :meth:`columns` output.
            start, stop: the band of output rows; multiples of ``group`` (``stop`` may be H).
            rowwise: optional in-place elementwise op (e.g. ``torch.Tensor.sigmoid_``) applied to each
                group of rows on its own: vectorised kernels round their tail elements differently, so
                applying it to a whole band would make the result depend on the band size.
            out: optional contiguous float32 buffer of at least ``(stop - start) * B * W * C``
                elements to write the band into (a reused buffer saves an allocation per band).
        """
        if start % self.group or (stop % self.group and stop != self.size[0]):
            raise ValueError(
                f"band [{start}, {stop}) must start and end on multiples of group={self.group} (or at "
                f"the last row {self.size[0]}); use band_rows() to size bands"
            )
        flat = cols.reshape(cols.shape[0], -1)
        weights = self.rows.to(cols.device)
        if is_tracing():  # export: one dense product (a fixed-size graph), no loop
            out = weights[start:stop] @ flat
            if rowwise is not None:
                rowwise(out)
            return out.reshape(stop - start, *cols.shape[1:])
        if out is None:
            out = flat.new_empty(stop - start, flat.shape[1])
        else:
            out = out.view(-1)[: (stop - start) * flat.shape[1]].view(stop - start, flat.shape[1])
        for g0 in range(start, stop, self.group):
            g1 = min(g0 + self.group, stop)
            lo, hi = int(self._first[g0:g1].min()), int(self._last[g0:g1].max()) + 1
            part = out[g0 - start : g1 - start]
            torch.mm(weights[g0:g1, lo:hi], flat[lo:hi], out=part)
            if rowwise is not None:
                rowwise(part)
        return out.reshape(stop - start, *cols.shape[1:])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The whole resized map: (B, C, h, w) -> (B, C, H, W) float32 (a channels-last view)."""
        return self.band(self.columns(x), 0, self.size[0]).permute(1, 3, 0, 2)


def bands_to_blocks(band: torch.Tensor) -> torch.Tensor:
    """(r, B, W, C) band -> (B, C, r, W) view (the block layout of ``predict_blocks``)."""
    return band.permute(1, 3, 0, 2)


def assemble_blocks(
    blocks: Iterable[tuple[int, int, torch.Tensor]],
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
    device: torch.device | str,
) -> torch.Tensor:
    """Write ``(class_start, row_start, (B, k, r, W))`` blocks into one (B, K, H, W) map of ``dtype``.

    Peak memory is the map plus one block (the blocks are consumed as they come).
    """
    if is_tracing():  # export: a concatenation traces to a fixed graph, slice assignment does not
        parts = list(blocks)
        dim = 1 if any(k0 for k0, _, _ in parts) else 2
        return torch.cat([block.to(dtype) for _, _, block in parts], dim=dim)
    out = torch.empty(shape, dtype=dtype, device=device)
    for k0, r0, block in blocks:
        out[:, k0 : k0 + block.shape[1], r0 : r0 + block.shape[2]] = block
    return out
