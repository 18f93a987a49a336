"""matplotlib, optional: the plots of ``ovss eval`` / ``ovss train`` (``pip install 'ovss[plots]'``).

Plots are a by-product: when matplotlib is missing, :func:`new_figure` logs ONE line per process
naming the extra to install and returns None, and the callers skip the figure; a run never fails for
it. Figures are bare ``matplotlib.figure.Figure`` objects rendered off-screen by the Agg canvas: no
display is needed, and pyplot's global state (the backend of a notebook user, its figure registry)
is never touched. Files are written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ovss.utils import atomic_write

_log = logging.getLogger("ovss.plots")
_warned = False
MISSING_MESSAGE = "plots skipped: matplotlib is not installed; install it with: pip install 'ovss[plots]'"


def new_figure(width: float, height: float) -> Any | None:
    """A ``matplotlib.figure.Figure`` of ``width`` x ``height`` inches, or None (logged once) when
    matplotlib is missing."""
    global _warned
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        if not _warned:
            _warned = True
            _log.warning(MISSING_MESSAGE)
        return None
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # off-screen canvas, owned by this figure only
    return fig


def save_figure(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` as PNG (atomically)."""
    atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=dpi))
    return Path(path)


def shorten(name: str, width: int = 28) -> str:
    """A class name cut to ``width`` characters (first synonym kept whole when it fits)."""
    first = name.split(",")[0].strip() or name
    text = name if len(name) <= width else first
    return text if len(text) <= width else text[: width - 1] + "…"
