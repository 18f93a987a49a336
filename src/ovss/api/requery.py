"""Re-query: one image, many vocabularies. The image-only features of a forward pass, kept and reused.

Most of a forward pass never sees the text (SAN: CLIP and the side adapter; CAT-Seg: the CLIP image
encoder; SED: the ConvNeXt encoder). Every model splits its ``predict_blocks`` into
``image_stage`` and ``text_stage`` (``ovss.models.base``); the predictor keeps the image stage's
output in an :class:`ImageHandle`:

* explicitly: ``handle = seg.encode_image(image)``, then ``seg.predict(handle, classes)`` for every
  vocabulary, with the numbers of a fresh ``predict`` (bit for bit: the same operations run);
* implicitly: ``seg.predict(image, classes)`` on an image it has just seen (same decoded pixels, model,
  dtype, options and TTA) reuses the features from an LRU cache bounded in bytes
  (``$OVSS_IMAGE_CACHE_MB``, default 256 MiB; 0 turns it off).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ovss.api.tta import TTAConfig
from ovss.errors import CacheError, OvssError
from ovss.models.base import Features, features_nbytes

IMAGE_CACHE_ENV = "OVSS_IMAGE_CACHE_MB"
DEFAULT_IMAGE_CACHE_MB = 256.0
MAX_IMAGE_CACHE_MB = 65536.0  # as the text cache's bound


def default_image_cache_mb() -> float:
    """``$OVSS_IMAGE_CACHE_MB`` (MiB of image features kept per segmenter; 0: none) or 256."""
    raw = os.environ.get(IMAGE_CACHE_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_IMAGE_CACHE_MB
    except ValueError:
        raise CacheError(f"{IMAGE_CACHE_ENV}={raw!r} is not a number; set the MiB to keep, e.g. 256") \
            from None
    return check_cache_mb(value, f"{IMAGE_CACHE_ENV}={raw!r}")


def check_cache_mb(value: float, what: str) -> float:
    """``value`` when it is a finite number of MiB in [0, MAX_IMAGE_CACHE_MB], else one-line CacheError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_IMAGE_CACHE_MB:
        raise CacheError(
            f"{what} is out of range; set the MiB of image features to keep, from 0 (no cache) to "
            f"{MAX_IMAGE_CACHE_MB:g}, e.g. 256"
        )  # NaN fails the comparison too
    return float(value)


@dataclasses.dataclass(frozen=True, eq=False)
class View:
    """One forward pass of an image: its model input size and the model's image-stage features."""

    flip: bool  # the input was mirrored (a TTA view; its score map is mirrored back)
    size: tuple[int, int]  # (h, w) valid size of the model input
    features: Features  # SegmentationModel.image_stage output


@dataclasses.dataclass(frozen=True, eq=False)
class ImageHandle:
    """The image-only features of one image, ready for any vocabulary (``Segmenter.encode_image``).

    Pass it to ``Segmenter.predict(handle, classes)`` of the segmenter that made it.
    """

    image: np.ndarray  # (H0, W0, 3) uint8 RGB, the decoded original (results and overlays use it)
    views: tuple[View, ...]  # one per forward pass (one, or one per TTA augmentation)
    model: str  # identity of the segmenter's model and weights (Segmenter.identity)
    dtype: torch.dtype  # compute dtype of the features
    options: dict[str, Any]  # the model options the features were computed with
    tta: TTAConfig | None  # the test-time augmentation (None: off)
    digest: str  # content digest of the decoded pixels (:func:`pixel_digest`)

    @property
    def nbytes(self) -> int:
        """Bytes held: the features' tensors and the decoded image."""
        return int(self.image.nbytes) + sum(features_nbytes(v.features) for v in self.views)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Cache key: (pixels, model, dtype, options and TTA)."""
        return self.digest, self.model, str(self.dtype), options_key(self.options, self.tta)

    def settings(
        self, model: str, dtype: torch.dtype, options: dict[str, Any], tta: TTAConfig | None
    ) -> tuple[dict[str, Any], TTAConfig | None]:
        """The options and TTA to finish with: the handle's when none are given, else the given ones if
        they are the handle's; a handle of another model or dtype, or other options, is one-line
        :class:`OvssError`."""
        if (self.model, self.dtype) != (model, dtype):
            raise OvssError(
                f"this image handle was encoded by {self.model} in {self.dtype}, not {model} in {dtype}; "
                "call encode_image on the segmenter that predicts"
            )
        if not options and tta is None:
            return self.options, self.tta
        if options_key(options, tta) != options_key(self.options, self.tta):
            raise OvssError(
                f"this image handle was encoded with {options_key(self.options, self.tta)}, not "
                f"{options_key(options, tta)}; encode the image again with these options (or pass none)"
            )
        return self.options, self.tta


def pixel_digest(rgb: np.ndarray) -> str:
    """BLAKE2b of an (H, W, 3) uint8 image's shape and pixels (the implicit cache's image identity)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(repr((rgb.shape, str(rgb.dtype))).encode())
    h.update(np.ascontiguousarray(rgb).data)
    return h.hexdigest()


