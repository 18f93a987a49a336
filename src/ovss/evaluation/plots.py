"""Evaluation plots: ``per_class_iou.png`` and ``confusion.png`` beside ``metrics.json``.

Both stay readable at ADE-847 size: up to :data:`ALL_BARS` classes every class gets a labelled
bar; above that, a sorted curve of every class plus labelled bars for the best and worst
:data:`EXTREMES`. The confusion plot shows the :data:`TOP_PAIRS` most confused (true, predicted)
pairs, not a K x K matrix. matplotlib is optional (``ovss.plotting``): without it nothing is drawn.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ovss.plotting import new_figure, save_figure, shorten

_log = logging.getLogger("ovss.plots")

ALL_BARS = 40  # up to this many scored classes, every class is a labelled bar
EXTREMES = 15  # above it: the best and the worst this many are labelled
TOP_PAIRS = 20  # confusion.png: this many (true, predicted) pairs
_BEST, _WORST, _D2, _MM = "#2a7ab0", "#d0563b", "#222222", "#8a5cc2"


def confused_pairs(matrix: np.ndarray, top: int = TOP_PAIRS) -> list[dict[str, Any]]:
    """The ``top`` most confused class pairs of a ``[pred, gt]`` confusion matrix.

    Args:
        matrix: (K+1, K+1) int counts indexed ``[pred, gt]``, the layout of
            ``ConfusionMatrix.matrix`` (row and column K, the ignored ground truth, are left out).
        top: how many pairs.

    Returns:
        Dicts ``{"true", "predicted", "fraction", "pixels"}``: ``fraction`` = pixels of class
        ``true`` predicted as ``predicted`` / all pixels of ``true``, largest first (ties: more
        pixels first, then lower indices). Pairs with no pixel are never listed.
    """
    m = np.asarray(matrix, dtype=np.int64)[:-1, :-1]
    off = m.copy()
    np.fill_diagonal(off, 0)
    totals = m.sum(axis=0)  # labelled pixels of each ground-truth class
    fraction = off / np.maximum(totals, 1)[None, :]
    candidates = np.flatnonzero(off)
    if candidates.size > 4 * top:  # keep the work small at K = 847 before the exact sort
        keep = np.argpartition(-fraction.ravel()[candidates], 4 * top)[: 4 * top]
        candidates = candidates[keep]
    pred, gt = np.unravel_index(candidates, off.shape)
    order = np.lexsort((pred, gt, -off[pred, gt], -fraction[pred, gt]))[:top]
    return [
        {"true": int(gt[i]), "predicted": int(pred[i]), "fraction": float(fraction[pred[i], gt[i]]),
         "pixels": int(off[pred[i], gt[i]])}
        for i in order
    ]


def _iou_lists(report: dict[str, Any]) -> tuple[list[tuple[str, float]], int]:
    """(name, IoU) of the classes detectron2 scores, best first; and the mmseg-only zeros count."""
    names = report["class_names"]
    d2, mm = report["detectron2"]["IoU"], report["mmseg"]["IoU"]
    scored = sorted(((names[k], v) for k, v in enumerate(d2) if v is not None), key=lambda t: -t[1])
    extra = sum(1 for a, b in zip(d2, mm) if a is None and b is not None)
    return scored, extra


def _miou_lines(ax: Any, report: dict[str, Any], scored: int, extra: int, vertical: bool) -> None:
    d2, mm = report["detectron2"]["mIoU"], report["mmseg"]["mIoU"]
    line = ax.axvline if vertical else ax.axhline
    line(d2, color=_D2, ls="--", lw=1.2, label=f"mIoU {d2:.2f}, detectron2 convention: mean over the "
         f"{scored} classes in the ground truth")
    line(mm, color=_MM, ls=":", lw=1.4, label=f"mIoU {mm:.2f}, mmseg convention: also counts the {extra} "
         "class(es) predicted but absent from the ground truth, as IoU 0")


def _bars(ax: Any, rows: list[tuple[str, float]], colours: list[str]) -> None:
    y = np.arange(len(rows))[::-1]
    ax.barh(y, [v for _, v in rows], color=colours, height=0.75)
    ax.set_yticks(y, [shorten(n) for n, _ in rows], fontsize=7)
    for yi, (_, v) in zip(y, rows):
        ax.annotate(f"{v:.1f}", (v, yi), xytext=(3, 0), textcoords="offset points", va="center", fontsize=6)
    ax.set_xlim(0, 105)
    ax.set_xlabel("IoU (%)")


def plot_per_class_iou(report: dict[str, Any], path: Path) -> Path | None:
    """Draw ``per_class_iou.png`` from an evaluation report (``metrics.json``); None without matplotlib."""
    scored, extra = _iou_lists(report)
    title = (f"{report['dataset']}: IoU per class, sorted ({len(scored)} classes scored, "
             f"{report['images']} image(s))")
    if len(scored) <= ALL_BARS:
        height = 2.0 + 0.2 * max(len(scored), 1)
        fig = new_figure(9, height)
        if fig is None:
            return None
        ax = fig.subplots()
        _bars(ax, scored, [_BEST] * len(scored))
        _miou_lines(ax, report, len(scored), extra, vertical=True)
        fig.legend(*ax.get_legend_handles_labels(), loc="lower center", fontsize=7)  # below, off the bars
        ax.set_title(title, fontsize=9)
        fig.tight_layout(rect=(0, 0.45 / height, 1, 1))
        return save_figure(fig, path)
    fig = new_figure(9, 11)
    if fig is None:
        return None
    curve, bars = fig.subplots(2, 1, gridspec_kw={"height_ratios": [1, 2.6]})
    values = [v for _, v in scored]
    curve.fill_between(np.arange(1, len(values) + 1), values, step="mid", color=_BEST, alpha=0.6)
    _miou_lines(curve, report, len(scored), extra, vertical=False)
    curve.set_xlim(0.5, len(values) + 0.5)
    curve.set_ylim(0, 100)
    curve.set_xlabel("class rank (best first)")
    curve.set_ylabel("IoU (%)")
    curve.legend(loc="upper right", fontsize=7)
    curve.set_title(title, fontsize=9)
    top, bottom = scored[:EXTREMES], scored[-EXTREMES:]
    _bars(bars, top + bottom, [_BEST] * len(top) + [_WORST] * len(bottom))
    bars.axhline(len(bottom) - 0.5, color="#999999", lw=0.8)
    bars.set_title(f"best {len(top)} (blue) and worst {len(bottom)} (red) of {len(scored)}", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: Path, title: str = "") -> Path | None:
    """Draw ``confusion.png``: the most confused (true -> predicted) pairs; None without matplotlib."""
    pairs = confused_pairs(matrix)
    fig = new_figure(9, 1.6 + 0.24 * max(len(pairs), 1))
    if fig is None:
        return None
    ax = fig.subplots()
    if pairs:
        y = np.arange(len(pairs))[::-1]
        values = [100 * p["fraction"] for p in pairs]
        labels = [f"{shorten(class_names[p['true']], 24)} → {shorten(class_names[p['predicted']], 24)}"
                  for p in pairs]
        ax.barh(y, values, color=_WORST, height=0.75)
        ax.set_yticks(y, labels, fontsize=7)
        for yi, v, p in zip(y, values, pairs):
            ax.annotate(f"{v:.1f}% ({p['pixels']:,} px)", (v, yi), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=6)
        ax.set_xlim(0, min(100.0, max(values) * 1.35 + 5))
    else:
        ax.text(0.5, 0.5, "no confusion: every labelled pixel is right", ha="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_xlabel("share of the true class's pixels predicted as the other class (%)")
    ax.set_title(f"{title + ': ' if title else ''}the {len(pairs)} most confused pairs (true → predicted)",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def write_eval_plots(report: dict[str, Any], matrix: np.ndarray, folder: Path) -> list[Path]:
    """``per_class_iou.png`` and ``confusion.png`` into ``folder``; never raises (a plot is a by-product).

    Returns the paths written (empty without matplotlib).
    """
    folder = Path(folder)
    jobs = {
        folder / "per_class_iou.png": lambda p: plot_per_class_iou(report, p),
        folder / "confusion.png": lambda p: plot_confusion(
            matrix, report["class_names"], p, report["dataset"]
        ),
    }
    written: list[Path] = []
    for target, draw in jobs.items():
        try:
            path = draw(target)
        except Exception as e:  # a failed figure must not cost the evaluation: one line, go on
            _log.warning("plot %s not written: %s", target, e)
            continue
        if path is not None:
            written.append(path)
    return written
