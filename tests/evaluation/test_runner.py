from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import ovss
from ovss.cli.main import main
from ovss.data.io import read_label
from ovss.evaluation.metrics import ConfusionMatrix
from ovss.evaluation.runner import benchmark, evaluate
from tests._subprocess import child_env, torchrun


@pytest.fixture
def voc20_root(data_dir, tmp_path):
    """The three real VOC photos as a tiny prepared VOC-20 (background -> ignore, k -> k - 1)."""
    root = tmp_path / "data"
    images, labels = root / "voc20" / "images" / "val", root / "voc20" / "labels" / "val"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for jpg in sorted((data_dir / "voc").glob("*.jpg")):
        shutil.copy(jpg, images / jpg.name)
        label = read_label(jpg.with_suffix(".png"))
        out = np.where((label == 0) | (label == 255), 255, label - 1).astype(np.uint8)
        Image.fromarray(out).save(labels / f"{jpg.stem}.png")
    return root


def _run(seg, root, out, **kwargs):
    data, classes, merge_from = benchmark("voc20", root, "san")
    return evaluate(seg, data, out, classes, merge_from=merge_from, progress=False, **kwargs)


def _reference_matrix(seg, root) -> np.ndarray:
    from ovss.data.catalog import get_benchmark

    spec = get_benchmark("voc20")
    cm = ConfusionMatrix(20, 255)
    for jpg in sorted((root / "voc20" / "images" / "val").glob("*.jpg")):
        pred = seg.predict(jpg, spec.class_names("san")).label_map
        cm.update(pred, read_label(root / "voc20" / "labels" / "val" / f"{jpg.stem}.png"))
    return cm.matrix


def _saved_matrix(out, name="state-rank0-of1.pt", dataset="voc20") -> np.ndarray:
    state = torch.load(out / dataset / name, weights_only=True)
    return state["matrix"]["matrix"].numpy()


def test_eval_end_to_end_matches_direct_predictions(voc20_root, tmp_path):
    seg = ovss.load("test-san-tiny")
    report = _run(seg, voc20_root, tmp_path / "out")
    assert report["images"] == 3
    np.testing.assert_array_equal(_saved_matrix(tmp_path / "out"), _reference_matrix(seg, voc20_root))
    for convention in ("detectron2", "mmseg"):
        m = report[convention]
        assert 0 <= m["mIoU"] <= 100 and len(m["IoU"]) == 20
    # classes absent from the GT are excluded by detectron2 but may count as 0 under mmseg
    gt_classes = {4, 8, 17, 14, 5, 6}  # bottle, chair, sofa, person, bus, car (0-based)
    assert {k for k, v in enumerate(report["detectron2"]["IoU"]) if v is not None} <= gt_classes
    folder = tmp_path / "out" / "voc20"
    for name in ("metrics.json", "metrics.csv", "per_class.csv", "images-rank0.jsonl"):
        assert (folder / name).is_file()
    assert len((folder / "per_class.csv").read_text().splitlines()) == 21


class FailingSegmenter:
    """Wraps a Segmenter; raises after ``fail_after`` predictions (an interrupted run)."""

    def __init__(self, seg, fail_after: int) -> None:
        self.seg, self.fail_after, self.calls = seg, fail_after, 0
        self.name, self.dtype = seg.name, seg.dtype

    def set_vocabulary(self, classes):
        return self.seg.set_vocabulary(classes)

    def predict(self, image, **options):
        if self.calls == self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        return self.seg.predict(image, **options)


def test_interrupted_eval_resumes_where_it_stopped(voc20_root, tmp_path):
    seg = ovss.load("test-san-tiny")
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _run(FailingSegmenter(seg, 2), voc20_root, out, save_every=1)
    resumed = FailingSegmenter(seg, 99)
    report = _run(resumed, voc20_root, out, save_every=1)
    assert resumed.calls == 1  # only the third image was left
    assert report["images"] == 3
    np.testing.assert_array_equal(_saved_matrix(out), _reference_matrix(seg, voc20_root))


def test_resume_with_other_settings_is_refused(voc20_root, tmp_path):
    from ovss.errors import DatasetError

    seg = ovss.load("test-san-tiny")
    _run(seg, voc20_root, tmp_path / "out", limit=1)
    with pytest.raises(DatasetError, match=r"made with other .*image count \(--limit\); pass another --out"):
        _run(seg, voc20_root, tmp_path / "out", limit=2)


def test_two_process_gloo_equals_one_process(voc20_root, tmp_path):
    """torchrun with 2 CPU processes: exit 0 (the group is destroyed; a live gloo group could abort the
    exit with -6), the same matrix and metrics as one process."""
    common = ["eval", "--model", "test-san-tiny", "--dataset", "voc20", "--data-root", str(voc20_root)]
    one = subprocess.run(
        [sys.executable, "-m", "ovss.cli.main", *common, "--out", str(tmp_path / "one")],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    two = torchrun(["-m", "ovss.cli.main", *common, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr
    assert "terminate called" not in two.stderr
    assert two.stdout.count("reports (metrics.json") == 1  # rank 0 alone prints the table
    summed = _saved_matrix(tmp_path / "two", "state-rank0-of2.pt") + _saved_matrix(
        tmp_path / "two", "state-rank1-of2.pt"
    )
    np.testing.assert_array_equal(summed, _saved_matrix(tmp_path / "one"))
    a = (tmp_path / "one" / "voc20" / "metrics.csv").read_text()
    b = (tmp_path / "two" / "voc20" / "metrics.csv").read_text()
    assert a == b


def test_folder_dataset_eval_cli(voc20_root, tmp_path, capsys):
    """Custom data: the same three photos as a folder dataset with a class file."""
    from ovss.data.catalog import get_benchmark

    folder = tmp_path / "custom"
    shutil.copytree(voc20_root / "voc20" / "images" / "val", folder / "images")
    shutil.copytree(voc20_root / "voc20" / "labels" / "val", folder / "labels")
    (folder / "classes.txt").write_text("\n".join(get_benchmark("voc20").class_names("san")) + "\n")
    code = main(
        [
            "eval",
            "--model",
            "test-san-tiny",
            "--folder",
            str(folder),
            "--classes",
            "classes.txt",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    assert "detectron2" in capsys.readouterr().out
    custom = _saved_matrix(tmp_path / "out", "state-rank0-of1.pt", "custom")
    np.testing.assert_array_equal(custom, _reference_matrix(ovss.load("test-san-tiny"), voc20_root))
    assert main(["eval", "--model", "test-san-tiny", "--folder", str(folder)]) == 1
