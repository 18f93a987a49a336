"""What the demo page shows beside the overlay: display controls (minimum score, opacity, names on the
regions, score map of one class) and the display-size renderings. No gradio here."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image

from ovss.errors import OvssError

DISPLAY_SIDE = 2048  # the images shown in the page are at most this many pixels on their long side
DEFAULT_OPACITY = 0.55  # of the overlay colours (as ovss segment and SegmentationResult.overlay)


class DemoUserError(OvssError):
    """A request the demo refuses; the message is shown to the web user as is."""


def _display_size(image: np.ndarray, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image, plane) at most ``DISPLAY_SIDE`` pixels on their long side (bilinear / nearest)."""
    h, w = plane.shape
    scale = min(1.0, DISPLAY_SIDE / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        rows = (np.arange(size[1]) * h // size[1])[:, None]
        cols = (np.arange(size[0]) * w // size[0])[None, :]
        plane = plane[rows, cols]
    return image, plane


def display_overlay(
    image: np.ndarray,
    label_map: np.ndarray,
    names: list[str],
    opacity: float = DEFAULT_OPACITY,
    labels: bool = False,
) -> Image.Image:
    """Colour overlay for the page (no legend), at most ``DISPLAY_SIDE`` pixels on its long side;
    ``labels``: the class names written on their regions (sized for the displayed image)."""
    from ovss.api.visualize import overlay

    image, label_map = _display_size(image, label_map)
    return overlay(image, label_map, names, opacity=opacity, legend=False, labels=labels)


def display_score_map(image: np.ndarray, scores: np.ndarray) -> Image.Image:
    """Heat map of one class's (H, W) scores over the photo, display size (:mod:`ovss.api.heatmaps`)."""
    from ovss.api.heatmaps import heat, score_range

    image, scores = _display_size(image, scores)
    return Image.fromarray(heat(scores, image, *score_range(scores)))


@dataclasses.dataclass(frozen=True)
class DisplayOptions:
    """The page's display controls, checked (:func:`display_options`)."""

    min_score: float | None = None  # pixels below it stay unlabelled; None: every pixel labelled
    opacity: float = DEFAULT_OPACITY  # of the overlay colours
    labels: bool = True  # class names written on the regions
    score_class: int | None = None  # index of the class whose score map is shown; None: none


def display_options(
    vocabulary: list[list[str]],
    min_score: Any = None,
    opacity: Any = DEFAULT_OPACITY,
    labels: Any = True,
    score_class: Any = "",
) -> DisplayOptions:
    """Check the display controls of a request against its class list.

    ``min_score`` empty or None: off. ``score_class``: a class name of the list (its first synonym),
    empty for none.

    Raises:
        DemoUserError: a minimum score or opacity that is not a number in range, or a score-map
            class that is not in the class list.
    """
    score = None
    if min_score is not None and min_score != "":
        try:
            score = float(min_score)
        except (TypeError, ValueError):
            score = float("nan")
        if isinstance(min_score, bool) or not np.isfinite(score):
            raise DemoUserError(
                f"the minimum score must be a number such as 0.3, got {str(min_score)[:40]!r}"
            )
    try:
        alpha = DEFAULT_OPACITY if opacity is None else float(opacity)
    except (TypeError, ValueError):
        alpha = float("nan")
    if not 0.0 <= alpha <= 1.0:
        raise DemoUserError(f"the opacity must be a number from 0 to 1, got {str(opacity)[:40]!r}")
    index = None
    if score_class not in (None, ""):
        names = [c[0] for c in vocabulary]
        wanted = str(score_class).strip()
        matches = [k for k, n in enumerate(names) if n == wanted] or [
            k for k, n in enumerate(names) if n.casefold() == wanted.casefold()
        ]
        if not matches:
            raise DemoUserError(
                f"the score-map class {wanted[:40]!r} is not in the class list; choose one of your classes"
            )
        index = matches[0]
    return DisplayOptions(score, alpha, bool(labels), index)
