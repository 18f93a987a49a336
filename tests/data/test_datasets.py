"""FolderDataset / BenchmarkDataset on tiny generated folders and the real VOC samples."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovss.data.catalog import get_benchmark
from ovss.data.datasets import BenchmarkDataset, FolderDataset, SegmentationDataset
from ovss.data.io import read_image, write_label_png
from ovss.errors import DatasetError, VocabularyError

SIZES = {"b_wide": (12, 20), "a_tall": (18, 10), "c_square": (16, 16)}


def _make_folder(root: Path, sizes=SIZES, image_ext=".png", label_ext=".png") -> dict[str, tuple]:
    """Random images and labels; returns stem -> (image, label) as written."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    written = {}
    for stem, (h, w) in sizes.items():
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        label = rng.integers(0, 3, (h, w))
        label[0, :] = 255
        Image.fromarray(image).save(root / "images" / f"{stem}{image_ext}")
        if label_ext == ".tif":
            Image.fromarray(label.astype(np.uint16)).save(root / "labels" / f"{stem}{label_ext}")
        else:
            write_label_png(root / "labels" / f"{stem}{label_ext}", label)
        written[stem] = (image, label)
    return written


def test_folder_dataset_items(tmp_path):
    written = _make_folder(tmp_path / "mine")
    (tmp_path / "mine" / "classes.txt").write_text("# my classes\nsky\nsofa, couch\n\nwall\n")
    data = FolderDataset(tmp_path / "mine", "classes.txt")  # found under root
    assert len(data) == 3 and data.num_classes == 3 and data.ignore_index == 255
    assert data.class_names == ["sky", "sofa, couch", "wall"]
    assert [item["name"] for item in data] == ["a_tall", "b_wide", "c_square"]  # sorted by stem
    for item in data:
        image, label = written[item["name"]]
        assert item["image"].dtype == np.uint8 and item["label"].dtype == np.int64
        np.testing.assert_array_equal(item["image"], image)
        np.testing.assert_array_equal(item["label"], label)
    assert data[-1]["name"] == "c_square"
    with pytest.raises(IndexError):
        data[3]
    assert "items=3" in repr(data)


def test_folder_dataset_real_voc(data_dir, tmp_path):
    root = tmp_path / "voc"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for path in (data_dir / "voc").iterdir():
        if path.suffix in (".jpg", ".png"):
            folder = "images" if path.suffix == ".jpg" else "labels"
            os.symlink(path, root / folder / path.name)
    data = FolderDataset(root, data_dir / "voc" / "class_names.txt")
    assert len(data) == 3 and data.num_classes == 21
    assert data.class_names[15] == "person"
    item = data[0]
    assert item["name"] == "2011_000003"
    np.testing.assert_array_equal(item["image"], read_image(data_dir / "voc" / "2011_000003.jpg"))
    assert set(np.unique(item["label"]).tolist()) == {0, 5, 15, 255}  # background, bottle, person
    assert item["label"].shape == item["image"].shape[:2]


def test_folder_dataset_json_classes_and_custom_folders(tmp_path):
    _make_folder(tmp_path / "d", label_ext=".tif")
    (tmp_path / "d" / "images").rename(tmp_path / "d" / "rgb")
    (tmp_path / "d" / "labels").rename(tmp_path / "d" / "gt")
    (tmp_path / "names.json").write_text(json.dumps(["a", "b", "c", "d"]))
    data = FolderDataset(tmp_path / "d", tmp_path / "names.json", images="rgb", labels="gt")
    assert data.num_classes == 4 and len(data) == 3
    assert data[0]["label"].max() == 255  # 16-bit TIFF labels


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda r: shutil.rmtree(r / "labels"), r"label maps folder .*labels does not exist; expected"),
        (lambda r: [p.unlink() for p in (r / "images").iterdir()], r"no images found .*expected .*<stem>"),
        (lambda r: (r / "labels" / "a_tall.png").unlink(), r"1 images without a label map \(a_tall\)"),
        (lambda r: (r / "images" / "b_wide.png").unlink(), r"1 label maps without an image \(b_wide\)"),
        (lambda r: shutil.copy(r / "images" / "a_tall.png", r / "images" / "a_tall.jpg"), "share the stem"),
    ],
)
def test_folder_dataset_layout_errors(tmp_path, damage, match):
    _make_folder(tmp_path / "d")
    (tmp_path / "d" / "classes.txt").write_text("x\ny\nz\n")
    damage(tmp_path / "d")
    with pytest.raises(DatasetError, match=match) as info:
        FolderDataset(tmp_path / "d", "classes.txt")
    assert "\n" not in str(info.value)


