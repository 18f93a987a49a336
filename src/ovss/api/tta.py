"""Test-time augmentation (multi-scale + horizontal flip): the mean of the models' official score maps.

Each augmentation resizes the image by a ratio of the model's test size (and/or mirrors it), runs the
model's own ``predict`` with the ORIGINAL image size as output size, and mirrors the map back; the
result is the mean of these (K, H0, W0) maps, as detectron2's ``SemanticSegmentorWithTTA`` and
mmsegmentation's ``aug_test`` average their score maps (mmseg's default ratios 0.5 ... 1.75 + flip).
The maps are averaged block by block (:func:`mean_blocks`): one band of output rows of every
augmentation at a time, never (n_aug, K, H0, W0) or even one whole (K, H0, W0) map. What is held
at once is each augmentation's low-resolution state before its final resize (e.g. CAT-Seg's
(96, W0, K) column-resized map, SAN's column-resized mask logits), a fraction of a full map.

Cost: n_aug = len(scales) x (2 if flip) forward passes (12 with the defaults) and the networks of
scales > 1 see more pixels (SAN's cost grows faster than its pixels: the defaults cost ~20x one
pass, 22x measured for ViT-B/16 at 640x853 on CPU; CAT-Seg and SED ~12x).
CAT-Seg and SED squash every input to a fixed CLIP resolution, so for them the scales change only
the resampling; the flip is what adds information there.
"""

from __future__ import annotations

import argparse
import dataclasses
import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from ovss.config import Config
from ovss.errors import ConfigError, ImageTooLargeError

if TYPE_CHECKING:  # torch is imported where the maps are averaged: the CLI parsers stay light
    import torch

MMSEG_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # mmsegmentation's default ``img_ratios``


MAX_SCALE = 4.0  # the largest ratio: 4x the test size is 16x its pixels in one pass
MAX_SCALES = 16  # at most this many ratios (32 passes with the flip)
MAX_PASS_PIXELS = 4096 * 4096  # pixels of one pass's input (scaled test size), whatever the ratio


def check_scales(scales: object, what: str) -> tuple[float, ...]:
    """``scales`` as floats, or ConfigError (named ``what``) unless there are 1..MAX_SCALES ratios, each
    a finite number in (0, MAX_SCALE]."""
    if isinstance(scales, (str, bytes, dict)) or not isinstance(scales, Iterable):
        raise ConfigError(f"{what} must be a list of ratios like (0.5, 1.0, 1.5), got {scales!r}")
    items = tuple(scales)
    if any(isinstance(s, bool) or not isinstance(s, numbers.Real) for s in items):
        shown = repr(list(items)) if len(items) <= 8 else f"{len(items)} items"
        raise ConfigError(f"{what} must be numbers like 0.5, 1.0, 1.5, got {shown}")
    values = tuple(float(s) for s in items)
    if not 1 <= len(values) <= MAX_SCALES:
        raise ConfigError(
            f"{what}: give 1 to {MAX_SCALES} ratios (each is one or two forward passes), got {len(values)}"
        )
    bad = [s for s in values if not 0 < s <= MAX_SCALE]  # NaN fails the comparison too
    if bad:
        raise ConfigError(
            f"{what} must be ratios of the test size in (0, {MAX_SCALE:g}], got {bad[0]:g}; e.g. 0.5,1,1.5"
        )
    return values


@dataclasses.dataclass(kw_only=True)
class TTAConfig(Config):
    """Multi-scale + flip test-time augmentation.

    Args:
        scales: ratios of the model's test size (1.0 = the normal input; mmseg's ratios by default).
        flip: also run every scale on the horizontally mirrored image.
    """

    scales: tuple[float, ...] = MMSEG_RATIOS
    flip: bool = True

    def __post_init__(self) -> None:
        self.scales = check_scales(self.scales, "TTA scales")

    @property
    def augmentations(self) -> list[tuple[float, bool]]:
        """``(scale, flipped)`` pairs in the order they are run and summed."""
        return [(s, f) for s in self.scales for f in ((False, True) if self.flip else (False,))]


def parse_tta(tta: bool | TTAConfig | Sequence[float] | dict | None) -> TTAConfig | None:
    """``True`` -> the defaults; a sequence of ratios -> those scales with flip; a dict -> its fields
    (``{"scales": [...], "flip": false}``, the JSON form); None/False -> no TTA."""
    if tta is None or tta is False:
        return None
    if tta is True:
        return TTAConfig()
    if isinstance(tta, TTAConfig):
        return tta
    if isinstance(tta, dict):
        return TTAConfig.from_dict(tta)
    if isinstance(tta, Sequence) and not isinstance(tta, str):
        return TTAConfig(scales=tuple(tta))
    raise ConfigError(f"tta must be True, a TTAConfig or a list of scales, got {tta!r}")


