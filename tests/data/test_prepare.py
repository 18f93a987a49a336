"""`ovss prepare` on small synthetic copies of each official raw format (and the real VOC samples)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from ovss.data.io import read_label
from ovss.data.prepare import prepare
from ovss.errors import DatasetError
from tests.conftest import DATA_DIR, requires

SAMPLES = DATA_DIR / "voc"


def _jpeg(path: Path, h: int, w: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


def _png(path: Path, array: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette:
        image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(name: str, raw: Path, out: Path, **kw):
    kw.setdefault("workers", 1)
    return prepare(name, raw, out, progress=False, check_counts=False, **kw)


def _assert_idempotent(name: str, raw: Path, out: Path, n: int) -> None:
    before = _mtimes(out / name)
    again = _run(name, raw, out)
    assert (again.written, again.existing) == (0, n)
    assert _mtimes(out / name) == before


# ------------------------------------------------------------------------------- COCO-Stuff
def test_coco_stuff_mapping_idempotence_and_counts(tmp_path):
    root = tmp_path / "raw" / "coco-stuff"
    raw_ids = np.array([[0, 11, 12, 90], [91, 181, 255, 182]], dtype=np.uint8)
    for i, stem in enumerate(("000000000139", "000000000285")):
        _jpeg(root / "images" / "val2017" / f"{stem}.jpg", 2, 4, seed=i)
        _png(root / "annotations" / "val2017" / f"{stem}.png", np.roll(raw_ids, i, axis=1))
    out = tmp_path / "out"
    report = _run("coco171", tmp_path / "raw", out)
    assert (report.found, report.written, report.existing, report.expected) == (2, 2, 0, 5000)
    label = read_label(out / "coco171/labels/val/000000000139.png")
    # 0 -> person 0; 11, 90 unused -> 255; 12 (stop sign) -> 11; 91 (banner) -> 80; 181 (wood) -> 170
    assert label.tolist() == [[0, 255, 11, 255], [80, 170, 255, 255]]
    image = out / "coco171/images/val/000000000139.jpg"
    assert image.read_bytes() == (root / "images/val2017/000000000139.jpg").read_bytes()
    _assert_idempotent("coco171", tmp_path / "raw", out, 2)
    (out / "coco171/labels/val/000000000285.png").unlink()  # an interrupted run resumes
    assert _run("coco171", tmp_path / "raw", out).written == 1
    with pytest.raises(DatasetError, match="found 2 val images for coco171 .* expected 5000"):
        prepare("coco171", tmp_path / "raw", out, workers=1, progress=False)


def test_missing_raw_folder_names_what_is_expected(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(DatasetError, match=r"coco-stuff/images/val2017.*stuffthingmaps"):
        _run("coco171", tmp_path / "raw", tmp_path / "out")
    with pytest.raises(DatasetError, match=r"ADEChallengeData2016/annotations.*ADEChallengeData2016.zip"):
        _run("ade150", tmp_path / "raw", tmp_path / "out")
    with pytest.raises(DatasetError, match="does not exist"):
        _run("voc20", tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(DatasetError, match="no split 'train'"):
        _run("ade150", tmp_path / "raw", tmp_path / "out", split="train")


# ---------------------------------------------------------------------------------- ADE-150
def test_ade150_reduce_zero_label_in_two_processes(tmp_path):
    root = tmp_path / "ADEChallengeData2016"  # raw may also be the dataset folder itself
    for i in range(3):
        stem = f"ADE_val_0000000{i + 1}"
        _jpeg(root / "images" / "validation" / f"{stem}.jpg", 3, 2, seed=i)
        labels = np.array([[0, 1], [150, 7], [i, 0]], np.uint8)
        _png(root / "annotations" / "validation" / f"{stem}.png", labels)
    out = tmp_path / "out"
    report = _run("ade150", root, out, workers=2)
    assert (report.written, report.found) == (3, 3)
    label = read_label(out / "ade150/labels/val/ADE_val_00000002.png")
    assert label.tolist() == [[255, 0], [149, 6], [0, 255]]
    _assert_idempotent("ade150", root, out, 3)
    (root / "images/validation/ADE_val_00000003.jpg").unlink()
    shutil.rmtree(out)
    with pytest.raises(DatasetError, match="ADE_val_00000003.jpg is missing"):
        _run("ade150", root, out)


# ---------------------------------------------------------------------------------- ADE-847
def _seg_png(classes: np.ndarray) -> np.ndarray:
    """ADE20K *_seg.png colours for raw class values: R = (c // 256) * 10 + noise digit, G = c % 256."""
    seg = np.zeros((*classes.shape, 3), np.uint8)
    seg[..., 0] = (classes // 256) * 10 + 3  # R // 10 drops the last digit (instance bits live there)
    seg[..., 1] = classes % 256
    seg[..., 2] = 77  # B holds instance ids; ignored
    return seg


def test_ade847_decoding_resize_and_16bit_output(tmp_path):
    folder = tmp_path / "raw" / "ADE20K_2021_17_01" / "images" / "ADE" / "validation" / "a" / "abbey"
    # 600 x 800 -> short side 512: (512, 683). Left half wall (2978 -> 0), right half adding
    # machine (3148 -> 846); top rows: unlabeled (0) and a rare object (1) -> 65535.
    classes = np.full((600, 800), 2978, np.int64)
    classes[:, 400:] = 3148
    classes[:100, :] = 0
    classes[:100, 400:] = 1
    _jpeg(folder / "ADE_val_00000001.jpg", 600, 800)
    _png(folder / "ADE_val_00000001_seg.png", _seg_png(classes))
    small = np.full((40, 30), 2855, np.int64)  # tree -> 3; short side <= 512: not resized
    _jpeg(folder.parent / "b" / "ADE_val_00000002.jpg", 40, 30, seed=1)
    _png(folder.parent / "b" / "ADE_val_00000002_seg.png", _seg_png(small))
    (folder / "ADE_train_00000009.jpg").write_bytes(b"not a val image")  # ignored
    out = tmp_path / "out"
    report = _run("ade847", tmp_path / "raw", out)
    assert report.written == 2
    label_path = out / "ade847/labels/val/ADE_val_00000001.tif"
    with Image.open(label_path) as im:
        assert im.format == "TIFF" and im.mode == "I;16"
    label = read_label(label_path)
    assert label.shape == (512, 683)
    assert label[200, 100] == 0 and label[200, 600] == 846
    assert label[20, 100] == 65535 and label[20, 600] == 65535
    assert set(np.unique(label)) == {0, 846, 65535}
    with Image.open(out / "ade847/images/val/ADE_val_00000001.jpg") as im:
        assert (im.format, im.size) == ("JPEG", (683, 512))
    assert read_label(out / "ade847/labels/val/ADE_val_00000002.tif").tolist() == [[3] * 30] * 40
    _assert_idempotent("ade847", tmp_path / "raw", out, 2)


# --------------------------------------------------------------------------- PASCAL Context
def _pcontext(tmp_path: Path) -> Path:
    root = tmp_path / "raw" / "VOCdevkit" / "VOC2010"
    label_map = np.array([[2, 9, 458], [459, 0, 1], [284, 115, 2]], np.uint16)
    for i, image_id in enumerate(("2008_000002", "2008_000003")):
        _jpeg(root / "JPEGImages" / f"{image_id}.jpg", 3, 3, seed=i)
        (root / "trainval").mkdir(parents=True, exist_ok=True)
        savemat(root / "trainval" / f"{image_id}.mat", {"LabelMap": np.rot90(label_map, i).copy()})
    (root / "pascalcontext_val.txt").write_text("2008_000002\n2008_000003\n2008_000007\n")
    return root


def test_pcontext_59_and_459(tmp_path):
    root, out = _pcontext(tmp_path), tmp_path / "out"
    report = _run("pc59", tmp_path / "raw", out)
    assert (report.written, report.skipped_inputs) == (2, ["2008_000007"])  # listed id without files
    # aeroplane 2 -> 0, bag 9 -> 1, wood 458 -> 58, wool 459 / accordion 1 / 0 -> 255,
    # person 284 -> 36, door 115 -> 23
    assert read_label(out / "pc59/labels/val/2008_000002.png").tolist() == [
        [0, 1, 58], [255, 255, 255], [36, 23, 0]
    ]  # fmt: skip
    report = _run("pc459", tmp_path / "raw", out)
    assert report.written == 2
    label = read_label(out / "pc459/labels/val/2008_000002.tif")
    assert label.tolist() == [[1, 8, 457], [458, 65535, 0], [283, 114, 1]]
    assert (out / "pc459/images/val/2008_000003.jpg").read_bytes() == (
        root / "JPEGImages/2008_000003.jpg"
    ).read_bytes()
    _assert_idempotent("pc459", tmp_path / "raw", out, 2)


def test_pcontext_pinned_list_reports_missing_ids(tmp_path):
    root = _pcontext(tmp_path)
    (root / "pascalcontext_val.txt").unlink()  # falls back to the pinned 5,104-id list
    with pytest.raises(DatasetError, match="5102 PASCAL Context val ids have no .*first: 2008_000007"):
        prepare("pc59", tmp_path / "raw", tmp_path / "out", workers=1, progress=False)
    report = _run("pc59", tmp_path / "raw", tmp_path / "out")
    assert (report.written, len(report.skipped_inputs)) == (2, 5102)


# ------------------------------------------------------------------------------------- VOC
def _voc(tmp_path: Path) -> Path:
    root = tmp_path / "raw" / "VOCdevkit" / "VOC2012"
    ids = []
    for png in sorted(SAMPLES.glob("*.png")):  # three real VOC images with palette masks
        shutil.copy(png.with_suffix(".jpg"), _mkdir(root / "JPEGImages") / f"{png.stem}.jpg")
        shutil.copy(png, _mkdir(root / "SegmentationClass") / png.name)
        ids.append(png.stem)
    _jpeg(root / "JPEGImages" / "2011_000999.jpg", 4, 5)  # background and boundary only
    background = np.array([[0] * 5] * 3 + [[255] * 5], np.uint8)
    _png(root / "SegmentationClass" / "2011_000999.png", background, palette=True)
    split = _mkdir(root / "ImageSets" / "Segmentation") / "val.txt"
    split.write_text("\n".join([*ids, "2011_000999"]))
    return root


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@requires(SAMPLES)
def test_voc_three_conventions_on_real_masks(tmp_path):
    root, out = _voc(tmp_path), tmp_path / "out"
    raw = np.asarray(Image.open(root / "SegmentationClass/2011_000003.png"))
    assert set(np.unique(raw)) == {0, 5, 15, 255}  # background, bottle, person, boundary

    report = _run("voc20", tmp_path / "raw", out)
    assert (report.written, report.dropped) == (3, 1)  # the background-only map is dropped
    assert not (out / "voc20/labels/val/2011_000999.png").exists()
    voc20 = read_label(out / "voc20/labels/val/2011_000003.png")
    assert np.array_equal(voc20 == 255, (raw == 0) | (raw == 255))
    assert np.array_equal(voc20[raw == 15], np.full((raw == 15).sum(), 14))  # person -> 14

    assert _run("voc20b", tmp_path / "raw", out).written == 4
    voc20b = read_label(out / "voc20b/labels/val/2011_000003.png")
    assert set(np.unique(voc20b[raw == 0])) == {20} and set(np.unique(voc20b[raw == 5])) == {4}
    assert read_label(out / "voc20b/labels/val/2011_000999.png").tolist()[0] == [20] * 5

    assert _run("voc21", tmp_path / "raw", out).written == 4
    assert np.array_equal(read_label(out / "voc21/labels/val/2011_000003.png"), raw)
    _assert_idempotent("voc21", tmp_path / "raw", out, 4)
    with pytest.raises(DatasetError, match="found 4 val images for voc21 .* expected 1449"):
        prepare("voc21", tmp_path / "raw", out, workers=1, progress=False)
