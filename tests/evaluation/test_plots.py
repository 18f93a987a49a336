from __future__ import annotations

import importlib.util
import logging
import sys

import numpy as np
import pytest
from PIL import Image

import ovss
import ovss.plotting as plotting
from ovss.evaluation.metrics import ConfusionMatrix
from ovss.evaluation.plots import _BEST, _WORST, confused_pairs, write_eval_plots
from ovss.evaluation.runner import build_report, evaluate
from tests.conftest import noise_photo

needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib (pip install 'ovss[plots]')"
)


def _colour_pixels(path, hex_colour: str, tol: int = 4) -> int:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - target).max(axis=-1) <= tol).sum())


def _dark_pixels(path, region) -> int:
    rgb = np.asarray(Image.open(path).convert("RGB"))[region]
    return int((rgb.max(axis=-1) < 100).sum())


def _report(k: int, seed: int = 0, absent: int = 0):
    """A real report of K classes from random labels; ``absent`` classes only ever predicted."""
    rng = np.random.default_rng(seed)
    cm = ConfusionMatrix(k, 65535)
    gt = rng.integers(0, k - absent, size=(64, 256))
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, k, size=gt.shape))
    gt[:2] = 65535  # some ignored pixels
    cm.update(pred, gt)
    names = [f"class{i}, synonym" for i in range(k)]
    return build_report(cm, names, f"synthetic{k}", {}), cm


def test_confused_pairs_match_a_brute_force_count():
    rng = np.random.default_rng(3)
    k = 12
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    matrix[:k, : k + 1] = rng.integers(0, 50, size=(k, k + 1))
    matrix[:k, 5] = 0  # a class absent from the ground truth: never a "true" class
    expected = []
    for g in range(k):
        total = matrix[:k, g].sum()
        for p in range(k):
            if p != g and matrix[p, g] > 0:
                expected.append((-matrix[p, g] / total, -matrix[p, g], g, p))
    expected.sort()
    pairs = confused_pairs(matrix, top=20)
    assert [(q["true"], q["predicted"]) for q in pairs] == [(g, p) for _, _, g, p in expected[:20]]
    assert pairs[0]["fraction"] == pytest.approx(-expected[0][0])
    assert pairs[0]["pixels"] == matrix[pairs[0]["predicted"], pairs[0]["true"]]
    assert all(q["true"] != 5 for q in pairs)
    assert confused_pairs(np.diag(np.arange(1, 6)), top=5) == []  # a perfect prediction


@needs_matplotlib
def test_plots_at_ade847_size_are_readable_images(tmp_path):
    report, cm = _report(847, absent=40)
    written = write_eval_plots(report, cm.matrix, tmp_path)
    assert [p.name for p in written] == ["per_class_iou.png", "confusion.png"]
    iou, conf = Image.open(written[0]), Image.open(written[1])
    assert iou.size == (900, 1100)  # 9 x 11 in at 100 dpi: curve + 30 labelled bars, not 847 rows
    assert _colour_pixels(written[0], _BEST) > 2000 and _colour_pixels(written[0], _WORST) > 500
    assert conf.size[0] == 900 and 500 < conf.size[1] < 800  # 20 pairs
    # class names are drawn left of the bars (dark text pixels), in both figures
    assert _dark_pixels(written[0], (slice(400, 1000), slice(0, 110))) > 2000  # ~700 without names
    assert _dark_pixels(written[1], (slice(50, conf.size[1] - 80), slice(0, 180))) > 2500  # ~800 without
    assert _colour_pixels(written[1], _WORST) > 2000
    assert all(p.stat().st_size < 300_000 for p in written)
    # the mmseg value counts the 40 predicted-only classes as 0: lower than detectron2's
    assert report["mmseg"]["mIoU"] < report["detectron2"]["mIoU"]


@needs_matplotlib
def test_small_vocabulary_gets_one_bar_per_class(tmp_path):
    report, cm = _report(6)
    (iou, _) = write_eval_plots(report, cm.matrix, tmp_path)
    assert Image.open(iou).size == (900, 320)  # 2.0 + 0.2 * 6 inches
    assert _colour_pixels(iou, _BEST) > 1000 and _colour_pixels(iou, _WORST) == 0


def test_missing_matplotlib_logs_one_line_and_writes_nothing(tmp_path, monkeypatch, caplog):
    for name in ["matplotlib", *[m for m in sys.modules if m.startswith("matplotlib.")]]:
        monkeypatch.setitem(sys.modules, name, None)  # every matplotlib import raises ImportError
    monkeypatch.setattr(plotting, "_warned", False)
    report, cm = _report(5)
    with caplog.at_level(logging.WARNING, logger="ovss.plots"):
        assert write_eval_plots(report, cm.matrix, tmp_path) == []
        assert write_eval_plots(report, cm.matrix, tmp_path) == []
    lines = [r.getMessage() for r in caplog.records if r.name == "ovss.plots"]
    assert lines == [plotting.MISSING_MESSAGE] and "ovss[plots]" in lines[0]
    assert not list(tmp_path.iterdir())


@needs_matplotlib
def test_eval_writes_the_plots_beside_metrics_json(tmp_path):
    from ovss.data.datasets import FolderDataset
    from ovss.models.base import ResizeConfig

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(2):
        noise_photo(root / "images" / f"{i}.png", seed=i)
        label = np.random.default_rng(i).integers(0, 3, size=(48, 64)).astype(np.uint8)
        Image.fromarray(label).save(root / "labels" / f"{i}.png")
    (root / "classes.txt").write_text("cat\ndog\ngrass\n")
    seg = ovss.load("test-san-tiny")
    seg.model.config.test_resize = ResizeConfig(size=32, max_size=128)
    evaluate(seg, FolderDataset(root, root / "classes.txt"), tmp_path / "out", progress=False)
    folder = tmp_path / "out" / root.name
    assert {"metrics.json", "per_class_iou.png", "confusion.png"} <= {p.name for p in folder.iterdir()}
