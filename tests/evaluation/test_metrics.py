"""ConfusionMatrix against detectron2's SemSegEvaluator / mmseg IoUMetric outputs (parity fixtures)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ovss.data.io import read_label
from ovss.errors import DatasetError
from ovss.evaluation.metrics import ConfusionMatrix
from tests.conftest import parity_params


def _load(folder: Path) -> tuple[dict, list[tuple[np.ndarray, np.ndarray]]]:
    expected = json.loads((folder / "expected_metrics.json").read_text())
    pairs = [(read_label(folder / p["pred"]), read_label(folder / p["gt"])) for p in expected["pairs"]]
    for (pred, gt), p in zip(pairs, expected["pairs"]):
        assert list(gt.shape) == p["hw"] and pred.shape == gt.shape
    return expected, pairs


def _section(expected: dict, prefix: str):
    (key,) = [k for k in expected if k.startswith(prefix)]
    return expected[key]


def _matrix(expected: dict, pairs, boundary: bool = False) -> ConfusionMatrix:
    cm = ConfusionMatrix(expected["num_classes"], expected["ignore_label"], boundary_iou=boundary)
    for pred, gt in pairs:
        cm.update(pred, gt)
    return cm


def _detectron2_results(metrics: dict[str, Any], class_names: Sequence[str]) -> dict[str, float | None]:
    """Our ``compute()`` output in the reference evaluator's layout: detectron2's ``results["sem_seg"]``
    keys and order.

    ``mIoU, fwIoU, IoU-<name> [, BoundaryIoU-<name>, min(IoU, B-Iou)-<name>], mACC, pACC,
    ACC-<name>``; excluded classes are None (detectron2 stores NaN).
    """
    if len(class_names) != len(metrics["IoU"]):
        raise ValueError(f"{len(class_names)} class names for {len(metrics['IoU'])} classes")
    out: dict[str, float | None] = {"mIoU": metrics["mIoU"], "fwIoU": metrics["fwIoU"]}
    for i, name in enumerate(class_names):
        out[f"IoU-{name}"] = metrics["IoU"][i]
        if "BoundaryIoU" in metrics:
            out[f"BoundaryIoU-{name}"] = metrics["BoundaryIoU"][i]
            out[f"min(IoU, B-Iou)-{name}"] = metrics["min(IoU, B-IoU)"][i]
    out["mACC"], out["pACC"] = metrics["mACC"], metrics["pACC"]
    for i, name in enumerate(class_names):
        out[f"ACC-{name}"] = metrics["ACC"][i]
    return out


@pytest.mark.parametrize("folder", parity_params("evaluator"))
def test_detectron2_convention_matches_semsegevaluator_exactly(folder):
    expected, pairs = _load(folder)
    cm = _matrix(expected, pairs, boundary=True)
    assert cm.num_images == len(pairs)
    np.testing.assert_array_equal(cm.matrix, _section(expected, "detectron2_confusion_matrix"))

    ours = _detectron2_results(cm.compute("detectron2"), expected["class_names"])
    ref = _section(expected, "detectron2_SemSegEvaluator")
    assert list(ours) == list(ref)  # same keys, same order
    mismatched = {k: (ours[k], ref[k]) for k in ref if ours[k] != ref[k]}  # bitwise, None == None
    assert not mismatched


@pytest.mark.parametrize("folder", parity_params("evaluator"))
def test_mmseg_convention_matches_iou_metric_and_detectron2_v06(folder):
    expected, pairs = _load(folder)
    cm = _matrix(expected, pairs)
    ours = cm.compute("mmseg")
    mm = _section(expected, "mmseg_IoUMetric")
    assert (ours["mIoU"], ours["mACC"], ours["pACC"]) == (mm["mIoU"], mm["mAcc"], mm["aAcc"])
    assert ours["IoU"] == mm["IoU_per_class"]
    assert ours["ACC"] == mm["Acc_per_class"]
    # mmseg's raw areas are the matrix without the ignore row/column
    m = cm.matrix[:-1, :-1]
    np.testing.assert_array_equal(np.diag(m), mm["area_intersect"])
    np.testing.assert_array_equal(m.sum(0), mm["area_label"])
    np.testing.assert_array_equal(m.sum(1), mm["area_pred_label"])
    np.testing.assert_array_equal(m.sum(0) + m.sum(1) - np.diag(m), mm["area_union"])
    assert {k: round(ours[o], 2) for k, o in (("aAcc", "pACC"), ("mIoU", "mIoU"), ("mAcc", "mACC"))} == (
        mm["rounded_as_mmseg_prints"]
    )

    v06 = _section(expected, "detectron2_v0.6_formula")
    assert (ours["mIoU"], ours["fwIoU"], ours["pACC"]) == (v06["mIoU"], v06["fwIoU"], v06["pACC"])
    assert ours["IoU"] == v06["IoU_per_class"]
    # the two references round mACC differently (1 ulp apart); we match mmseg bit for bit
    assert math.isclose(ours["mACC"], v06["mACC"], rel_tol=1e-15, abs_tol=0)


@pytest.mark.parametrize("folder", parity_params("evaluator"))
def test_conventions_differ_only_by_gt_absent_classes(folder):
    expected, pairs = _load(folder)
    cm = _matrix(expected, pairs)
    d2, mm = cm.compute("detectron2"), cm.compute("mmseg")
    absent = [i for i, a in enumerate(d2["ACC"]) if a is None]
    assert absent  # the fixture predicts classes that never occur in its ground truth
    assert all(d2["IoU"][i] is None and mm["IoU"][i] == 0.0 for i in absent)
    assert mm["mIoU"] < d2["mIoU"]
    kept = [v for v in d2["IoU"] if v is not None]
    assert math.isclose(mm["mIoU"], sum(kept) / (len(kept) + len(absent)), rel_tol=1e-12)


@pytest.mark.parametrize("folder", parity_params("evaluator"))
def test_merge_and_state_dict_round_trip(folder, tmp_path):
    expected, pairs = _load(folder)
    full = _matrix(expected, pairs, boundary=True)
    half = len(pairs) // 2
    a = _matrix(expected, pairs[:half], boundary=True)
    b = _matrix(expected, pairs[half:], boundary=True)
    merged = a.merge(b)
    np.testing.assert_array_equal(merged.matrix, full.matrix)
    np.testing.assert_array_equal(merged.boundary_matrix, full.boundary_matrix)
    assert merged.num_images == full.num_images
    assert merged.compute("detectron2") == full.compute("detectron2")

    # resume: save after the first half, load into a fresh matrix, finish the split
    torch.save(_matrix(expected, pairs[:half], boundary=True).state_dict(), tmp_path / "state.pt")
    resumed = ConfusionMatrix(expected["num_classes"], expected["ignore_label"], boundary_iou=True)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for pred, gt in pairs[half:]:
        resumed.update(pred, gt)
    np.testing.assert_array_equal(resumed.matrix, full.matrix)
    assert resumed.compute("mmseg") == full.compute("mmseg")
    assert resumed.num_images == len(pairs)

    with pytest.raises(ValueError, match="13 classes"):
        ConfusionMatrix(13).load_state_dict(full.state_dict())
    with pytest.raises(ValueError, match="boundary"):
        ConfusionMatrix(expected["num_classes"], expected["ignore_label"]).merge(full)


@pytest.mark.parametrize("folder", parity_params("evaluator"))
def test_torch_and_batched_inputs_give_the_same_matrix(folder):
    expected, pairs = _load(folder)
    ref = _matrix(expected, pairs)
    cm = ConfusionMatrix(expected["num_classes"], expected["ignore_label"])
    for pred, gt in pairs:
        cm.update(torch.from_numpy(pred).to(torch.int32), torch.from_numpy(gt.astype(np.uint8)))
    np.testing.assert_array_equal(cm.matrix, ref.matrix)
    # a batch (B, H, W) == the same maps one by one
    pred, gt = pairs[0]
    batch = ConfusionMatrix(expected["num_classes"], expected["ignore_label"], boundary_iou=True)
    batch.update(np.stack([pred, pred]), np.stack([gt, gt]))
    single = _matrix(expected, [pairs[0], pairs[0]], boundary=True)
    np.testing.assert_array_equal(batch.matrix, single.matrix)
    np.testing.assert_array_equal(batch.boundary_matrix, single.boundary_matrix)
    assert batch.num_images == 2


def test_sixteen_bit_labels_many_classes_against_naive_count():
    k, ignore = 847, 65535
    rng = np.random.default_rng(0)
    gt = rng.integers(0, k, (3, 61, 47)).astype(np.uint16)
    gt[:, :5] = ignore
    pred = rng.integers(0, k, gt.shape)
    cm = ConfusionMatrix(k, ignore)
    cm.update(pred, gt)
    naive = np.zeros((k + 1, k + 1), np.int64)
    g = np.where(gt == ignore, k, gt.astype(np.int64))
    np.add.at(naive, (pred.ravel(), g.ravel()), 1)
    np.testing.assert_array_equal(cm.matrix, naive)
    assert cm.boundary_matrix is None and cm.num_images == 3


def test_real_voc_labels_perfect_prediction(data_dir):
    cm = ConfusionMatrix(21, 255)
    for path in sorted((data_dir / "voc").glob("*.png")):
        gt = read_label(path)
        cm.update(np.where(gt == 255, 0, gt), gt)  # arbitrary predictions on ignore pixels
    for convention in ("detectron2", "mmseg"):
        m = cm.compute(convention)
        assert m["mIoU"] == m["mACC"] == m["pACC"] == 100.0
        assert math.isclose(m["fwIoU"], 100.0, rel_tol=1e-14)  # sum of class weights: rounding
        present = {i for i, v in enumerate(m["IoU"]) if v is not None}
        assert present == {0, 5, 6, 7, 9, 15, 18}  # background, bottle, bus, car, chair, person, sofa


def test_errors_are_clear():
    cm = ConfusionMatrix(5, 255)
    with pytest.raises(DatasetError, match=r"values \[7, 300\] outside \[0, 5\)"):
        cm.update(np.zeros((2, 2), int), np.array([[0, 7], [300, 255]]))
    with pytest.raises(ValueError, match=r"span \[0, 5\]"):
        cm.update(np.array([[0, 5]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="argmax"):
        cm.update(np.zeros((2, 2), np.float32), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="ignore_index 3"):
        ConfusionMatrix(5, 3)
    with pytest.raises(DatasetError, match="no labelled pixels"):
        cm.compute()
    with pytest.raises(ValueError, match="convention"):
        cm.compute("voc")
    assert cm.matrix.sum() == 0  # failed updates leave no partial counts


def test_all_reduce_without_distributed_is_a_no_op():
    cm = ConfusionMatrix(3, 255)
    cm.update(np.array([[0, 1, 2]]), np.array([[0, 1, 1]]))
    before = cm.matrix.copy()
    assert cm.all_reduce() is cm
    np.testing.assert_array_equal(cm.matrix, before)


def _reduce_worker(rank: int, world: int, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        cm = ConfusionMatrix(4, 255, boundary_iou=True)
        gt = np.full((6, 7), rank + 1)
        gt[0] = 255
        cm.update(np.full((6, 7), rank), gt)
        cm.all_reduce()
        torch.save(cm.state_dict(), f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_all_reduce_sums_over_ranks(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed not available")
    init = f"file://{tmp_path / 'store'}"
    # fork: the children reuse the imported torch (spawn would re-import it, ~3 s per process)
    torch.multiprocessing.start_processes(
        _reduce_worker, args=(2, init, str(tmp_path / "s")), nprocs=2, start_method="fork"
    )
    expected = ConfusionMatrix(4, 255, boundary_iou=True)
    for rank in range(2):
        gt = np.full((6, 7), rank + 1)
        gt[0] = 255
        expected.update(np.full((6, 7), rank), gt)
    for rank in range(2):
        state = torch.load(tmp_path / f"s.{rank}", weights_only=True)
        np.testing.assert_array_equal(state["matrix"].numpy(), expected.matrix)
        np.testing.assert_array_equal(state["boundary_matrix"].numpy(), expected.boundary_matrix)
        assert state["num_images"] == 2
