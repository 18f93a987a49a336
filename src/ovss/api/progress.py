"""A progress bar inside one image: the TTA passes or the blocks of a long score map.

:class:`ImageProgress` is the ``progress=`` callback of :meth:`ovss.api.segmenter.Segmenter.predict`
rendered as a tqdm bar on stderr (like the per-image bars of ``ovss segment`` and ``ovss eval``). It
appears only once an image has taken ``delay`` seconds, so fast images print nothing, and it is
cleared when the image is done.
"""

from __future__ import annotations

from typing import Any

DELAY_S = 2.0  # seconds an image must take before its bar appears (the default of ImageProgress)


class ImageProgress:
    """``progress(done, total, unit)`` -> a transient tqdm bar (one per image, shown after ``delay`` s).

    Args:
        enabled: False makes every call a no-op (other ranks, ``--quiet`` runs).
        delay: seconds an image must take before its bar appears (default :data:`DELAY_S`).
        position: tqdm row (1: under the per-image bar).
    """

    def __init__(self, enabled: bool = True, delay: float | None = None, position: int = 1) -> None:
        self.enabled = enabled
        self.delay = DELAY_S if delay is None else delay
        self.position = position
        self._bar: Any = None

    def __call__(self, done: float, total: float, unit: str) -> None:
        if not self.enabled:
            return
        if self._bar is None or done == 0 or self._bar.total != total:  # a new image (batch)
            self.close()
            from tqdm import tqdm

            desc = "  TTA passes" if unit == "pass" else "  image"
            self._bar = tqdm(total=total, unit=unit, desc=desc, leave=False, delay=self.delay,
                             position=self.position, dynamic_ncols=True)
        if done > self._bar.n:
            self._bar.update(done - self._bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        """Remove the current bar (if any)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