def options_key(options: dict[str, Any], tta: TTAConfig | None) -> str:
    """Canonical JSON of the model options and the TTA setting."""
    aug = None if tta is None else tta.to_dict()
    return json.dumps({"options": options, "tta": aug}, sort_keys=True, default=repr)


def cache_key(
    rgb: np.ndarray, model: str, dtype: torch.dtype, options: dict[str, Any], tta: TTAConfig | None
) -> tuple[str, str, str, str]:
    """The implicit cache's key of a decoded image (:attr:`ImageHandle.key` of its handle)."""
    return pixel_digest(rgb), model, str(dtype), options_key(options, tta)


class ImageCache:
    """LRU of :class:`ImageHandle` bounded in bytes (``max_mb``, default ``$OVSS_IMAGE_CACHE_MB``;
    0 keeps nothing).

    Handles are stored under their :attr:`ImageHandle.key` (:func:`cache_key`), or under a key the
    caller gives (the demo: one handle per browser session, see ``ovss.demo.backend``).

    Args:
        max_mb: the byte bound in MiB (None: ``$OVSS_IMAGE_CACHE_MB``).
        max_items: at most this many handles (None: no count limit).
        keep_latest: the handle put last stays even when it alone exceeds the byte bound (0 MiB
            included); only the older ones are dropped.
    """

    def __init__(
        self, max_mb: float | None = None, max_items: int | None = None, keep_latest: bool = False
    ) -> None:
        what = f"image cache max_mb={max_mb!r}"
        mb = default_image_cache_mb() if max_mb is None else check_cache_mb(max_mb, what)
        whole = isinstance(max_items, int) and not isinstance(max_items, bool)
        if max_items is not None and (not whole or max_items < 1):
            raise CacheError(f"image cache max_items={max_items!r}: pass a whole number >= 1, or None")
        self.max_bytes = int(mb * 2**20)
        self.max_items = max_items
        self.keep_latest = keep_latest
        self._items: OrderedDict[tuple[str, ...], ImageHandle] = OrderedDict()  # oldest first
        self._bytes = 0

    def get(self, key: tuple[str, ...]) -> ImageHandle | None:
        """The handle stored under ``key`` (now the most recent) or None."""
        handle = self._items.get(key)
        if handle is not None:
            self._items.move_to_end(key)
        return handle

    def pop(self, key: tuple[str, ...]) -> ImageHandle | None:
        """Remove and return the handle stored under ``key`` (None when there is none)."""
        handle = self._items.pop(key, None)
        if handle is not None:
            self._bytes -= handle.nbytes
        return handle

    def put(self, handle: ImageHandle, key: tuple[str, ...] | None = None) -> None:
        """Keep ``handle`` under ``key`` (default: ``handle.key``), replacing what was stored there and
        dropping the least recently used handles beyond the bounds."""
        key = handle.key if key is None else key
        size = handle.nbytes
        self.pop(key)
        if size > self.max_bytes and not self.keep_latest:
            return
        self._items[key] = handle
        self._bytes += size
        limit = len(self._items) if self.max_items is None else self.max_items
        while len(self._items) > 1 and (self._bytes > self.max_bytes or len(self._items) > limit):
            self._bytes -= self._items.popitem(last=False)[1].nbytes

    def clear(self) -> None:
        """Drop every handle."""
        self._items.clear()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached handles."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[tuple[str, ...]]:
        """The keys held, least recently used first."""
        return iter(list(self._items))