def test_folder_dataset_other_errors(tmp_path):
    _make_folder(tmp_path / "d")
    with pytest.raises(VocabularyError, match="does not exist"):
        FolderDataset(tmp_path / "d", "nope.txt")
    (tmp_path / "d" / "classes.txt").write_text("x\ny\nz\n")
    with pytest.raises(DatasetError, match="ignore_index 2 is a class id"):
        FolderDataset(tmp_path / "d", "classes.txt", ignore_index=2)
    # an image whose label has another size fails when read, naming both files
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "d" / "images" / "a_tall.png")
    data = FolderDataset(tmp_path / "d", "classes.txt")
    with pytest.raises(DatasetError, match=r"a_tall\.png is 5x5 but its label .* is 18x10"):
        data[0]


def test_segmentation_dataset_from_items(tmp_path):
    written = _make_folder(tmp_path, {"x": (4, 6)})
    pairs = [(tmp_path / "images" / "x.png", tmp_path / "labels" / "x.png")]
    data = SegmentationDataset(pairs, ["a", "b", "c"])
    np.testing.assert_array_equal(data[0]["label"], written["x"][1])


def _prepare_fake(root: Path, name: str, stems: list[str]) -> None:
    """The layout `ovss prepare` writes, with random content."""
    spec = get_benchmark(name)
    image_dir, label_dir = (root / d for d in spec.split_dirs("val"))
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for stem in stems:
        image = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
        Image.fromarray(image).save(image_dir / f"{stem}{spec.image_ext}")
        label = rng.integers(0, spec.num_classes, (8, 9)).astype(spec.label_dtype)
        label[0, 0] = spec.ignore_index
        if spec.label_ext == ".tif":
            Image.fromarray(label).save(label_dir / f"{stem}.tif")
        else:
            write_label_png(label_dir / f"{stem}.png", label)


def test_benchmark_dataset_reads_prepared_layout(tmp_path):
    _prepare_fake(tmp_path, "ade847", ["ADE_val_2", "ADE_val_1"])
    with pytest.warns(UserWarning, match="has 2 image/label pairs, the catalog expects 2000"):
        data = BenchmarkDataset("A-847", tmp_path, variant="san")
    assert data.spec.name == "ade847" and data.num_classes == 847 and data.ignore_index == 65535
    assert data.class_names == get_benchmark("ade847").class_names("san")
    assert [item["name"] for item in data] == ["ADE_val_1", "ADE_val_2"]
    label = data[0]["label"]
    assert label.dtype == np.int64 and label[0, 0] == 65535 and label[1:].max() < 847
    with pytest.raises(DatasetError, match="catalog expects 2000"):
        BenchmarkDataset("ade847", tmp_path, strict=True)


def test_benchmark_dataset_png(tmp_path):
    _prepare_fake(tmp_path, "voc20", ["2007_000033"])
    with pytest.warns(UserWarning):
        data = BenchmarkDataset("voc20", tmp_path)
    item = data[0]
    assert item["label"][0, 0] == 255 and item["label"][1:].max() < 20 and item["image"].shape == (8, 9, 3)
    assert data.class_names == get_benchmark("voc20").class_names("plain")


def test_benchmark_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"not prepared .* run: ovss prepare pc459 --raw"):
        BenchmarkDataset("pc459", tmp_path)
    with pytest.raises(DatasetError, match="unknown benchmark"):
        BenchmarkDataset("ade999", tmp_path)
    _prepare_fake(tmp_path, "ade150", ["a", "b"])
    (tmp_path / "ade150" / "labels" / "val" / "b.png").unlink()
    match = r"1 images without a label map \(b\).*re-run `ovss prepare ade150"
    with pytest.raises(DatasetError, match=match):
        BenchmarkDataset("ade150", tmp_path)


def test_a_folder_dataset_takes_inline_class_names_in_order(tmp_path):
    """ovss eval --folder D --classes "a; b" said "class file a; b does not exist; pass ... (or class
    names separated by ";")", which is what was passed."""
    from PIL import Image

    from ovss.data.datasets import FolderDataset

    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "x.png")
    Image.new("L", (4, 4)).save(tmp_path / "labels" / "x.png")
    (tmp_path / "classes.txt").write_text("sky\ngrass, lawn\n")
    inline = FolderDataset(tmp_path, "sky; grass, lawn")
    from_file = FolderDataset(tmp_path, tmp_path / "classes.txt")
    assert inline.class_names == from_file.class_names == ["sky", "grass, lawn"]