def parse_scales(text: str) -> tuple[float, ...]:
    """``"0.5,1,1.5"`` (the CLI's ``--tta-scales``) -> (0.5, 1.0, 1.5)."""
    try:
        scales = tuple(float(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        raise ConfigError(f"--tta-scales takes comma-separated ratios like 0.5,1,1.5, got {text!r}") from None
    return TTAConfig(scales=check_scales(scales, "--tta-scales")).scales


def add_tta_arguments(p: argparse.ArgumentParser) -> None:
    """``--tta``, ``--tta-scales``, ``--no-tta-flip`` (``ovss segment`` and ``ovss eval``)."""
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: the mean of the score maps at mmseg's ratios 0.5,0.75,1,1.25,1.5,1.75 "
        "of the test size, each also mirrored (12 passes: ~12x the time, ~20x for SAN; default: off)",
    )
    p.add_argument(
        "--tta-scales",
        default=None,
        metavar="R,R,...",
        help="TTA ratios of the test size, e.g. 0.75,1,1.25 (implies --tta; default: mmseg's six)",
    )
    p.add_argument(
        "--no-tta-flip", action="store_true", help="TTA without the mirrored passes (implies --tta)"
    )


def tta_option(args: argparse.Namespace) -> bool | dict | None:
    """The ``tta=`` value for ``predict`` from the CLI flags, in a JSON-friendly form (recorded in the
    outputs): None (off), True (the defaults) or ``{"scales": [...], "flip": bool}``."""
    scales, no_flip = getattr(args, "tta_scales", None), getattr(args, "no_tta_flip", False)
    if scales is None and not no_flip:
        return True if getattr(args, "tta", False) else None
    cfg = TTAConfig(scales=parse_scales(scales) if scales is not None else MMSEG_RATIOS, flip=not no_flip)
    return cfg.to_dict()


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(h, w) times ``scale``, rounded, at least 1 pixel a side."""
    return max(1, int(size[0] * scale + 0.5)), max(1, int(size[1] * scale + 0.5))


def check_pass_sizes(size: tuple[int, int], tta: TTAConfig) -> None:
    """Raise ImageTooLargeError when a scale makes one pass's input (``size`` = the test size (h, w))
    larger than MAX_PASS_PIXELS, before any pass runs."""
    for scale in tta.scales:
        h, w = scaled_size(size, scale)
        if h * w > MAX_PASS_PIXELS:
            raise ImageTooLargeError(
                f"TTA scale {scale:g} makes this image's {size[1]}x{size[0]} test size {w}x{h} pixels "
                f"({h * w / 1e6:.1f}M) for one pass; at most {MAX_PASS_PIXELS / 1e6:.1f}M pixels per pass: "
                "use smaller --tta-scales"
            )


def _class_softmax(block: torch.Tensor) -> torch.Tensor:
    """Softmax over the classes of a (B, K, r, W) band, one output row at a time: float32 (B, K, r, W).

    The softmax kernel vectorises over the positions after the class axis, so one call on a whole band
    would round a row's values by where the band ends; each row, made contiguous (B, K, W), gets the
    same run whatever the band (the TTA mean never depends on the block size).
    """
    import torch

    out = torch.empty(block.shape, dtype=torch.float32, device=block.device)
    for i in range(block.shape[2]):
        out[:, :, i] = block[:, :, i].float().contiguous().softmax(dim=1)
    return out


def mean_blocks(
    streams: Sequence[tuple[bool, Iterator[tuple[int, int, torch.Tensor]]]],
    softmax: bool = False,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The mean of several block streams of maps of one (B, K, H0, W0) shape, block by block.

    Args:
        streams: ``(flipped, blocks)`` per augmentation: ``blocks`` as ``predict_blocks`` yields them
            (every stream must tile the map the same way: the same output size and block budget give
            the same tiling); the blocks of a flipped stream are mirrored back along W.
        softmax: average ``softmax`` over the classes of each map instead of the maps (mmseg's
            ``SegTTAModel.merge_preds``); the blocks must then hold every class (SAN's bands do).

    Yields:
        ``(class_start, row_start, mean)`` float32 blocks (one stream: its blocks unchanged, or their
        softmax).
    """
    import torch

    def prepared(flipped: bool, k0: int, block: torch.Tensor) -> torch.Tensor:
        block = block.flip(-1) if flipped else block
        if not softmax:
            return block
        if k0:
            raise RuntimeError("softmax TTA needs blocks that hold every class (bands of rows)")
        return _class_softmax(block)

    if len(streams) == 1:
        flipped, blocks = streams[0]
        for k0, r0, block in blocks:
            yield k0, r0, prepared(flipped, k0, block)
        return
    for parts in zip(*(blocks for _, blocks in streams), strict=True):
        (k0, r0, first), shape = parts[0], parts[0][2].shape
        total = torch.zeros(shape, dtype=torch.float32, device=first.device)
        for (flipped, _), (k, r, block) in zip(streams, parts):
            if (k, r, block.shape) != (k0, r0, shape):
                got, want = (k, r, tuple(block.shape)), (k0, r0, tuple(shape))
                raise RuntimeError(f"TTA streams tile the map differently: {got} vs {want}")
            total += prepared(flipped, k, block)
        yield k0, r0, total.div_(len(streams))


def report_passes(
    streams: list[tuple[bool, Iterator[tuple[int, int, torch.Tensor]]]],
    progress: Callable[[float, float, str], None],
) -> list[tuple[bool, Iterator[tuple[int, int, torch.Tensor]]]]:
    """The TTA streams, calling ``progress(passes, n, "pass")`` when each has run its forward pass (its
    first block comes out: :func:`mean_blocks` takes the streams' first blocks in order)."""
    n, done = len(streams), [0]

    def watched(blocks: Iterator[tuple[int, int, torch.Tensor]]) -> Iterator[tuple[int, int, torch.Tensor]]:
        first = True
        for item in blocks:
            if first:
                first, done[0] = False, done[0] + 1
                progress(done[0], n, "pass")
            yield item

    progress(0, n, "pass")
    return [(flip, watched(blocks)) for flip, blocks in streams]
