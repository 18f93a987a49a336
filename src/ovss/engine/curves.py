"""``curves.png`` of a training run, drawn from its own ``metrics.jsonl``.

Three panels against the iteration: every loss term (the weighted total ``loss`` in bold), the
learning rate, and the evaluation mIoU. The trainer redraws it at each evaluation and at the end;
``ovss.plotting`` makes matplotlib optional (without it: one logged line, no figure).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ovss.engine.logging import read_metrics
from ovss.plotting import new_figure, save_figure

_log = logging.getLogger("ovss.plots")

CURVES_FILE = "curves.png"


def curve_series(entries: list[dict[str, Any]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Group ``metrics.jsonl`` entries into the series of each panel.

    Returns:
        ``{"loss": {term: [(iteration, value)]}, "lr": {"lr": [...]}, "eval": {metric: [...]}}``: loss
        terms are the keys starting with ``loss``; eval metrics the ``eval/*`` keys (prefix dropped).
        Non-numeric and non-finite values are left out.
    """
    series: dict[str, dict[str, list[tuple[int, float]]]] = {"loss": {}, "lr": {}, "eval": {}}
    for entry in entries:
        it = entry.get("iteration")
        if not isinstance(it, int):
            continue
        for key, value in entry.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                continue
            if key.startswith("loss"):
                panel, name = "loss", key
            elif key == "lr":
                panel, name = "lr", key
            elif key.startswith("eval/"):
                panel, name = "eval", key.removeprefix("eval/")
            else:
                continue
            series[panel].setdefault(name, []).append((it, float(value)))
    return series


def _line(ax: Any, points: list[tuple[int, float]], **kwargs: Any) -> None:
    ax.plot([p[0] for p in points], [p[1] for p in points], **kwargs)


def plot_curves(metrics_path: Path, path: Path) -> Path | None:
    """Draw the curves of ``metrics_path`` (a ``metrics.jsonl``) into ``path``; None without matplotlib."""
    fig = new_figure(8, 8)
    if fig is None:
        return None
    series = curve_series(read_metrics(metrics_path))
    losses, lr, evals = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [2.2, 1, 1.4]})
    for name, points in sorted(series["loss"].items(), key=lambda kv: kv[0] != "loss"):
        _line(losses, points, label=name, lw=2.2 if name == "loss" else 1.0, color="black" if name == "loss"
              else None)
    if any(v <= 0 for points in series["loss"].values() for _, v in points) or not series["loss"]:
        losses.set_ylabel("loss")
    else:
        losses.set_yscale("log")
        losses.set_ylabel("loss (log scale)")
    if series["loss"]:
        losses.legend(fontsize=7, ncol=2)
    losses.set_title(f"training curves ({Path(metrics_path).parent.name})", fontsize=9)
    if series["lr"]:
        _line(lr, series["lr"]["lr"], color="#2a7ab0")
    lr.set_ylabel("learning rate")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    miou = series["eval"].get("mIoU", [])
    if miou:
        _line(evals, miou, color="#d0563b", marker="o", label="eval mIoU")
        for it, v in miou[-1:]:
            evals.annotate(f"{v:.1f}", (it, v), textcoords="offset points", xytext=(-6, -14), fontsize=7)
        evals.margins(y=0.15)
    else:
        evals.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=evals.transAxes)
    evals.set_ylabel("eval mIoU (%)")
    evals.set_xlabel("iteration")
    for ax in (losses, lr, evals):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def write_curves(out_dir: Path) -> Path | None:
    """Redraw ``OUT/curves.png`` from ``OUT/metrics.jsonl``; never raises (a plot is a by-product)."""
    metrics = Path(out_dir) / "metrics.jsonl"
    if not metrics.is_file():
        return None
    try:
        return plot_curves(metrics, Path(out_dir) / CURVES_FILE)
    except Exception as e:  # a failed figure must not stop training: one line, go on
        _log.warning("plot %s not written: %s", Path(out_dir) / CURVES_FILE, e)
        return None
