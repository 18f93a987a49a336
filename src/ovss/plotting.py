"""matplotlib, optional: the plots of ``ovss eval`` / ``ovss train`` (``pip install 'ovss[plots]'``).

Plots are a by-product: when matplotlib is missing, :func:`pyplot` logs ONE line per process naming
the extra to install and returns None, and the callers skip the figure; a run never fails for it.
Figures are rendered off-screen (the Agg backend, no display needed) and written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ovss.utils import atomic_write

_log = logging.getLogger("ovss.plots")
_warned = False
MISSING_MESSAGE = "plots skipped: matplotlib is not installed; install it with: pip install 'ovss[plots]'"


def pyplot() -> Any | None:
    """``matplotlib.pyplot`` on the Agg backend, or None (logged once) when matplotlib is missing."""
    global _warned
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)  # off-screen: never needs a display, never opens a window
        import matplotlib.pyplot as plt
    except ImportError:
        if not _warned:
            _warned = True
            _log.warning(MISSING_MESSAGE)
        return None
    return plt


def save_figure(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` as PNG (atomically) and close it."""
    plt = pyplot()
    try:
        atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=dpi))
    finally:
        if plt is not None:
            plt.close(fig)
    return Path(path)


def shorten(name: str, width: int = 28) -> str:
    """A class name cut to ``width`` characters (first synonym kept whole when it fits)."""
    first = name.split(",")[0].strip() or name
    text = name if len(name) <= width else first
    return text if len(text) <= width else text[: width - 1] + "…"
